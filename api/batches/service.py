"""Batches: accepted durably as a `batch` job (one INSERT, then the answer), run by the dispatcher as
one `batch-inference` flow run on the gpu pool."""

from __future__ import annotations

import asyncio
import json

from api.batches.schemas import BatchCreateRequest, BatchList, BatchObject
from api.files.service import FileService
from api.pagination import cursor_page
from bitinglip import metrics
from bitinglip.auth.limits import Limiter
from bitinglip.auth.principal import Principal
from bitinglip.db.tables import Job
from bitinglip.errors import InvalidRequest, NotFound
from bitinglip.http import REQUEST_ID
from bitinglip.jobs.dispatcher import Dispatcher
from bitinglip.jobs.store import JobStore
from bitinglip.types import Priority


def models_named(data: bytes) -> list[str]:
    """The models a batch file asks for (for listing and run tags; the flow validates every line)."""
    names: set[str] = set()
    for line in data.splitlines():
        try:
            body = json.loads(line).get("body") or {}
        except (ValueError, AttributeError):
            continue
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            names.add(body["model"])
    return sorted(names)


class BatchService:
    def __init__(self, jobs: JobStore, files: FileService, dispatcher: Dispatcher, limiter: Limiter) -> None:
        self.limiter = limiter
        self.jobs = jobs
        self.files = files
        self.dispatcher = dispatcher

    async def create(self, request: BatchCreateRequest, who: Principal) -> BatchObject:
        """A caller whose token quota is used up cannot start a batch (lines are not charged one by one)."""
        await self.limiter.check_quota(who, "tokens")
        owner = who.username
        record = await self.files.record(request.input_file_id, who.scope)
        if record.purpose != "batch":
            raise InvalidRequest(
                f"file {record.id!r} has purpose {record.purpose!r}, not 'batch'", param="input_file_id"
            )
        models = models_named(await self.files.read(record))
        job = await asyncio.to_thread(
            lambda: self.jobs.create(
                type_="batch",
                model=models[0] if len(models) == 1 else ("mixed" if models else "none"),
                params={
                    "input_file_id": record.id,
                    "input_url": self.files.results.full_url(record.key),
                    "endpoint": request.endpoint,
                    "completion_window": request.completion_window,
                    "metadata": request.metadata,
                    "key_id": who.key_id,  # the flow run checks each line's model against the caller's grants
                },
                priority=int(Priority.BATCH),
                owner=owner,
                request_id=REQUEST_ID.get(),
            )
        )
        self.dispatcher.poke()
        metrics.JOBS_SUBMITTED.labels("batch").inc()
        return BatchObject.from_job(job)

    async def _job(self, batch_id: str, owner: str | None) -> Job:
        job = await asyncio.to_thread(self.jobs.get, batch_id, owner)
        if job.type != "batch":
            raise NotFound(f"batch {batch_id!r} not found", param="batch_id")
        return job

    async def get(self, batch_id: str, owner: str | None) -> BatchObject:
        return BatchObject.from_job(await self._job(batch_id, owner))

    async def list(self, owner: str | None, limit: int, after: str | None) -> BatchList:
        page = await asyncio.to_thread(
            lambda: self.jobs.page(owner=owner, status=None, type_="batch", limit=limit + 1, after=after)
        )
        return BatchList(**cursor_page([BatchObject.from_job(j) for j in page.items], limit))

    async def cancel(self, batch_id: str, owner: str | None) -> BatchObject:
        """Queued: cancelled at once. Running: `cancelling` until the chunk in flight finishes; the
        outputs so far are kept."""
        await self._job(batch_id, owner)
        return BatchObject.from_job(await asyncio.to_thread(self.jobs.cancel, batch_id, owner))
