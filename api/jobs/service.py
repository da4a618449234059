"""Async jobs: accept durably (the row and its quota hold committed, in a group with concurrent submissions,
then 202); model workers pull them, the dispatcher starts flow runs for batches and downloads."""

from __future__ import annotations

import asyncio
from functools import cached_property
from typing import Literal

from pydantic import BaseModel

from api.jobs.schemas import _PRIORITY_NAMES, JobPageView, JobRequest, JobView, QueueStatus
from api.models.service import ModelService
from api.webhooks.schemas import WebhookRequest
from api.workers.poke import JobPoker
from bitinglip import metrics, retention, signed_urls
from bitinglip.auth import usage
from bitinglip.auth.limits import Limiter
from bitinglip.auth.principal import Principal
from bitinglip.batches.files import FileStore
from bitinglip.config import Settings
from bitinglip.db.tables import Job
from bitinglip.http import REQUEST_ID
from bitinglip.idempotency import Claim, IdempotencyStore, digest
from bitinglip.jobs.dispatcher import Dispatcher
from bitinglip.jobs.intake import JobIntake
from bitinglip.jobs.store import JobStore, NewJob
from bitinglip.results import ResultStore
from bitinglip.types import Priority
from bitinglip.webhooks import urls
from bitinglip.webhooks.store import Attempt, WebhookStore

ROUTE = "POST /api/v1/tasks"


class JobDeleted(BaseModel):
    """What `DELETE /api/v1/tasks/{id}?purge=true` removed: the job and everything stored for it."""

    id: str
    object: Literal["job"] = "job"
    deleted: bool = True
    objects: int  # stored outputs removed (images, batch output and error files)
    files: int  # file records removed with it (a batch's output and error files)


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        models: ModelService,
        dispatcher: Dispatcher,
        poker: JobPoker,
        limiter: Limiter,
        webhooks: WebhookStore,
        idempotency: IdempotencyStore,
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.webhooks = webhooks
        self.idempotency = idempotency
        self.store = store
        self.intake = JobIntake(store)  # accepted jobs are written in groups, one commit each
        self.models = models
        self.dispatcher = dispatcher  # flow-run jobs (batches, downloads)
        self.poker = poker  # model-worker jobs: the workers pull them

    def _view(self, job: Job, attempts: list[Attempt] | None = None) -> JobView:
        return JobView.from_job(job, self.settings.prefect_ui_url, self._link, attempts)

    async def _views(self, jobs: list[Job]) -> list[JobView]:
        """With their webhook attempts, read in one query for all of them."""
        wanted = [job.id for job in jobs if job.webhook]
        attempts = await asyncio.to_thread(self.webhooks.attempts, wanted) if wanted else {}
        return [self._view(job, attempts.get(job.id)) for job in jobs]

    async def accept_webhook(self, request: WebhookRequest) -> dict[str, object] | None:
        """The request's webhook, checked (SSRF rules, DNS) before anything is accepted."""
        if (config := request.webhook_config()) is None:
            return None
        url, events = config
        return await urls.accept(url, events, self.settings.webhook_allow_hosts)

    def _link(self, path: str) -> tuple[str, int]:
        return signed_urls.result_link(self.settings, path, self.settings.result_link_ttl_s)

    async def submit(self, request: JobRequest, who: Principal, key: str | None = None) -> tuple[JobView, bool]:
        """(the job, whether it is a replay). With an idempotency `key`, a repeat of the same request
        returns the job the first one made (`replay`), and another request with the key is a 409."""
        claim = None
        if key is not None:
            claim = self.idempotency.claim(who.username, key, ROUTE, digest(ROUTE, request.model_dump(mode="json")))
        return await self.idempotency.once(claim, lambda c: self._submit(request, who, c), self._replay)

    async def _replay(self, job_id: str) -> JobView:
        return (await self._views([await asyncio.to_thread(self.store.get, job_id)]))[0]

    async def _submit(self, request: JobRequest, who: Principal, claim: Claim | None) -> JobView:
        """The job's most possible cost is reserved from the caller's quota at acceptance (429 when it
        does not fit); the worker settles the real count when the job finishes."""
        webhook = await self.accept_webhook(request)
        params = request.params
        params.check_limits(self.settings)  # the sync routes' own checks, at the door, not after queueing
        # a model the caller may not use is unknown to them: refused here, at acceptance
        record = await self.models.resolve(params.model or self.settings.default_model(request.type), request.type, who)
        kind, amount = usage.estimate(params, self.settings.default_max_tokens)
        new = NewJob(
            type_=request.type,
            model=record.id,
            params=params.model_dump(exclude_none=True, exclude={"model"}, mode="json"),
            priority=int(Priority.for_job(request.priority)),
            owner=who.username,
            request_id=REQUEST_ID.get(),
            # the hold, named after the job (its worker settles it), and the idempotency key commit with the
            # job's row or not at all
            hold=usage.HoldRequest(kind, amount, who.quota_caps(kind)),
            within=None if claim is None else claim.record,
            webhook=webhook,
        )
        # a job with an idempotency key gets a transaction of its own: losing a race for the key rolls
        # back that transaction whole, which must not take a group of other submissions with it
        job = await (asyncio.to_thread(self.store.add, new) if claim else self.intake.create(new))
        self.poker.poke(record.id)
        metrics.JOBS_SUBMITTED.labels(request.type).inc()
        return self._view(job)

    def requeued(self) -> None:
        """The reaper took jobs back from a dead runner: flow-run ones need new runs, the others a worker."""
        self.dispatcher.poke()
        self.poker.poke_all()

    async def accepted(self, job: Job, wait_s: float = 2.0) -> JobView:
        """Hand a freshly accepted job to the dispatcher and, briefly, wait for its Prefect run id so
        the answer can carry the link; a slow or absent Prefect only means the id comes later."""
        self.dispatcher.poke()
        deadline = asyncio.get_running_loop().time() + wait_s
        while job.prefect_run_id is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            job = await asyncio.to_thread(self.store.get, job.id)
        return self._view(job)

    async def get(self, job_id: str, owner: str | None) -> JobView:
        return (await self._views([await asyncio.to_thread(self.store.get, job_id, owner)]))[0]

    async def list(
        self, owner: str | None, status: str | None, type_: str | None, limit: int, offset: int
    ) -> JobPageView:
        page = await asyncio.to_thread(
            lambda: self.store.page(owner=owner, status=status, type_=type_, limit=limit, offset=offset)
        )
        return JobPageView(items=await self._views(page.items), total=page.total, limit=limit, offset=offset)

    async def cancel(self, job_id: str, owner: str | None) -> JobView:
        job = await asyncio.to_thread(self.store.cancel, job_id, owner)
        await self._settle_if_final(job)
        return (await self._views([job]))[0]

    async def _settle_if_final(self, job: Job) -> None:
        """A job that ended without running (cancelled while queued) gives its reservation back; one
        the worker finished was settled there already (settling twice does nothing)."""
        if job.status in ("completed", "failed", "cancelled"):
            actual = usage.job_usage(job.type, job.result)
            await asyncio.to_thread(self.store.ledger.settle, usage.job_hold_id(job.id), actual)

    # -- deletion by the owner

    @cached_property
    def _outputs(self) -> tuple[ResultStore, FileStore]:
        return ResultStore(self.settings), FileStore(self.store.db)

    async def delete(self, job_id: str, owner: str | None) -> JobDeleted:
        """The job's row and stored outputs go now, not at retention; a queued job is cancelled on the
        way, a running one is a 409 (cancel it first)."""
        job = await asyncio.to_thread(self.store.settled, job_id, owner)
        results, files = self._outputs
        removed = await asyncio.to_thread(retention.delete_job, job, self.store, results, files)
        await self._settle_if_final(job)  # a queued job deleted on the way gives its reservation back
        return JobDeleted(id=job.id, objects=removed.objects, files=removed.files)

    async def queue_status(self) -> QueueStatus:
        counts = await asyncio.to_thread(self.store.queue_status)
        queued = counts.get("queued", {})
        return QueueStatus(
            by_status={status: sum(by_p.values()) for status, by_p in counts.items()},
            queued_by_priority={name: queued.get(str(int(p)), 0) for p, name in _PRIORITY_NAMES.items()},
            dispatcher_healthy=self.dispatcher.healthy,
        )
