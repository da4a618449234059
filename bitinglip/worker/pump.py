"""Pulls queued async jobs from the job table into this model worker, each run as its own Prefect task
run inside one flow run per busy spell (docs/architecture.md §3.3).

Why pull: a Prefect run created per job (or per group) by the gateway cost 120-170 ms of orchestration
and ran async jobs at 0.43-0.76 of the same work sent synchronously, and a steady trickle left most
runs carrying one job. A task run inside an already running flow costs ~10-20 ms, is created here,
next to the warm model, and nothing waits for a dispatcher. The job row stays the queue and the claim
(one conditional UPDATE) keeps two workers from taking one job."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any

from bitinglip.config import Settings
from bitinglip.db.tables import Job
from bitinglip.jobs.store import JobStore

if TYPE_CHECKING:
    from bitinglip.engines.pool import ModelPool
    from bitinglip.webhooks.delivery import Deliveries
    from bitinglip.worker.jobs import Computed, JobRunner

log = logging.getLogger(__name__)

BUSY_POLL_S = 0.05  # while a flow run is open: new jobs join within this


class JobPump:
    def __init__(
        self,
        settings: Settings,
        pool: ModelPool,
        store: JobStore,
        runner: JobRunner,
        worker_id: str,
        webhooks: Deliveries | None = None,
    ) -> None:
        self.settings = settings
        self.webhooks = webhooks  # jobs' webhook events, task runs of the same flow run
        self.pool = pool
        self.runner = runner
        self.store = store
        self.worker_id = worker_id
        self.cold_after = timedelta(seconds=settings.job_claim_cold_after_s)
        self.claimed: dict[str, Job] = {}
        self.cancelled: dict[str, threading.Event] = {}
        self.started: dict[str, asyncio.Task[Computed]] = {}  # work begun at claim, awaited by the task run
        self._running: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._our_sigterm: signal.Handlers | Callable[[int, FrameType | None], Any] | int | None = None

    def poke(self) -> None:
        """Work may be waiting (the gateway said so): look now instead of at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Shutdown: claim nothing more and hand the jobs in flight back to the queue, where another
        worker (or this one, restarted) takes them; Prefect's flow engine may swallow a plain cancel."""
        self._stopping = True
        self._wake.set()
        in_flight = list(self.claimed)
        for run in list(self._running):
            run.cancel()
        if in_flight:
            with suppress(Exception):
                await asyncio.to_thread(self.store.release, in_flight, self.worker_id)
        if self.webhooks is not None:
            await self.webhooks.close()

    def _keep_our_sigterm(self) -> None:
        """Prefect's flow engine swaps in a SIGTERM handler that raises inside the event loop, where
        nobody catches it, so the process would ignore `kill`, systemd and `bitinglip down` while a
        flow run is open. The worker's own shutdown (stop() above) is the graceful path: put it back."""
        if self._our_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._our_sigterm)

    def _warm(self) -> list[str]:
        return self.pool.loaded_ids()

    async def run(self) -> None:
        """The worker's background loop: idle, one cheap look per `job_poll_s` (or a poke); with work,
        one flow run that lasts until the worker has been idle for `job_flow_idle_s`."""
        from flows.inference import serve_inference_jobs

        self._our_sigterm = signal.getsignal(signal.SIGTERM)  # uvicorn's graceful shutdown
        backoff = 1.0
        while not self._stopping:
            try:
                found = await asyncio.to_thread(self.store.has_claimable, self._warm(), self.cold_after)
                if found:
                    await serve_inference_jobs(worker=self.worker_id)
                    backoff = 1.0
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Prefect or the DB away: the jobs wait queued, nothing is lost
                log.warning("job pump: %s; retrying in %.0fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.job_poll_s)
            except TimeoutError:
                pass

    @property
    def _delivering(self) -> bool:
        return self.webhooks is not None and self.webhooks.pending

    async def drain(self) -> dict[str, int]:
        """Inside the flow run: claim what fits, start a task run per job, repeat until idle; the run
        stays open while webhook deliveries retry (they are its task runs)."""
        self._keep_our_sigterm()
        counts: dict[str, int] = {}
        idle_since = time.monotonic()
        watcher = asyncio.create_task(self._watch_cancellation())
        try:
            while not self._stopping and (
                self._running or self._delivering or time.monotonic() - idle_since < self.settings.job_flow_idle_s
            ):
                room = self.settings.worker_jobs_in_flight - len(self._running)
                if room > 0:
                    jobs = await asyncio.to_thread(
                        self.store.claim_next, self.worker_id, self._warm(), self.cold_after, room
                    )
                    for job in jobs:
                        self.claimed[job.id] = job
                        self.cancelled[job.id] = threading.Event()
                        self.started[job.id] = self.runner.start(job, self.cancelled[job.id])
                        if self.webhooks is not None:
                            self.webhooks.send(job, "start")
                        run = asyncio.create_task(self._run(job, counts))
                        self._running.add(run)
                        run.add_done_callback(self._running.discard)
                if self._running:
                    idle_since = time.monotonic()
                    await asyncio.wait(self._running, timeout=BUSY_POLL_S, return_when=asyncio.FIRST_COMPLETED)
                else:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout=BUSY_POLL_S * 4)
                    except TimeoutError:
                        pass
        finally:
            watcher.cancel()
        return counts

    async def _run(self, job: Job, counts: dict[str, int]) -> None:
        """One job's task run; its final state (Completed, Failed, Cancelled) is counted, not raised."""
        from prefect import tags

        from flows.inference import run_inference_job

        outcome = "Crashed"
        try:
            with tags("bitinglip", job.type, f"model:{job.model}", f"owner:{job.owner}"):  # no Task copy per job
                state = await run_inference_job(  # type: ignore[misc]  # Prefect's overloads
                    job_id=job.id,
                    type=job.type,
                    model=job.model,
                    owner=job.owner,
                    priority=job.priority,
                    return_state=True,
                )
            outcome = str(getattr(state, "name", outcome))
            if self.webhooks is not None and outcome in ("Completed", "Failed"):
                self.webhooks.send(job, outcome.lower())  # in the background: the job is already recorded
        except Exception:  # Prefect could not start the run: back to the queue for another try
            log.exception("job %s: its task run could not start; it goes back to the queue", job.id)
            with suppress(Exception):
                await asyncio.to_thread(self.store.release, [job.id], self.worker_id)
        finally:
            if (work := self.started.pop(job.id, None)) is not None and not work.done():
                work.cancel()  # its task run never took it (Prefect failed first): the job was released
            self.claimed.pop(job.id, None)
            self.cancelled.pop(job.id, None)
            self.runner.tokens.close(job.id)  # after its outcome is recorded: a watcher reads it next
            counts[outcome] = counts.get(outcome, 0) + 1

    async def _watch_cancellation(self, every: float = 0.5) -> None:
        while True:
            await asyncio.sleep(every)
            pending = [job_id for job_id, event in self.cancelled.items() if not event.is_set()]
            if not pending:  # idle: no thread hop twice a second for nothing
                continue
            try:
                for job_id in await asyncio.to_thread(self.store.cancel_requested, pending):
                    if event := self.cancelled.get(job_id):
                        event.set()
            except Exception as exc:  # the DB may be briefly away: look again next round
                log.warning("cancellation check failed: %s", exc)
