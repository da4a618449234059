"""Installed models as the gateway sees them: the registry, plus which workers hold each one warm,
filtered by who is asking: a model the caller may not use (bitinglip/models/access.py) is unknown to
them here, and so on every route, since every route finds its model through `resolve`."""

from __future__ import annotations

import asyncio
import time

from api.models.schemas import DownloadRequest, ModelAccessRequest, ModelAccessView, ModelView
from api.workers.service import WorkerDirectory
from bitinglip.auth.audit import audit
from bitinglip.auth.principal import Principal
from bitinglip.config import Settings
from bitinglip.db.session import Database
from bitinglip.db.tables import Job, ModelRecord
from bitinglip.errors import Conflict, InvalidRequest, ModelNotFound
from bitinglip.jobs.store import JobStore
from bitinglip.models import access, lookup, registry
from bitinglip.models.install_spec import resolve_install
from bitinglip.models.names import split_model_id
from bitinglip.models.store import ModelStore
from bitinglip.types import Priority


class ModelService:
    """Reads the registry and the access rules at most every `refresh_s` on the hot path; a miss (or
    a refusal) re-reads before its 404, so a grant shows at once and a revocation within `refresh_s`
    on other gateway replicas (at once on the one that made it).

    Methods that take `who` fall back to the caller bound for this request (`access.CALLER`), which
    is how routes that do not pass one (inference, OpenAI) are covered; with none bound only open
    models are visible."""

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
        self._rules: access.Rules = {}
        self._read_at = -1e9

    def _read(self) -> tuple[list[ModelRecord], access.Rules]:
        return registry.list_records(self.db), access.load_rules(self.db)

    async def _cached(self, fresh: bool = False) -> list[ModelRecord]:
        if fresh or time.monotonic() - self._read_at > self.refresh_s:
            self._records, self._rules = await asyncio.to_thread(self._read)
            self._read_at = time.monotonic()
        return self._records

    def _visible(self, records: list[ModelRecord], who: Principal) -> list[ModelRecord]:
        return [r for r in records if access.may_use(self._rules, r.name, who)]

    async def list(self, who: Principal | None = None) -> list[ModelView]:
        who = who or access.current_caller()
        records = self._visible(await self._cached(fresh=True), who)
        workers = await self.workers.workers()
        return [
            ModelView.from_record(
                r, loaded_on=[w.id for w in workers if w.healthy and w.has_model(r.id)], admin=who.is_admin
            )
            for r in records
        ]

    async def get(self, model_id: str, who: Principal | None = None) -> ModelView:
        who = who or access.current_caller()
        record = await self._record(model_id, who)
        workers = await self.workers.workers(fresh=True)
        loaded = [w.id for w in workers if w.has_model(record.id)]
        return ModelView.from_record(record, loaded, with_files=True, admin=who.is_admin)

    async def record(self, model_id: str, who: Principal) -> ModelRecord:
        """The registry row of NAME (its newest revision) or NAME@REVISION that `who` may see, in any
        status; else a 404."""
        return await self._record(model_id, who)

    async def _record(self, model_id: str, who: Principal) -> ModelRecord:
        name, revision = split_model_id(model_id)
        records = [
            r
            for r in self._visible(await self._cached(fresh=True), who)
            if r.name == name and revision in (None, r.revision)
        ]
        if not records:
            raise ModelNotFound(f"model {model_id!r} is not installed", param="model")
        return max(records, key=lambda r: r.updated_at)

    async def download(self, request: DownloadRequest, owner: str) -> tuple[Job, bool]:
        """Accept a download durably; a second request for the same model and revision while one is
        queued or running shares it. Returns (job, created)."""
        spec = resolve_install(
            self.settings, request.name, request.source, request.revision, request.task, request.backend
        )
        model_id = spec.model_id
        existing = await asyncio.to_thread(self.jobs.active, "download", model_id)
        if existing is not None:
            if existing.params.get("backend", "auto") != spec.backend:  # not the same download: say so
                raise Conflict(
                    f"{model_id} is being installed for backend {existing.params.get('backend', 'auto')!r}; "
                    "wait for it, then delete it to install it for another backend",
                    param="backend",
                )
            return existing, False
        params = {
            "name": spec.name,
            "source": spec.source,
            "revision": spec.revision,
            "task_type": spec.task,
            "backend": spec.backend,
        }
        job = await asyncio.to_thread(
            self.jobs.create,
            type_="download",
            model=model_id,
            params=params,
            priority=int(Priority.NORMAL),
            owner=owner,
        )
        audit("model_download", actor=owner, model=model_id, source=spec.source, backend=spec.backend, job_id=job.id)
        return job, True

    async def delete(self, model_id: str, force: bool, actor: Principal) -> None:
        record = await self._record(model_id, actor)
        holders = [w.id for w in await self.workers.workers(fresh=True) if w.has_model(record.id)]
        if holders and not force:
            raise Conflict(
                f"model {record.id!r} is loaded on {', '.join(holders)}; unload it first or pass force=true",
                param="model",
            )
        await asyncio.to_thread(self._remove, record)
        self._read_at = -1e9
        audit("model_deleted", actor=actor.username, model=record.id, forced=bool(holders))

    def _remove(self, record: ModelRecord) -> None:
        if self.store.manifest(record.name, record.revision) is not None:
            self.store.remove(record.name, record.revision)
        registry.forget(self.db, record.id)

    async def pin(self, model_id: str, pinned: bool, actor: Principal) -> ModelView:
        record = await self._record(model_id, actor)
        await asyncio.to_thread(registry.set_pinned, self.db, record.id, pinned)
        audit("model_pinned" if pinned else "model_unpinned", actor=actor.username, model=record.id)
        return await self.get(record.id, actor)

    async def get_access(self, model: str) -> ModelAccessView:
        """Per model name: a revision is refused, since a rule covers all of them."""
        return ModelAccessView.from_rule(await asyncio.to_thread(access.get_rule, self.db, _rule_name(model)))

    async def set_access(self, model: str, request: ModelAccessRequest, actor: str) -> ModelAccessView:
        """May name a model not installed yet, so it is never open between its download and its rule."""
        name = _rule_name(model)
        rule = await asyncio.to_thread(
            access.set_rule, self.db, name, request.restricted, request.users, request.keys, actor
        )
        self._read_at = -1e9  # this replica applies it at once
        audit(
            "model_access_set",
            actor=actor,
            model=name,
            restricted=rule.restricted,
            users=sorted(rule.users),
            keys=sorted(rule.keys),
        )
        return ModelAccessView.from_rule(rule)

    async def resolve(self, model_id: str, task: str, who: Principal | None = None) -> ModelRecord:
        """A ready model of `task` that `who` may use, named by NAME, NAME@REVISION or its Hugging Face
        id (bitinglip/models/lookup.py); else a 404 that is the same whether the name is missing or
        withheld, or a 400 naming the routes of the task the model does do."""
        who = who or access.current_caller()

        def usable(all_records: list[ModelRecord]) -> list[ModelRecord]:
            return [r for r in self._visible(all_records, who) if r.status == "ready"]

        try:
            records = lookup.find(usable(await self._cached()), model_id, task)
        except (ModelNotFound, lookup.WrongModelTask):  # maybe installed or granted since the last read
            records = lookup.find(usable(await self._cached(fresh=True)), model_id, task)
        return max(records, key=lambda r: r.updated_at)


def _rule_name(model: str) -> str:
    name, revision = split_model_id(model)
    if revision is not None:
        raise InvalidRequest(
            f"access is set per model name, for all its revisions: use {name!r}, not {model!r}", param="model"
        )
    return name
