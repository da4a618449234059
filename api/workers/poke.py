"""Tells model workers that async jobs are waiting, so a worker's pump claims them at once instead of
at its next idle poll (`BITINGLIP_JOB_POLL_S`). Best effort: a lost poke only costs that poll."""

from __future__ import annotations

import asyncio
import logging

from api.workers.client import WorkerClient
from api.workers.service import WorkerDirectory

log = logging.getLogger(__name__)

# Between two rounds. A worker that was just poked is already claiming, so pokes closer than this tell it
# nothing new; under a stream of submissions they cost the gateway and the worker a request each
# (~5% of the gateway's samples at 450 submissions/s without it). A lone submission is poked at once.
ROUND_GAP_S = 0.05


class JobPoker:
    """At most one round of pokes in flight; submissions during a round ask for one more after it,
    `ROUND_GAP_S` later, so a burst of 1000 submissions costs a handful of pokes, not 1000."""

    def __init__(self, workers: WorkerDirectory, client: WorkerClient) -> None:
        self.workers = workers
        self.client = client
        self._models: set[str] = set()
        self._round: asyncio.Task[None] | None = None

    def poke(self, model_id: str) -> None:
        self._models.add(model_id)
        self._start()

    def poke_all(self) -> None:
        self._models.add("*")
        self._start()

    def _start(self) -> None:
        if self._round is None or self._round.done():
            self._round = asyncio.get_running_loop().create_task(self._poke_rounds(), name="job-poke")

    async def _poke_rounds(self) -> None:
        while self._models:
            models, self._models = self._models, set()
            await self._poke(models)
            await asyncio.sleep(ROUND_GAP_S)  # submissions meanwhile make the next round

    async def _poke(self, models: set[str]) -> None:
        healthy = [w for w in await self.workers.workers() if w.healthy]
        warm = [] if "*" in models else [w for w in healthy if any(w.has_model(m) for m in models)]
        results = await asyncio.gather(*(self.client.poke_jobs(w) for w in warm or healthy), return_exceptions=True)
        for worker, result in zip(warm or healthy, results, strict=True):
            if isinstance(result, Exception):
                log.debug("poking worker %s failed: %s", worker.id, result)
