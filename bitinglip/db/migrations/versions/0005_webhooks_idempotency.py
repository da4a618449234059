"""Webhooks and idempotency keys (#18): a job's webhook, users' signing secrets, delivery attempts, and
the `Idempotency-Key`s of create requests. Rows from before have no webhook.

Revision ID: 0005_webhooks_idempotency
Revises: 0004_worker_memory
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_webhooks_idempotency"
down_revision: str | None = "0004_worker_memory"
branch_labels: str | None = None
depends_on: str | None = None

UTC_DATETIME = sa.DateTime(timezone=True)  # bitinglip.db.tables.UTCDateTime stores this


def upgrade() -> None:
    """A pre-Alembic home made by create_all of today's models is stamped 0002 with all of this in it."""
    inspector = sa.inspect(op.get_bind())
    if "webhook" not in {c["name"] for c in inspector.get_columns("jobs")}:
        with op.batch_alter_table("jobs") as batch:
            batch.add_column(sa.Column("webhook", sa.JSON(), nullable=True))
    tables = set(inspector.get_table_names())
    if "webhook_secrets" not in tables:
        op.create_table(
            "webhook_secrets",
            sa.Column("username", sa.String(64), primary_key=True),
            sa.Column("secret", sa.JSON(), nullable=False),
            sa.Column("created_at", UTC_DATETIME, nullable=False),
        )
    if "webhook_deliveries" not in tables:
        op.create_table(
            "webhook_deliveries",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("job_id", sa.String(36), nullable=False),
            sa.Column("event", sa.String(16), nullable=False),
            sa.Column("message_id", sa.String(40), nullable=False),
            sa.Column("attempt", sa.Integer(), nullable=False),
            sa.Column("at", UTC_DATETIME, nullable=False),
            sa.Column("status_code", sa.Integer(), nullable=True),
            sa.Column("error", sa.String(200), nullable=True),
        )
        op.create_index("ix_webhook_deliveries_job_id", "webhook_deliveries", ["job_id"])
    if "idempotency_keys" not in tables:
        op.create_table(
            "idempotency_keys",
            sa.Column("owner", sa.String(64), primary_key=True),
            sa.Column("key", sa.String(255), primary_key=True),
            sa.Column("route", sa.String(64), nullable=False),
            sa.Column("request_hash", sa.String(64), nullable=False),
            sa.Column("object_id", sa.String(64), nullable=False),
            sa.Column("created_at", UTC_DATETIME, nullable=False),
            sa.Column("expires_at", UTC_DATETIME, nullable=False),
        )
        op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    for table in ("idempotency_keys", "webhook_deliveries", "webhook_secrets"):
        op.drop_table(table)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("webhook")
