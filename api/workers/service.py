"""Which model workers are alive, what they hold, and which one should take a request."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from bitinglip.config import Settings
from bitinglip.db.session import Database
from bitinglip.db.tables import Worker
from bitinglip.errors import ServiceUnavailable


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    url: str
    device: str
    models: list[dict[str, Any]]
    queue_depth: int
    heartbeat_age_s: float
    healthy: bool

    def has_model(self, model_id: str) -> bool:
        return any(m["id"] == model_id or m["name"] == model_id for m in self.models)


class WorkerDirectory:
    """Reads heartbeats from the shared DB, at most every `refresh_s`, so routing costs no query."""

    def __init__(self, settings: Settings, db: Database, refresh_s: float = 0.5) -> None:
        self.settings = settings
        self.db = db
        self.refresh_s = refresh_s
        self._workers: list[WorkerInfo] = []
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    def _read(self) -> list[WorkerInfo]:
        now = datetime.now(UTC)
        with self.db.session() as s:
            rows = list(s.scalars(select(Worker).order_by(Worker.id)))
        infos = []
        for w in rows:
            beat = w.heartbeat_at if w.heartbeat_at.tzinfo else w.heartbeat_at.replace(tzinfo=UTC)
            age = (now - beat).total_seconds()
            infos.append(
                WorkerInfo(
                    w.id,
                    w.url,
                    w.device,
                    list(w.models),
                    w.queue_depth,
                    age,
                    age <= self.settings.worker_stale_after_s,
                )
            )
        return infos

    async def workers(self, fresh: bool = False) -> list[WorkerInfo]:
        if fresh or time.monotonic() - self._read_at > self.refresh_s:
            async with self._lock:
                if fresh or time.monotonic() - self._read_at > self.refresh_s:
                    self._workers = await asyncio.to_thread(self._read)
                    self._read_at = time.monotonic()
        return self._workers

    async def pick(self, model_id: str, exclude: frozenset[str] = frozenset()) -> WorkerInfo:
        """Model affinity first (a worker with it warm, shortest queue), else the least busy worker,
        which loads it on first use. Stale workers get no traffic."""
        healthy = [w for w in await self.workers() if w.healthy and w.id not in exclude]
        if not healthy:
            raise ServiceUnavailable("no model worker is available; retry shortly", retry_after=2)
        warm = [w for w in healthy if w.has_model(model_id)]
        return min(warm or healthy, key=lambda w: w.queue_depth)
