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
from bitinglip.idempotency import Claim, IdempotencyStore, digest
from bitinglip.jobs.dispatcher import Dispatcher
from bitinglip.jobs.store import JobStore
from bitinglip.types import Priority
from bitinglip.webhooks import urls
from bitinglip.webhooks.store import WebhookStore

ROUTE = "POST /v1/batches"


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
    def __init__(
        self,
        jobs: JobStore,
        files: FileService,
        dispatcher: Dispatcher,
        limiter: Limiter,
        webhooks: WebhookStore,
        idempotency: IdempotencyStore,
    ) -> None:
        self.limiter = limiter
        self.jobs = jobs
        self.files = files
        self.dispatcher = dispatcher
        self.webhooks = webhooks
        self.idempotency = idempotency

    async def create(
        self, request: BatchCreateRequest, who: Principal, key: str | None = None
    ) -> tuple[BatchObject, bool]:
        """(the batch, whether it is a replay of an earlier request with the same idempotency `key`)."""
        claim = None
        if key is not None:
            claim = self.idempotency.claim(who.username, key, ROUTE, digest(ROUTE, request.model_dump(mode="json")))
        return await self.idempotency.once(claim, lambda c: self._create(request, who, c), self._replay)

    async def _replay(self, batch_id: str) -> BatchObject:
        return await self._object(await asyncio.to_thread(self.jobs.get, batch_id))

    async def _object(self, job: Job) -> BatchObject:
        attempts = await asyncio.to_thread(self.webhooks.attempts, [job.id]) if job.webhook else {}
        return BatchObject.from_job(job, attempts.get(job.id))

    async def _create(self, request: BatchCreateRequest, who: Principal, claim: Claim | None) -> BatchObject:
        """A caller whose token quota is used up cannot start a batch (lines are not charged one by one)."""
        await self.limiter.check_quota(who, "tokens")
        webhook = None
        if (config := request.webhook_config()) is not None:
            allow = self.files.settings.webhook_allow_hosts
            webhook = await urls.accept(*config, allow)
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
                webhook=webhook,
                within=None if claim is None else claim.record,
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
        return await self._object(await self._job(batch_id, owner))

    async def list(self, owner: str | None, limit: int, after: str | None) -> BatchList:
        page = await asyncio.to_thread(
            lambda: self.jobs.page(owner=owner, status=None, type_="batch", limit=limit + 1, after=after)
        )
        wanted = [job.id for job in page.items if job.webhook]
        attempts = await asyncio.to_thread(self.webhooks.attempts, wanted) if wanted else {}
        return BatchList(**cursor_page([BatchObject.from_job(j, attempts.get(j.id)) for j in page.items], limit))

    async def cancel(self, batch_id: str, owner: str | None) -> BatchObject:
        """Queued: cancelled at once. Running: `cancelling` until the chunk in flight finishes; the
        outputs so far are kept."""
        await self._job(batch_id, owner)
        return await self._object(await asyncio.to_thread(self.jobs.cancel, batch_id, owner))
