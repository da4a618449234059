"""Runs a group of async jobs inside a model worker, through the same batcher as sync requests.

Called by the Prefect task in `flows/inference.py`. Claims each job (so nothing runs twice), watches
for cancellation while generating, and records every outcome; transient failures are re-queued and
re-raised so Prefect's declared retries pick them up."""

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
from bitinglip.types import Priority

log = logging.getLogger(__name__)


def run_log() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run's logger when inside one, else ours."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:
        return log


class RetryableJobsError(RuntimeError):
    """Some jobs of the group hit a transient error and were re-queued."""


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
        try:
            await asyncio.to_thread(self.ledger.settle_many, [(usage.job_hold_id(j), n) for j, n in used])
        except Exception:
            log.exception("settling the quota reservations of %d job(s) failed", len(used))


class JobRunner:
    def __init__(self, settings: Settings, pool: ModelPool, store: JobStore, worker_id: str) -> None:
        self.settings = settings
        self.pool = pool
        self.store = store
        self.worker_id = worker_id
        self.writer = FinishWriter(store, worker_id, usage.UsageLedger(store.db))
        self.results = ResultStore(settings)

    async def run(self, job_ids: list[str]) -> dict[str, str]:
        claimed = await asyncio.to_thread(self.store.claim_for_run, job_ids, self.worker_id)
        if claimed:  # one line on the run's log in the Prefect UI: which jobs, for which requests
            run_log().info("jobs: %s", ", ".join(f"{j.id} (request {j.request_id})" for j in claimed))
        cancel_events = {job.id: threading.Event() for job in claimed}
        watcher = asyncio.create_task(self._watch_cancellation(cancel_events))
        try:
            outcomes = await asyncio.gather(*(self._run_one(job, cancel_events[job.id]) for job in claimed))
        finally:
            watcher.cancel()
        summary = {job.id: outcome for job, outcome in zip(claimed, outcomes, strict=True)}
        requeued = [job_id for job_id, outcome in summary.items() if outcome == "requeued"]
        if requeued:
            raise RetryableJobsError(f"{len(requeued)} job(s) re-queued after transient errors")
        return summary

    async def stored_images(self, job_ids: list[str]) -> dict[str, list[str]]:
        """Paths of the PNGs that image jobs among `job_ids` stored, by job."""
        jobs = await asyncio.to_thread(self.store.many, job_ids)
        return {
            j.id: [img["path"] for img in (j.result or {}).get("images", [])]
            for j in jobs
            if j.type == "image" and j.status == "completed"
        }

    async def _run_one(self, job: Job, cancelled: threading.Event) -> str:
        """Runs in its own asyncio task, so the bound request id tags only this job's log lines."""
        structlog.contextvars.bind_contextvars(request_id=job.request_id, job_id=job.id)
        log.info("job %s (request %s, %s, %s)", job.id, job.request_id, job.type, job.model)
        if job.attempts > self.settings.job_max_attempts:
            return await self._finish(job, "failed", error={"message": "too many attempts", "type": "job_error"})
        handler = {"text": self._text, "embedding": self._embedding, "image": self._image}.get(job.type)
        if handler is None:  # the dispatcher only sends model-worker kinds (bitinglip/jobs/kinds.py)
            return await self._finish(job, "failed", error={"message": f"not a {job.type} worker", "type": "job_error"})
        started = time.perf_counter()
        try:
            status, result = await handler(job, cancelled)
        except Overloaded as exc:
            return await self._requeue(job, exc)
        except BitingLipError as exc:  # the request itself is wrong: retrying cannot help
            return await self._finish(job, "failed", error=exc.body()["error"])
        except Exception as exc:
            log.exception("job %s failed", job.id)
            return await self._requeue(job, exc)
        return await self._finish(job, status, result=result, engine_seconds=time.perf_counter() - started)

    async def _text(self, job: Job, cancelled: threading.Event) -> tuple[str, dict[str, Any]]:
        params = TextGenerationParams.model_validate({**job.params, "model": job.model})
        result = await self.pool.generate_text(params, Priority(job.priority), cancelled=cancelled, tenant=job.owner)
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

    async def _finish(self, job: Job, status: str, **fields: Any) -> str:
        used = usage.job_usage(job.type, fields.get("result"))  # settled with the outcome, same round
        await self.writer.finish(job.id, used=used, status=status, **fields)
        metrics.JOBS_FINISHED.labels(job.type, status).inc()
        if job.started_at is not None:
            metrics.JOB_QUEUE_TIME.labels(job.type).observe((job.started_at - job.created_at).total_seconds())
            metrics.JOB_RUN_TIME.labels(job.type).observe((datetime.now(UTC) - job.started_at).total_seconds())
        return status

    async def _requeue(self, job: Job, exc: Exception) -> str:
        error = {**error_record(exc), "type": "transient_error"}  # the exception's text is in our log only
        if job.attempts >= self.settings.job_max_attempts:
            return await self._finish(job, "failed", error=error)
        await asyncio.to_thread(self.store.requeue, job.id, error, self.worker_id)
        return "requeued"

    async def _watch_cancellation(self, events: dict[str, threading.Event], every: float = 0.5) -> None:
        while True:
            await asyncio.sleep(every)
            pending = [job_id for job_id, event in events.items() if not event.is_set()]
            for job_id in await asyncio.to_thread(self.store.cancel_requested, pending):
                events[job_id].set()
