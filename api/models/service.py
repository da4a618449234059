"""Installed models as the gateway sees them: the registry, plus which workers hold each one warm."""

from __future__ import annotations

import asyncio
import time

from api.models.schemas import ModelView
from api.workers.service import WorkerDirectory
from bitinglip.db.session import Database
from bitinglip.db.tables import ModelRecord
from bitinglip.errors import ModelNotFound
from bitinglip.models import registry
from bitinglip.models.names import split_model_id


class ModelService:
    """Reads the registry at most every `refresh_s` on the hot path; a miss re-reads before a 404."""

    def __init__(self, db: Database, workers: WorkerDirectory, refresh_s: float = 1.0) -> None:
        self.db = db
        self.workers = workers
        self.refresh_s = refresh_s
        self._records: list[ModelRecord] = []
        self._read_at = -1e9

    async def _cached(self, fresh: bool = False) -> list[ModelRecord]:
        if fresh or time.monotonic() - self._read_at > self.refresh_s:
            self._records = await asyncio.to_thread(registry.list_records, self.db)
            self._read_at = time.monotonic()
        return self._records

    async def list(self) -> list[ModelView]:
        records = await self._cached(fresh=True)
        workers = await self.workers.workers()
        return [
            ModelView.from_record(r, loaded_on=[w.id for w in workers if w.healthy and w.has_model(r.id)])
            for r in records
        ]

    async def resolve(self, model_id: str, task: str) -> ModelRecord:
        """NAME or NAME@REVISION of a ready model of the right task, else a 404 naming what exists."""
        name, revision = split_model_id(model_id)

        def matching(all_records: list[ModelRecord]) -> list[ModelRecord]:
            return [
                r
                for r in all_records
                if r.status == "ready" and r.task == task and r.name == name and revision in (None, r.revision)
            ]

        records = matching(await self._cached()) or matching(await self._cached(fresh=True))
        if not records:
            raise ModelNotFound(f"The model `{model_id}` does not exist or is not installed.", param="model")
        return max(records, key=lambda r: r.updated_at)
