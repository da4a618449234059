"""Tables shared by the gateway, the model workers and the flows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class Job(Base):
    """An async job. Written before anything else happens, so it survives any later failure."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    owner: Mapped[str] = mapped_column(String(100), default="anonymous")
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    prefect_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    engine_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # long jobs (batches)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)  # flow-run jobs beat while running
    # {"url", "events"}: where its state changes are POSTed (sealed like params; bitinglip/webhooks)
    webhook: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (
        Index("ix_jobs_dispatch", "status", "dispatched_at", "priority", "created_at"),
        Index("ix_jobs_owner_created", "owner", "created_at"),
    )


class FileRecord(Base):
    """An uploaded or produced file (OpenAI Files API); its bytes live in the result store."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(Text)  # result-store key
    line_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_files_owner_created", "owner", "created_at"),)


class User(Base):
    __tablename__ = "users"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: API keys only
    role: Mapped[str] = mapped_column(String(16), default="user")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """Stored as the SHA-256 of its secret part: the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # the public part of the key
    username: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(100))
    secret_hash: Mapped[str] = mapped_column(String(64))
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    images_per_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Worker(Base):
    """A model worker's last heartbeat: where it is, what it holds, how busy it is."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    url: Mapped[str] = mapped_column(String(300))
    device: Mapped[str] = mapped_column(String(50))
    models: Mapped[list[Any]] = mapped_column(JSON, default=list)
    queue_depth: Mapped[int] = mapped_column(Integer, default=0)
    memory_budget_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None: no byte limit
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelRecord(Base):
    """The registry entry of an installed (or installing) model."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(250), primary_key=True)  # NAME@REVISION
    name: Mapped[str] = mapped_column(String(200))
    revision: Mapped[str] = mapped_column(String(100))
    task: Mapped[str] = mapped_column(String(16))
    # transformers | llama.cpp; the server default covers rows from before it and an older release's inserts
    backend: Mapped[str] = mapped_column(String(16), default="transformers", server_default="transformers")
    source: Mapped[str] = mapped_column(Text)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    files: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="downloading")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ModelAccessRule(Base):
    """Who may use a model (every revision of it): no row, or `restricted` false, means every user;
    admins always may (bitinglip/models/access.py)."""

    __tablename__ = "model_access"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)  # NAME, no revision
    restricted: Mapped[bool] = mapped_column(Boolean, default=False)
    users: Mapped[list[Any]] = mapped_column(JSON, default=list)
    keys: Mapped[list[Any]] = mapped_column(JSON, default=list)  # API key ids (the public part)
    updated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class UserLimits(Base):
    """Limits an admin set for one user, shared by every key and login token of theirs (a key may
    only narrow them). A null field falls back to the settings' default for everyone."""

    __tablename__ = "user_limits"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    images_per_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class UsageCounter(Base):
    """One subject's use of one daily quota: `used` is settled, `reserved` is held by work in flight.
    A reservation is one conditional UPDATE, so concurrent requests and replicas cannot overshoot
    (bitinglip/auth/usage.py)."""

    __tablename__ = "usage_ledger"

    subject: Mapped[str] = mapped_column(String(80), primary_key=True)  # user:NAME or key:ID
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD, UTC
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # tokens | images
    used: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageHold(Base):
    """A reservation not settled yet: what it holds, on which counters. Settling deletes it, so a
    reservation is settled once however many processes try."""

    __tablename__ = "usage_holds"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # req:..., job:ID, batch:JOB:CHUNK
    day: Mapped[str] = mapped_column(String(10), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    caps: Mapped[list[Any]] = mapped_column(JSON)  # [[subject, limit or null], ...], in lock order
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookSecret(Base):
    """A user's webhook signing secret (Standard Webhooks `whsec_...`), sealed when encryption keys are
    configured: the user reads it back to verify deliveries, so it is kept, not hashed."""

    __tablename__ = "webhook_secrets"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"value": "whsec_..."} or its sealed form
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One attempt to deliver one event of a job (or batch) to its webhook: inserted, never updated, so
    attempts of concurrent deliveries never overwrite each other."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    event: Mapped[str] = mapped_column(String(16))
    message_id: Mapped[str] = mapped_column(String(40))  # `webhook-id`: the same on every retry of an event
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(200), nullable=True)


class IdempotencyKey(Base):
    """An `Idempotency-Key` a user sent with a create request: what the request was (route + body hash)
    and what it made. Written in the creating transaction, so one key makes at most one object."""

    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    route: Mapped[str] = mapped_column(String(64))
    request_hash: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class CredentialEpoch(Base):
    """One row, raised in the same transaction as every change that can withdraw or narrow a credential
    (a key revoked, a user disabled or demoted, limits changed): gateway replicas that keep verified
    credentials in memory (bitinglip/auth/credential_cache.py) drop them when they see it move."""

    __tablename__ = "credential_epoch"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
