"""Loading and unloading models on model workers by hand (admin), through each worker's internal API:
the worker's pool enforces its memory budget and answers 503 when a model cannot fit, or 409 when an
unload would fail requests in flight. What is loaded where is read from heartbeats (`/api/v1/workers`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from api.models.schemas import ModelMemoryView, WorkerOutcome
from api.models.service import ModelService
from api.workers.client import WorkerClient
from api.workers.service import WorkerDirectory
from bitinglip import keep_alive
from bitinglip.auth.audit import audit
from bitinglip.auth.principal import Principal
from bitinglip.db.workers import WorkerInfo
from bitinglip.errors import BitingLipError, Conflict, ModelNotFound, NotFound, ServiceUnavailable
from bitinglip.models.names import split_model_id
from bitinglip.outputs import ModelLoaded, ModelsUnloaded

KeepAliveValue = str | int | float | None


class ModelMemoryService:
    def __init__(self, models: ModelService, workers: WorkerDirectory, client: WorkerClient) -> None:
        self.models = models
        self.workers = workers
        self.client = client

    async def load(
        self, model_id: str, keep_alive_value: KeepAliveValue, worker: str | None, actor: Principal
    ) -> ModelMemoryView:
        """On every healthy worker, or on `worker`; the keep-alive is checked here (400), before any hop."""
        seconds = keep_alive.checked(keep_alive_value)
        record = await self.models.record(model_id, actor)
        if record.status != "ready":
            raise Conflict(f"model {record.id!r} is {record.status}, not ready to load", param="model")
        payload = {} if seconds is None else {"keep_alive": seconds}

        async def load_on(w: WorkerInfo) -> WorkerOutcome:
            path = f"/internal/v1/models/{record.id}/load"
            answer = await self.client.call(w, path, payload, ModelLoaded)
            return WorkerOutcome(worker=w.id, status="loaded", model=answer.model)

        outcomes = await _on_each(await self._targets(worker), load_on)
        audit("model_loaded", actor=actor.username, model=record.id, workers=[o.worker for o in outcomes])
        return ModelMemoryView(model=record.id, workers=outcomes)

    async def unload(self, model_id: str, force: bool, worker: str | None, actor: Principal) -> ModelMemoryView:
        """A model no longer in the registry (deleted with force while loaded) can still be unloaded
        by the id the workers report."""
        try:
            target = (await self.models.record(model_id, actor)).id
        except ModelNotFound:
            split_model_id(model_id)  # a malformed name stays a 400
            if not any(w.has_model(model_id) for w in await self.workers.workers(fresh=True)):
                raise
            target = model_id

        async def unload_on(w: WorkerInfo) -> WorkerOutcome:
            path = f"/internal/v1/models/{target}/unload"
            answer = await self.client.call(w, path, {"force": force}, ModelsUnloaded)
            return WorkerOutcome(worker=w.id, status="unloaded" if answer.unloaded else "not_loaded")

        outcomes = await _on_each(await self._targets(worker), unload_on)
        done = [o.worker for o in outcomes if o.status == "unloaded"]
        audit("model_unloaded", actor=actor.username, model=target, workers=done, forced=force)
        return ModelMemoryView(model=target, workers=outcomes)

    async def _targets(self, worker: str | None) -> list[WorkerInfo]:
        known = await self.workers.workers(fresh=True)
        if worker is None:
            healthy = [w for w in known if w.healthy]
            if not healthy:
                raise ServiceUnavailable("no model worker is available; retry shortly", retry_after=2)
            return healthy
        found = [w for w in known if w.id == worker]
        if not found:
            raise NotFound(f"no model worker {worker[:200]!r} is registered", param="worker")
        if not found[0].healthy:
            raise ServiceUnavailable(f"model worker {worker!r} has stopped sending heartbeats", retry_after=2)
        return found


async def _on_each(
    targets: list[WorkerInfo], call: Callable[[WorkerInfo], Awaitable[WorkerOutcome]]
) -> list[WorkerOutcome]:
    """`call` on every worker at once. If one refuses, the answer is its error (its status: 503 no room,
    409 busy, ...), naming the worker and where it did succeed."""
    results = await asyncio.gather(*(call(w) for w in targets), return_exceptions=True)
    outcomes = [r for r in results if isinstance(r, WorkerOutcome)]
    for w, r in zip(targets, results, strict=True):
        if isinstance(r, BitingLipError):
            done = f" (done on {', '.join(o.worker for o in outcomes)})" if outcomes else ""
            r.message = f"model worker {w.id}: {r.message}{done}"
            raise r
        if isinstance(r, BaseException):
            raise r
    return outcomes
