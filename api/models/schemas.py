from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from bitinglip.db.tables import ModelRecord
from bitinglip.keep_alive import KeepAlive
from bitinglip.models.access import AccessRule
from bitinglip.models.backends import RequestedBackend
from bitinglip.models.catalog import Task
from bitinglip.schemas import KEEP_ALIVE_HELP


class ModelView(BaseModel):
    id: str
    name: str
    revision: str
    task: str
    backend: str = Field(description="What serves it: transformers or llama.cpp (chosen at install).")
    source: str | None = Field(description="Where it was installed from; admins only (paths, buckets).")
    status: str
    error: str | None
    size_bytes: int
    pinned: bool
    loaded_on: list[str]
    created_at: datetime
    last_used_at: datetime | None
    files: dict[str, Any] | None = None

    @classmethod
    def from_record(
        cls, r: ModelRecord, loaded_on: list[str], with_files: bool = False, admin: bool = False
    ) -> ModelView:
        """Only admins see the source and a failed install's error (which quotes the source)."""
        return cls(
            id=r.id,
            name=r.name,
            revision=r.revision,
            task=r.task,
            backend=r.backend,
            source=r.source if admin else None,
            status=r.status,
            error=r.error if admin else None,
            size_bytes=r.size_bytes,
            pinned=r.pinned,
            loaded_on=loaded_on,
            created_at=r.created_at,
            last_used_at=r.last_used_at,
            files=r.files if with_files else None,
        )


class ModelList(BaseModel):
    data: list[ModelView]


class DownloadRequest(BaseModel):
    source: str | None = Field(
        default=None,
        description="hf://ORG/NAME[@REV], s3://BUCKET/PREFIX, file:///PATH or pkg://PACKAGE/PATH; "
        "empty for a catalog model.",
    )
    name: str | None = Field(
        default=None, description="Store name; default: the catalog name or the source's last part."
    )
    revision: str | None = None
    task: Task | None = Field(default=None, description="text, image or embedding; default: from the catalog.")
    backend: RequestedBackend = Field(
        default="auto",
        description="What serves the model: llama.cpp runs a GGUF as it is; transformers converts a GGUF to "
        "safetensors. auto: the catalog entry's choice, else llama.cpp when the source holds a GGUF of a text "
        "model and llama-cpp-python is installed, else transformers.",
    )


Principals = Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=64)]], Field(max_length=1000)]


class ModelAccessRequest(BaseModel):
    restricted: bool = Field(description="false: every user may use the model (the default); true: only those listed.")
    users: Principals = Field(default_factory=list, description="Usernames allowed while restricted.")
    keys: Principals = Field(
        default_factory=list, description="API key ids (the public part, bl-<id>-...) allowed while restricted."
    )


class ModelAccessView(BaseModel):
    model: str
    restricted: bool
    users: list[str]
    keys: list[str]
    updated_by: str | None
    updated_at: datetime | None

    @classmethod
    def from_rule(cls, rule: AccessRule) -> ModelAccessView:
        return cls(
            model=rule.model,
            restricted=rule.restricted,
            users=sorted(rule.users),
            keys=sorted(rule.keys),
            updated_by=rule.updated_by,
            updated_at=rule.updated_at,
        )


class LoadRequest(BaseModel):
    keep_alive: KeepAlive | None = Field(default=None, description=KEEP_ALIVE_HELP)


class WorkerOutcome(BaseModel):
    worker: str
    status: Literal["loaded", "unloaded", "not_loaded"]
    model: dict[str, Any] | None = Field(
        default=None, description="After a load: the model as the worker reports it (bytes, keep-alive, ...)."
    )


class ModelMemoryView(BaseModel):
    """What a load or unload did, worker by worker."""

    model: str
    workers: list[WorkerOutcome]
