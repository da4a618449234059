"""The worker's row in the shared DB: the gateway routes on it and drains workers that go quiet."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from bitinglip.config import Settings
from bitinglip.db.session import Database
from bitinglip.db.workers import LoadedModel, WorkerRegistry, loaded_model
from bitinglip.engines.pool import ModelPool
from bitinglip.models import registry

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, settings: Settings, db: Database, pool: ModelPool) -> None:
        self.settings = settings
        self.db = db
        self.pool = pool
        self.workers = WorkerRegistry(db, settings.worker_stale_after_s)
        self.started_at = datetime.now(UTC)

    async def beat_now(self) -> None:
        """The pool is read on the event loop, which is the only one changing it; the DB writes run
        in a thread."""
        await asyncio.to_thread(self.beat, [loaded_model(m) for m in self.pool.loaded()], self.pool.queue_depth)

    def beat(self, loaded: list[LoadedModel], queue_depth: int) -> None:
        """Also marks the loaded models as used now (the store's LRU eviction reads that) and tells
        the pool which models are pinned (it never unloads those on its own)."""
        self.pool.pinned = registry.pinned_ids(self.db)
        registry.touch(self.db, *(m["id"] for m in loaded))
        self.workers.beat(
            self.settings.worker_name,
            url=self.settings.worker_url,
            device=self.pool.device,
            models=loaded,
            queue_depth=queue_depth,
            started_at=self.started_at,
            memory_budget_bytes=self.pool.budget_bytes,
        )

    def deregister(self) -> None:
        self.workers.remove(self.settings.worker_name)

    async def _listening(self) -> None:
        """Announce ourselves only once the HTTP server accepts connections: a heartbeat written
        during start-up would send the gateway to a closed port."""
        while True:
            try:
                _, writer = await asyncio.open_connection(self.settings.worker_host, self.settings.worker_port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)

    async def run(self) -> None:
        await self._listening()
        while True:
            try:
                await self.beat_now()
            except Exception as exc:  # the DB may be briefly away; keep serving, beat again soon
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.settings.worker_heartbeat_s)
