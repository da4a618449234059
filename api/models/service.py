"""Installed models as the gateway sees them: the registry, plus which workers hold each one warm."""

from __future__ import annotations

import asyncio

from api.models.schemas import ModelView
from api.workers.service import WorkerDirectory
from bitinglip.db.session import Database
from bitinglip.db.tables import ModelRecord
from bitinglip.errors import ModelNotFound
from bitinglip.models import registry
from bitinglip.models.names import split_model_id


class ModelService:
    def __init__(self, db: Database, workers: WorkerDirectory) -> None:
        self.db = db
        self.workers = workers

    async def list(self) -> list[ModelView]:
        records = await asyncio.to_thread(registry.list_records, self.db)
        workers = await self.workers.workers()
        return [
            ModelView.from_record(r, loaded_on=[w.id for w in workers if w.healthy and w.has_model(r.id)])
            for r in records
        ]

    async def resolve(self, model_id: str, task: str) -> ModelRecord:
        """NAME or NAME@REVISION of a ready model of the right task, else a 404 naming what exists."""
        name, revision = split_model_id(model_id)
        records = [
            r
            for r in await asyncio.to_thread(registry.list_records, self.db)
            if r.status == "ready" and r.task == task and r.name == name and revision in (None, r.revision)
        ]
        if not records:
            raise ModelNotFound(f"The model `{model_id}` does not exist or is not installed.", param="model")
        return max(records, key=lambda r: r.updated_at)
