"""Turns durably queued flow-run jobs (batches, downloads) into Prefect flow runs of their deployments,
one run per job. Model-worker jobs are not dispatched: model workers pull them (bitinglip/worker/pump.py,
docs/architecture.md §3.3). Submission retries with backoff while the Prefect API is down: the jobs
simply stay queued in the DB until a run exists for them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from tenacity import AsyncRetrying, RetryCallState, wait_exponential

from bitinglip.jobs.kinds import JobKind, job_kind
from bitinglip.jobs.store import Dispatched, JobStore

log = logging.getLogger(__name__)

# An idle dispatcher's look at the job table when nothing poked it: a submission pokes its own gateway's
# dispatcher and the reaper pokes after requeueing, so this only bounds how late a run left to redispatch
# is noticed. Twice a second it cost an idle gateway ~0.3% of a core (docs/architecture.md §3.23).
IDLE_LOOK_S = 5.0

SubmitRun = Callable[[JobKind, Dispatched], str]  # (kind, job) -> Prefect flow run id


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        submit: SubmitRun,
        *,
        interval_s: float,
        claim_limit: int = 64,
        redispatch_after: timedelta = timedelta(minutes=10),
    ) -> None:
        self.store = store
        self.submit = submit
        self.claim_limit = claim_limit
        self.interval_s = interval_s
        self.redispatch_after = redispatch_after
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.healthy = True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="job-dispatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def poke(self) -> None:
        """A job was just accepted: dispatch now instead of at the next tick."""
        self._wake.set()

    def _failed(self, state: RetryCallState) -> None:
        self.healthy = False
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "dispatch failed (%s); retrying in %.1fs", state.outcome.exception() if state.outcome else "?", wait
        )

    async def _dispatch_until_it_works(self) -> int:
        """Retries forever with backoff (up to 5 s) while the DB or the Prefect API is away."""
        retrying = AsyncRetrying(
            wait=wait_exponential(multiplier=self.interval_s, min=self.interval_s, max=5.0),
            before_sleep=self._failed,
            reraise=True,
        )
        dispatched: int = await retrying(self.dispatch_once)
        self.healthy = True
        return dispatched

    async def _loop(self) -> None:
        while True:
            if not await self._dispatch_until_it_works():
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=max(self.interval_s, IDLE_LOOK_S))
                except TimeoutError:
                    pass
            await asyncio.sleep(self.interval_s)  # lets a burst of submissions gather into one run

    async def dispatch_once(self) -> int:
        jobs = await asyncio.to_thread(self.store.claim_for_dispatch, self.claim_limit, self.redispatch_after)
        for n, job in enumerate(jobs):
            try:
                run_id = await asyncio.to_thread(self.submit, job_kind(job.type), job)
            except Exception:
                await asyncio.to_thread(self.store.release_dispatch, [j.id for j in jobs[n:]])
                raise
            await asyncio.to_thread(self.store.set_run, [job.id], run_id)
        return len(jobs)
