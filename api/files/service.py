"""Uploads for batches: bounded in size and lines, UTF-8, stored in the result store (local or S3)
before the record that makes them visible is written, so a failed upload leaves nothing behind."""

from __future__ import annotations

import asyncio

from api.files.schemas import FileDeleted, FileList, FileObject
from api.pagination import cursor_page
from bitinglip.batches.files import FileStore, new_file_id
from bitinglip.batches.format import count_lines
from bitinglip.config import Settings
from bitinglip.db.tables import FileRecord
from bitinglip.errors import InvalidRequest, NotFound
from bitinglip.idempotency import Claim, IdempotencyStore, digest
from bitinglip.results import ResultStore

PURPOSES = ("batch",)
RESULT_PREFIXES = ("images/", "jobs/")  # what /api/v1/files serves; uploads and batch outputs go by file id
ROUTE = "POST /v1/files"


class FileService:
    def __init__(
        self, settings: Settings, files: FileStore, results: ResultStore, idempotency: IdempotencyStore
    ) -> None:
        self.settings = settings
        self.files = files
        self.results = results
        self.idempotency = idempotency

    async def upload(
        self, data: bytes, filename: str, purpose: str, owner: str, key: str | None = None
    ) -> tuple[FileObject, bool]:
        """(the file, whether it is a replay): with an idempotency `key`, the same bytes and purpose
        return the file the first upload made."""
        claim = None
        if key is not None:
            claim = self.idempotency.claim(owner, key, ROUTE, digest(ROUTE, {"purpose": purpose}, data))

        async def replay(file_id: str) -> FileObject:
            return await self.get(file_id, owner)

        return await self.idempotency.once(claim, lambda c: self._upload(data, filename, purpose, owner, c), replay)

    async def _upload(self, data: bytes, filename: str, purpose: str, owner: str, claim: Claim | None) -> FileObject:
        if purpose not in PURPOSES:
            raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
        if not data.strip():
            raise InvalidRequest("the file is empty", param="file")
        if len(data) > self.settings.max_file_bytes:
            raise InvalidRequest(f"the file is larger than {self.settings.max_file_bytes} bytes", param="file")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"the file is not UTF-8 text (byte {exc.start})", param="file") from exc
        lines = count_lines(data)
        if lines > self.settings.max_batch_lines:
            raise InvalidRequest(
                f"the file has {lines} lines; a batch takes at most {self.settings.max_batch_lines}", param="file"
            )
        file_id = new_file_id()
        key = await asyncio.to_thread(self.results.put, f"files/{file_id}.jsonl", data)
        try:
            record = await asyncio.to_thread(
                lambda: self.files.create(
                    file_id=file_id,
                    owner=owner,
                    purpose=purpose,
                    filename=(filename or "upload.jsonl")[:255],
                    size=len(data),
                    key=key,
                    line_count=lines,
                    within=None if claim is None else claim.record,
                )
            )
        except Exception:  # no record (another upload with the idempotency key won): nothing left behind
            await asyncio.to_thread(self.results.delete, key)
            raise
        return FileObject.from_record(record)

    async def record(self, file_id: str, owner: str | None) -> FileRecord:
        return await asyncio.to_thread(self.files.get, file_id, owner)

    async def get(self, file_id: str, owner: str | None) -> FileObject:
        return FileObject.from_record(await self.record(file_id, owner))

    async def content(self, file_id: str, owner: str | None) -> bytes:
        return await self.read(await self.record(file_id, owner))

    async def read(self, record: FileRecord) -> bytes:
        return await asyncio.to_thread(self.results.get, record.key)

    async def list(self, owner: str | None, purpose: str | None, limit: int, after: str | None) -> FileList:
        records = await asyncio.to_thread(self.files.page, owner, purpose, limit + 1, after)
        return FileList(**cursor_page([FileObject.from_record(r) for r in records], limit))

    async def result(self, path: str, scope: str | None) -> bytes:
        """Results are filed under their owner (images/OWNER/..., jobs/OWNER/...): a user gets only
        their own, anything else is reported missing."""
        prefixes = RESULT_PREFIXES if scope is None else tuple(f"{p}{scope}/" for p in RESULT_PREFIXES)
        if not path.startswith(prefixes):
            raise NotFound(f"result {path!r} not found", param="path")
        try:
            return await asyncio.to_thread(self.results.get, path)
        except (IsADirectoryError, NotADirectoryError) as exc:  # a folder (or a path through a file) on local disk
            raise NotFound(f"result {path!r} not found", param="path") from exc

    async def delete(self, file_id: str, owner: str | None) -> FileDeleted:
        """The stored bytes go first, then the record: a failure in between leaves the record, so
        deleting again finishes the job instead of leaving bytes nobody can find."""
        record = await self.record(file_id, owner)
        await asyncio.to_thread(self.results.delete, record.key)
        await asyncio.to_thread(self.files.delete, file_id, owner)
        return FileDeleted(id=record.id)
