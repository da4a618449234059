"""Runs one claimed async job inside a model worker, through the same batcher as sync requests.

Called by the Prefect task in `flows/inference.py` for each job the pump (bitinglip/worker/pump.py)
claimed; records every outcome, coalescing the writes of jobs that finish together. Transient failures
raise so the task's declared retries run the job again under the same claim."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from bitinglip import metrics
from bitinglip.auth import usage
from bitinglip.config import Settings
from bitinglip.db.tables import Job
from bitinglip.engines.pool import ModelPool
from bitinglip.errors import BitingLipError, Overloaded, error_record
from bitinglip.jobs.store import JobStore
from bitinglip.results import ResultStore
from bitinglip.schemas import EmbeddingParams, ImageParams, TextGenerationParams
from bitinglip.signed_urls import result_link
from bitinglip.types import Priority
from bitinglip.worker.tokens import JobTokens

log = logging.getLogger(__name__)


Computed = tuple[str, dict[str, Any], float]  # status, result, engine seconds


class JobRefused(Exception):
    """The job cannot run here at all (too many attempts, a kind this worker does not run)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error


class TransientJobError(RuntimeError):
    """The job hit a transient error (an overloaded queue, a failed load): its task run retries it."""


class FinishWriter:
    """Coalesces job outcomes that land together (one batch finishes many jobs) into one
    transaction: on SQLite every commit contends for the single write lock."""

    def __init__(self, store: JobStore, worker_id: str, ledger: usage.UsageLedger | None = None) -> None:
        self.store = store
        self.worker_id = worker_id
        self.ledger = ledger
        self._pending: list[tuple[str, dict[str, Any], int, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def finish(self, job_id: str, used: int = 0, **fields: Any) -> None:
        """`used`: what the job used of its owner's quota (reserved at acceptance), settled with it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((job_id, fields, used, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._pending:
            await asyncio.sleep(0.005)  # let the rest of the batch's outcomes arrive
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(
                    self.store.finish_many, [(job_id, f) for job_id, f, _, _ in batch], self.worker_id
                )
            except Exception as exc:
                for *_, future in batch:
                    future.set_exception(exc)
            else:
                await self._settle([(job_id, used) for job_id, _, used, _ in batch])
                for *_, future in batch:
                    future.set_result(None)

    async def _settle(self, used: list[tuple[str, int]]) -> None:
        """A ledger hiccup must not undo finished jobs: it is logged (the holds stay reserved)."""
        if self.ledger is None:
            return
        holds = [(usage.job_hold_id(j), n) for j, n in used]
        try:
            await asyncio.to_thread(self.ledger.settle_many, holds)
        except Exception as exc:  # e.g. a deadlock victim on PostgreSQL: each on its own, once more
            log.warning("settling %d quota reservations together failed (%r); one by one", len(used), exc)
            for hold_id, n in holds:
                try:
                    await asyncio.to_thread(self.ledger.settle, hold_id, n)
                except Exception:
                    log.exception("settling the quota reservation %s failed", hold_id)


class JobRunner:
    def __init__(self, settings: Settings, pool: ModelPool, store: JobStore, worker_id: str) -> None:
        self.settings = settings
        self.pool = pool
        self.store = store
        self.worker_id = worker_id
        self.writer = FinishWriter(store, worker_id, usage.UsageLedger(store.db))
        self.results = ResultStore(settings)
        self.tokens = JobTokens()  # running text jobs' text so far, for watchers (closed by the pump)

    def start(self, job: Job, cancelled: threading.Event) -> asyncio.Task[Computed]:
        """The job's work, started now: jobs claimed together reach the batcher together and share
        one prefill, instead of arriving one by one as their task runs get going."""
        return asyncio.create_task(self._compute(job, cancelled))

    async def _compute(self, job: Job, cancelled: threading.Event) -> Computed:
        """Runs in its own asyncio task, so the bound ids tag only this job's log lines."""
        structlog.contextvars.bind_contextvars(request_id=job.request_id, job_id=job.id)
        log.info("job %s (request %s, %s, %s)", job.id, job.request_id, job.type, job.model)
        if job.attempts > self.settings.job_max_attempts:
            raise JobRefused({"message": "too many attempts", "type": "job_error"})
        handler = {"text": self._text, "embedding": self._embedding, "image": self._image}.get(job.type)
        if handler is None:  # the pump only claims model-worker kinds (bitinglip/jobs/kinds.py)
            raise JobRefused({"message": f"not a {job.type} worker", "type": "job_error"})
        started = time.perf_counter()
        status, result = await handler(job, cancelled)
        return status, result, time.perf_counter() - started

    async def execute(
        self, job: Job, cancelled: threading.Event, run_id: str, final_try: bool, work: asyncio.Task[Computed] | None
    ) -> str:
        """Waits for the job's work (started at claim, or now on a retry) and records its outcome with
        the task run that ran it; returns its status. A transient failure raises TransientJobError
        unless this is the last try, which fails the job."""
        try:
            status, result, engine_seconds = await (work if work is not None else self.start(job, cancelled))
        except JobRefused as exc:
            return await self._finish(job, "failed", run_id, error=exc.error)
        except BitingLipError as exc:
            if isinstance(exc, Overloaded) and not final_try:
                raise TransientJobError(exc.message) from exc
            return await self._finish(job, "failed", run_id, error=exc.body()["error"])
        except Exception as exc:
            log.exception("job %s failed", job.id)
            if not final_try:
                raise TransientJobError("the job hit a transient error; retrying") from exc
            error = {**error_record(exc), "type": "transient_error"}  # the exception's text is in our log only
            return await self._finish(job, "failed", run_id, error=error)
        return await self._finish(job, status, run_id, result=result, engine_seconds=engine_seconds)

    async def stored_images(self, job: Job, status: str) -> list[str]:
        """Paths of the PNGs a completed image job stored; other kinds and outcomes cost no read."""
        if job.type != "image" or status != "completed":
            return []
        stored = await asyncio.to_thread(self.store.get, job.id)
        return [img["path"] for img in (stored.result or {}).get("images", [])]

    def image_url(self, path: str) -> str:
        """A signed, expiring link: the Prefect UI shows the image without the owner's key."""
        return result_link(self.settings, path, self.settings.artifact_link_ttl_s)[0]

    async def _text(self, job: Job, cancelled: threading.Event) -> tuple[str, dict[str, Any]]:
        """Its text goes piece by piece to the job's token log, for whoever watches (worker/tokens.py)."""
        params = TextGenerationParams.model_validate({**job.params, "model": job.model})
        tokens = self.tokens.open(job.id)
        result = await self.pool.generate_text(
            params,
            Priority(job.priority),
            sink=lambda delta: tokens.add(delta.text),
            cancelled=cancelled,
            tenant=job.owner,
            on_restart=tokens.restart,
        )
        status = "cancelled" if result.finish_reason == "cancelled" or cancelled.is_set() else "completed"
        return status, result.to_output().model_dump(mode="json")

    async def _embedding(self, job: Job, cancelled: threading.Event) -> tuple[str, dict[str, Any]]:
        params = EmbeddingParams.model_validate(job.params)
        result = await self.pool.embed(job.model, params.texts(), Priority(job.priority), params.keep_alive)
        return "completed", result.to_output().model_dump(mode="json")

    async def _image(self, job: Job, cancelled: threading.Event) -> tuple[str, dict[str, Any]]:
        """The PNGs go to the result store under the owner's prefix; the job's result lists their paths."""
        params = ImageParams.model_validate({**job.params, "model": job.model})
        image = await self.pool.generate_image(params, Priority(job.priority))
        stored = [
            {"path": await asyncio.to_thread(self.results.put, f"jobs/{job.owner}/{job.id}/{i}.png", png), "seed": seed}
            for i, (png, seed) in enumerate(zip(image.pngs, image.seeds, strict=True))
        ]
        return "completed", {"images": stored, "width": image.width, "height": image.height}

    async def _finish(self, job: Job, status: str, run_id: str, **fields: Any) -> str:
        used = usage.job_usage(job.type, fields.get("result"))  # settled with the outcome, same round
        await self.writer.finish(job.id, used=used, status=status, prefect_run_id=run_id, **fields)
        metrics.JOBS_FINISHED.labels(job.type, status).inc()
        if job.started_at is not None:
            metrics.JOB_QUEUE_TIME.labels(job.type).observe((job.started_at - job.created_at).total_seconds())
            metrics.JOB_RUN_TIME.labels(job.type).observe((datetime.now(UTC) - job.started_at).total_seconds())
        return status
