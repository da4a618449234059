"""The store's disk budget: evict least-recently-used models that are neither pinned nor loaded.

The whole plan is made before anything is removed, so a budget that cannot be met leaves the store
exactly as it was."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from sqlalchemy import select

from bitinglip.db.session import Database
from bitinglip.db.tables import ModelRecord
from bitinglip.db.workers import WorkerRegistry
from bitinglip.errors import InvalidRequest
from bitinglip.models import registry
from bitinglip.models.store import ModelStore

_EPOCH = datetime.min.replace(tzinfo=UTC)


def evict_for(store: ModelStore, db: Database, needed: int, budget: int, keep: set[str]) -> list[str]:
    installed = store.installed()
    used = sum(m.size_bytes for m in installed if m.id not in keep)
    if used + needed <= budget:
        return []
    with db.session() as s:
        records = {r.id: r for r in s.scalars(select(ModelRecord))}
    loaded = WorkerRegistry(db, stale_after_s=math.inf).loaded_model_ids()  # stale workers count too

    def last_used(model_id: str, installed_at: datetime) -> datetime:
        record = records.get(model_id)
        return (record.last_used_at if record and record.last_used_at else None) or installed_at or _EPOCH

    candidates = sorted(
        (
            m
            for m in installed
            if m.id not in keep and m.id not in loaded and not (m.id in records and records[m.id].pinned)
        ),
        key=lambda m: last_used(m.id, m.installed_at),
    )
    plan, freed = [], 0
    for manifest in candidates:
        if used - freed + needed <= budget:
            break
        plan.append(manifest)
        freed += manifest.size_bytes
    if used - freed + needed > budget:
        raise InvalidRequest(
            f"disk budget too small: the new model needs {needed} bytes, the budget is {budget} bytes and "
            f"{used - freed} bytes are pinned, loaded or in use",
            param="source",
            code="disk_budget_exceeded",
        )
    for manifest in plan:
        store.remove(manifest.name, manifest.revision)
        registry.forget(db, manifest.id)
    return [m.id for m in plan]
