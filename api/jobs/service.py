"""Async jobs: accept durably (one INSERT, then 202), let the dispatcher create the Prefect run."""

from __future__ import annotations

import asyncio

from api.jobs.schemas import _PRIORITY_NAMES, JobPageView, JobRequest, JobView, QueueStatus
from api.models.service import ModelService
from bitinglip import metrics
from bitinglip.auth.limits import Limiter, QuotaKind
from bitinglip.auth.principal import Principal
from bitinglip.config import Settings
from bitinglip.db.tables import Job
from bitinglip.engines.types import Priority
from bitinglip.http import REQUEST_ID
from bitinglip.jobs.dispatcher import Dispatcher
from bitinglip.jobs.store import JobStore
from bitinglip.schemas import ImageParams, TextGenerationParams


class JobService:
    def __init__(
        self, settings: Settings, store: JobStore, models: ModelService, dispatcher: Dispatcher, limiter: Limiter
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.store = store
        self.models = models
        self.dispatcher = dispatcher

    def _view(self, job: Job) -> JobView:
        return JobView.from_job(job, self.settings.prefect_ui_url, f"{self.settings.gateway_url}/api/v1/files")

    async def submit(self, request: JobRequest, who: Principal) -> JobView:
        """Quotas are charged at acceptance: a text job its `max_tokens`, an image job its images."""
        params = request.params
        kind: QuotaKind = "images" if isinstance(params, ImageParams) else "tokens"
        await self.limiter.check_quota(who, kind)
        defaults = {
            "text": self.settings.default_text_model,
            "embedding": self.settings.default_embedding_model,
            "image": self.settings.default_image_model,
        }
        if isinstance(params, ImageParams | TextGenerationParams):
            params.check_limits(self.settings)  # refuse at the door, not after queueing
        record = await self.models.resolve(params.model or defaults[request.type], request.type)
        job = await asyncio.to_thread(
            self.store.create,
            type_=request.type,
            model=record.id,
            params=params.model_dump(exclude_none=True, exclude={"model"}, mode="json"),
            priority=int(Priority.for_job(request.priority)),
            owner=who.username,
            request_id=REQUEST_ID.get(),
        )
        if isinstance(params, ImageParams):
            await self.limiter.charge(who, "images", params.n)
        elif isinstance(params, TextGenerationParams):
            await self.limiter.charge(who, "tokens", params.max_tokens or self.settings.default_max_tokens)
        self.dispatcher.poke()
        metrics.JOBS_SUBMITTED.labels(request.type).inc()
        return self._view(job)

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
        return self._view(await asyncio.to_thread(self.store.get, job_id, owner))

    async def list(
        self, owner: str | None, status: str | None, type_: str | None, limit: int, offset: int
    ) -> JobPageView:
        page = await asyncio.to_thread(
            lambda: self.store.page(owner=owner, status=status, type_=type_, limit=limit, offset=offset)
        )
        return JobPageView(items=[self._view(j) for j in page.items], total=page.total, limit=limit, offset=offset)

    async def cancel(self, job_id: str, owner: str | None) -> JobView:
        return self._view(await asyncio.to_thread(self.store.cancel, job_id, owner))

    async def queue_status(self) -> QueueStatus:
        counts = await asyncio.to_thread(self.store.queue_status)
        queued = counts.get("queued", {})
        return QueueStatus(
            by_status={status: sum(by_p.values()) for status, by_p in counts.items()},
            queued_by_priority={name: queued.get(str(int(p)), 0) for p, name in _PRIORITY_NAMES.items()},
            dispatcher_healthy=self.dispatcher.healthy,
        )
