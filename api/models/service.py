"""Installed models as the gateway sees them: the registry, plus which workers hold each one warm."""

from __future__ import annotations

import asyncio
import time

from api.models.schemas import DownloadRequest, ModelView
from api.workers.service import WorkerDirectory
from bitinglip.auth.audit import audit
from bitinglip.config import Settings
from bitinglip.db.session import Database
from bitinglip.db.tables import Job, ModelRecord
from bitinglip.engines.types import Priority
from bitinglip.errors import Conflict, InvalidRequest, ModelNotFound
from bitinglip.jobs.store import JobStore
from bitinglip.models import registry
from bitinglip.models.catalog import load_catalog
from bitinglip.models.names import check_part, split_model_id
from bitinglip.models.sources import parse_source
from bitinglip.models.store import ModelStore


class ModelService:
    """Reads the registry at most every `refresh_s` on the hot path; a miss re-reads before a 404."""

    def __init__(
        self, settings: Settings, db: Database, workers: WorkerDirectory, jobs: JobStore, refresh_s: float = 1.0
    ) -> None:
        self.settings = settings
        self.db = db
        self.workers = workers
        self.jobs = jobs
        self.store = ModelStore(settings.store_dir)
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

    async def get(self, model_id: str) -> ModelView:
        record = await self._record(model_id)
        workers = await self.workers.workers(fresh=True)
        loaded = [w.id for w in workers if w.has_model(record.id)]
        return ModelView.from_record(record, loaded, with_files=True)

    async def _record(self, model_id: str) -> ModelRecord:
        name, revision = split_model_id(model_id)
        records = [r for r in await self._cached(fresh=True) if r.name == name and revision in (None, r.revision)]
        if not records:
            raise ModelNotFound(f"model {model_id!r} is not installed", param="model")
        return max(records, key=lambda r: r.updated_at)

    async def download(self, request: DownloadRequest, owner: str) -> tuple[Job, bool]:
        """Accept a download durably; a second request for the same model and revision while one is
        queued or running shares it. Returns (job, created)."""
        entry = load_catalog().get(request.name or "") if request.source is None else None
        if request.source is None and entry is None:
            raise InvalidRequest("give a source URI, or the name of a catalog model", param="source")
        source = request.source or (entry.source if entry else "")
        ref = parse_source(source)
        name = check_part(request.name or ref.location.rstrip("/").rsplit("/", 1)[-1].split(".")[0], "name")
        task = (
            request.task
            or (entry.task if entry else None)
            or (catalog_entry.task if (catalog_entry := load_catalog().get(name)) else None)
        )
        if task is None:
            raise InvalidRequest("task is required for a model outside the catalog", param="task")
        revision = check_part(request.revision or ref.revision or (entry.revision if entry else "main"), "revision")
        model_id = f"{name}@{revision}"
        existing = await asyncio.to_thread(self.jobs.active, "download", model_id)
        if existing is not None:
            return existing, False
        params = {"name": name, "source": source, "revision": revision, "task_type": task}
        job = await asyncio.to_thread(
            self.jobs.create,
            type_="download",
            model=model_id,
            params=params,
            priority=int(Priority.NORMAL),
            owner=owner,
        )
        audit("model_download", actor=owner, model=model_id, source=source, job_id=job.id)
        return job, True

    async def delete(self, model_id: str, force: bool, actor: str) -> None:
        record = await self._record(model_id)
        holders = [w.id for w in await self.workers.workers(fresh=True) if w.has_model(record.id)]
        if holders and not force:
            raise Conflict(
                f"model {record.id!r} is loaded on {', '.join(holders)}; unload it first or pass force=true",
                param="model",
            )
        await asyncio.to_thread(self._remove, record)
        self._read_at = -1e9
        audit("model_deleted", actor=actor, model=record.id, forced=bool(holders))

    def _remove(self, record: ModelRecord) -> None:
        if self.store.manifest(record.name, record.revision) is not None:
            self.store.remove(record.name, record.revision)
        registry.forget(self.db, record.id)

    async def pin(self, model_id: str, pinned: bool, actor: str) -> ModelView:
        record = await self._record(model_id)
        await asyncio.to_thread(registry.set_pinned, self.db, record.id, pinned)
        audit("model_pinned" if pinned else "model_unpinned", actor=actor, model=record.id)
        return await self.get(record.id)

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
