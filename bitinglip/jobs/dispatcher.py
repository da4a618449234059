"""Turns durably queued jobs into Prefect runs, one run per group of same-type, same-model jobs.

Prefect background tasks run at ~4/s here; carrying up to `jobs_per_run` jobs per run lifts the
async path far above that (docs/architecture.md §3.3). Submission retries with backoff while the Prefect API is down:
the jobs simply stay queued in the DB until a run exists for them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from bitinglip.jobs.store import JobStore

log = logging.getLogger(__name__)

SubmitRun = Callable[[str, str, list[str]], str]  # (job type, model, job ids) -> Prefect run id


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        submit: SubmitRun,
        *,
        jobs_per_run: int,
        grouped_types: frozenset[str] = frozenset({"text"}),
        interval_s: float,
        redispatch_after: timedelta = timedelta(minutes=10),
    ) -> None:
        self.store = store
        self.submit = submit
        self.jobs_per_run = jobs_per_run
        self.grouped_types = grouped_types
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

    async def _loop(self) -> None:
        backoff = self.interval_s
        while True:
            try:
                dispatched = await self.dispatch_once()
                self.healthy = True
                backoff = self.interval_s
            except Exception as exc:
                self.healthy = False
                log.warning("dispatch failed (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not dispatched:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=max(self.interval_s, 0.5))
                except TimeoutError:
                    pass
            await asyncio.sleep(self.interval_s)  # lets a burst of submissions gather into one run

    async def dispatch_once(self) -> int:
        groups = await asyncio.to_thread(self.store.claim_for_dispatch, self.jobs_per_run * 4, self.redispatch_after)
        runs = [
            (key, ids[i : i + size])
            for key, ids in groups.items()
            for size in [self.jobs_per_run if key[0] in self.grouped_types else 1]
            for i in range(0, len(ids), size)
        ]
        count = 0
        for n, ((type_, model), job_ids) in enumerate(runs):
            try:
                run_id = await asyncio.to_thread(self.submit, type_, model, job_ids)
            except Exception:
                await asyncio.to_thread(self.store.release_dispatch, [j for _, ids in runs[n:] for j in ids])
                raise
            await asyncio.to_thread(self.store.set_run, job_ids, run_id)
            count += len(job_ids)
        return count
