"""File records (OpenAI Files API). Bytes live in the result store; the DB says who owns what.
Whoever deletes a record removes its bytes first, so a failure leaves a record to retry with, never
bytes nobody can find."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.orm import Session

from bitinglip.db.paging import after_cursor
from bitinglip.db.session import Database
from bitinglip.db.tables import FileRecord
from bitinglip.errors import NotFound


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex[:24]}"


class FileStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        *,
        owner: str,
        purpose: str,
        filename: str,
        size: int,
        key: str,
        line_count: int,
        file_id: str,
        within: Callable[[Session, str], object] | None = None,
    ) -> FileRecord:
        """`within(session, file_id)` runs in the record's transaction (its idempotency key)."""
        record = FileRecord(
            id=file_id,
            owner=owner,
            purpose=purpose,
            filename=filename,
            bytes=size,
            key=key,
            line_count=line_count,
            created_at=datetime.now(UTC),
        )
        with self.db.session() as s:
            if within is not None:
                within(s, file_id)
            s.add(record)
        return record

    def get(self, file_id: str, owner: str | None = None) -> FileRecord:
        """Another tenant's file is reported missing, not forbidden: its existence is not theirs to know."""
        with self.db.session() as s:
            record = s.get(FileRecord, file_id)
        if record is None or (owner is not None and record.owner != owner):
            raise NotFound(f"file {file_id!r} not found", param="file_id")
        return record

    def page(self, owner: str | None, purpose: str | None, limit: int, after: str | None) -> list[FileRecord]:
        query = select(FileRecord)
        if owner is not None:
            query = query.where(FileRecord.owner == owner)
        if purpose is not None:
            query = query.where(FileRecord.purpose == purpose)
        if after is not None:
            cursor = self.get(after, owner)
            query = query.where(after_cursor(FileRecord.created_at, FileRecord.id, cursor.created_at, cursor.id))
        with self.db.session() as s:
            return list(s.scalars(query.order_by(FileRecord.created_at.desc(), FileRecord.id).limit(limit)))

    def delete(self, file_id: str, owner: str | None = None) -> FileRecord:
        record = self.get(file_id, owner)
        with self.db.session() as s:
            s.execute(delete(FileRecord).where(FileRecord.id == file_id))
        return record

    # -- retention

    def expired(self, purpose: str, before: datetime, keep: set[str], limit: int = 500) -> list[FileRecord]:
        """Files of `purpose` created before `before`, oldest first, except those in `keep`."""
        query = select(FileRecord).where(FileRecord.purpose == purpose, FileRecord.created_at < before)
        if keep:
            query = query.where(FileRecord.id.not_in(keep))
        with self.db.session() as s:
            return list(s.scalars(query.order_by(FileRecord.created_at).limit(limit)))

    def under(self, key_prefix: str) -> list[FileRecord]:
        """Records whose bytes live under a result-store prefix (a batch's output and error files)."""
        with self.db.session() as s:
            return list(s.scalars(select(FileRecord).where(FileRecord.key.startswith(key_prefix, autoescape=True))))

    def delete_many(self, file_ids: list[str]) -> int:
        if not file_ids:
            return 0
        with self.db.session() as s:
            result = cast("CursorResult[Any]", s.execute(delete(FileRecord).where(FileRecord.id.in_(file_ids))))
            return int(result.rowcount)
