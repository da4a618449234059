from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from bitinglip.db.tables import ModelRecord
from bitinglip.models.catalog import Task


class ModelView(BaseModel):
    id: str
    name: str
    revision: str
    task: str
    source: str
    status: str
    error: str | None
    size_bytes: int
    pinned: bool
    loaded_on: list[str]
    created_at: datetime
    last_used_at: datetime | None
    files: dict[str, Any] | None = None

    @classmethod
    def from_record(cls, r: ModelRecord, loaded_on: list[str], with_files: bool = False) -> ModelView:
        return cls(
            id=r.id,
            name=r.name,
            revision=r.revision,
            task=r.task,
            source=r.source,
            status=r.status,
            error=r.error,
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
