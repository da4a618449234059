"""Which model workers are alive, what they hold, and which one should take a request."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bitinglip.config import Settings
from bitinglip.db.session import Database
from bitinglip.db.workers import WorkerInfo, WorkerRegistry
from bitinglip.errors import ServiceUnavailable


class WorkerDirectory:
    """Reads the worker registry (bitinglip/db/workers.py) at most every `refresh_s`, so routing
    costs no query."""

    def __init__(self, settings: Settings, db: Database, refresh_s: float = 0.5) -> None:
        self.settings = settings
        self.db = db
        self.registry = WorkerRegistry(db, settings.worker_stale_after_s)
        self.refresh_s = refresh_s
        self._workers: list[WorkerInfo] = []
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def workers(self, fresh: bool = False) -> list[WorkerInfo]:
        if fresh or time.monotonic() - self._read_at > self.refresh_s:
            async with self._lock:
                if fresh or time.monotonic() - self._read_at > self.refresh_s:
                    self._workers = await asyncio.to_thread(self.registry.workers)
                    self._read_at = time.monotonic()
        return self._workers

    async def pick(self, model_id: str, exclude: frozenset[str] = frozenset()) -> WorkerInfo:
        """Model affinity first (a worker with it warm, shortest queue), else the least busy worker,
        the one with the most free memory among equals, which loads it on first use. Stale workers
        get no traffic."""
        healthy = [w for w in await self.workers() if w.healthy and w.id not in exclude]
        if not healthy:
            raise ServiceUnavailable("no model worker is available; retry shortly", retry_after=2)
        warm = [w for w in healthy if w.has_model(model_id)]
        if warm:
            return min(warm, key=lambda w: w.queue_depth)
        return min(healthy, key=lambda w: (w.queue_depth, -_free_bytes(w)))


def _free_bytes(worker: WorkerInfo) -> float:
    """Room left in its memory budget; a worker without a byte budget has unbounded room."""
    if worker.memory_budget_bytes is None:
        return float("inf")
    return worker.memory_budget_bytes - worker.memory_used_bytes


def worker_view(worker: WorkerInfo) -> dict[str, Any]:
    """A model worker as `GET /api/v1/workers` and the console's live feed show it (admins only)."""
    return {
        "id": worker.id,
        "url": worker.url,
        "device": worker.device,
        "healthy": worker.healthy,
        "heartbeat_age_s": round(worker.heartbeat_age_s, 2),
        "queue_depth": worker.queue_depth,
        "memory_budget_bytes": worker.memory_budget_bytes,
        "memory_used_bytes": worker.memory_used_bytes,
        "models": worker.models,
    }
