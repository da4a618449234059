from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from bitinglip.db.tables import ModelRecord


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

    @classmethod
    def from_record(cls, r: ModelRecord, loaded_on: list[str]) -> ModelView:
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
        )


class ModelList(BaseModel):
    data: list[ModelView]
