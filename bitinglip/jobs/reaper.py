"""Takes back jobs from model workers and flow runs that died while running them (kill -9, lost
node): without it such jobs would stay `running` forever. Runs in every gateway; the UPDATE is
atomic, so replicas agree."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from bitinglip.jobs.kinds import types_run_by
from bitinglip.jobs.store import JobStore

log = logging.getLogger(__name__)


class Reaper:
    def __init__(
        self,
        store: JobStore,
        live_workers: Callable[[], Awaitable[list[str]]],
        on_requeued: Callable[[], None],
        *,
        orphan_after_s: float,
        interval_s: float,
    ) -> None:
        self.store = store
        self.live_workers = live_workers
        self.on_requeued = on_requeued
        self.orphan_after = timedelta(seconds=orphan_after_s)
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="job-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def reap_once(self) -> int:
        live = await self.live_workers()
        count = await asyncio.to_thread(
            self.store.requeue_orphans, live, types_run_by("model-worker"), self.orphan_after
        )
        if count:
            log.warning("re-queued %d job(s) whose model worker stopped heartbeating", count)
        silent = await asyncio.to_thread(self.store.requeue_silent, types_run_by("flow-run"), self.orphan_after)
        if silent:
            log.warning("re-queued %d job(s) whose flow run stopped heartbeating", silent)
        if count or silent:
            self.on_requeued()
        return count + silent

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.reap_once()
            except Exception as exc:  # the DB may be briefly away: try again next round
                log.warning("reaper round failed: %s", exc)
