"""The worker registry: one row per model worker, written by its heartbeat, read by the gateways to
route requests and by the reaper to tell live workers from gone ones. Every read and write of the
`workers` table lives here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NotRequired, TypedDict, cast

from sqlalchemy import CursorResult, delete, select

from bitinglip.db.session import Database
from bitinglip.db.tables import Worker


class LoadedModel(TypedDict):
    """A model warm on a worker, as its heartbeat reports it (a JSON object in the row)."""

    id: str  # NAME@REVISION
    name: str
    task: str
    waiting: int  # requests queued in its batcher
    running: int  # requests in the batch being computed
    load_seconds: float
    tokens_per_s: float
    # Absent from older workers' rows:
    memory_bytes: NotRequired[int]  # weights and buffers it holds
    backend: NotRequired[str]  # what serves it (transformers, llama.cpp)
    pinned: NotRequired[bool]  # never unloaded to make room for another model
    keep_alive_s: NotRequired[float]  # stays loaded this long after its last request; -1: forever
    expires_in_s: NotRequired[float | None]  # when idle, unloaded after this; None: never
    idle_s: NotRequired[float]  # since its last request ended (0 while busy)
    last_used: NotRequired[str]  # ISO 8601 UTC time of its last request


def loaded_model(entry: Mapping[str, Any]) -> LoadedModel:
    """A typed entry from a JSON object (the pool's report, or a row written by any version)."""
    model = LoadedModel(
        id=str(entry["id"]),
        name=str(entry.get("name") or str(entry["id"]).partition("@")[0]),
        task=str(entry.get("task", "")),
        waiting=int(entry.get("waiting") or 0),
        running=int(entry.get("running") or 0),
        load_seconds=float(entry.get("load_seconds") or 0.0),
        tokens_per_s=float(entry.get("tokens_per_s") or 0.0),
    )
    if entry.get("memory_bytes") is not None:
        model["memory_bytes"] = int(entry["memory_bytes"])
    if entry.get("backend") is not None:
        model["backend"] = str(entry["backend"])
    if entry.get("pinned") is not None:
        model["pinned"] = bool(entry["pinned"])
    if entry.get("keep_alive_s") is not None:
        model["keep_alive_s"] = float(entry["keep_alive_s"])
    if entry.get("idle_s") is not None:
        model["idle_s"] = float(entry["idle_s"])
    if "expires_in_s" in entry:
        expires = entry["expires_in_s"]
        model["expires_in_s"] = None if expires is None else float(expires)
    if entry.get("last_used") is not None:
        model["last_used"] = str(entry["last_used"])
    return model


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    url: str
    device: str
    models: list[LoadedModel]
    queue_depth: int
    heartbeat_age_s: float
    healthy: bool  # heartbeat fresh: the worker gets traffic and keeps its jobs
    memory_budget_bytes: int | None = None  # what its models may hold; None: no byte limit

    @property
    def memory_used_bytes(self) -> int:
        """What its loaded models hold, as their last heartbeat measured it."""
        return sum(m.get("memory_bytes", 0) for m in self.models)

    def has_model(self, model_id: str) -> bool:
        """Warm under this id (NAME@REVISION) or name."""
        return any(m["id"] == model_id or m["name"] == model_id for m in self.models)


class WorkerRegistry:
    """`stale_after_s`: a worker whose last heartbeat is older is reported unhealthy."""

    def __init__(self, db: Database, stale_after_s: float) -> None:
        self.db = db
        self.stale_after_s = stale_after_s

    def beat(
        self,
        worker_id: str,
        *,
        url: str,
        device: str,
        models: Iterable[LoadedModel],
        queue_depth: int,
        started_at: datetime,
        at: datetime | None = None,
        memory_budget_bytes: int | None = None,
    ) -> None:
        """Register the worker, or refresh its row: where it is, what it holds, how busy it is."""
        with self.db.session() as s:
            s.merge(
                Worker(
                    id=worker_id,
                    url=url,
                    device=device,
                    models=[dict(m) for m in models],
                    queue_depth=queue_depth,
                    memory_budget_bytes=memory_budget_bytes,
                    started_at=started_at,
                    heartbeat_at=at or datetime.now(UTC),
                )
            )

    def remove(self, worker_id: str) -> bool:
        """Deregister: the gateways stop routing to it on their next read. False: it had no row."""
        with self.db.session() as s:
            result = cast("CursorResult[Any]", s.execute(delete(Worker).where(Worker.id == worker_id)))
            return bool(result.rowcount)

    def workers(self) -> list[WorkerInfo]:
        """Every registered worker, by id, each marked healthy or stale by its heartbeat's age."""
        now = datetime.now(UTC)
        with self.db.session() as s:
            rows = list(s.scalars(select(Worker).order_by(Worker.id)))
        infos = []
        for w in rows:
            beat = w.heartbeat_at if w.heartbeat_at.tzinfo else w.heartbeat_at.replace(tzinfo=UTC)
            age = (now - beat).total_seconds()
            infos.append(
                WorkerInfo(
                    id=w.id,
                    url=w.url,
                    device=w.device,
                    models=[loaded_model(m) for m in w.models],
                    queue_depth=w.queue_depth,
                    heartbeat_age_s=age,
                    healthy=age <= self.stale_after_s,
                    memory_budget_bytes=w.memory_budget_bytes,
                )
            )
        return infos

    def fresh(self) -> list[WorkerInfo]:
        return [w for w in self.workers() if w.healthy]

    def stale(self) -> list[WorkerInfo]:
        return [w for w in self.workers() if not w.healthy]

    def loaded_model_ids(self) -> set[str]:
        """Every model id warm on some registered worker, stale ones included."""
        return {m["id"] for w in self.workers() for m in w.models}
