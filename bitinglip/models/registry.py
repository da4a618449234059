"""The model registry in the gateway DB: what is installed, installing or failed, and why."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update

from bitinglip.db.session import Database
from bitinglip.db.tables import ModelRecord
from bitinglip.models.catalog import Task
from bitinglip.models.store import Manifest, ModelStore


def mark_downloading(db: Database, name: str, revision: str, task: Task, source: str) -> None:
    with db.session() as s:
        record = s.get(ModelRecord, f"{name}@{revision}")
        if record is None:
            record = ModelRecord(id=f"{name}@{revision}", name=name, revision=revision, task=task, source=source)
            s.add(record)
        if record.status != "ready":
            record.status = "downloading"
        record.error = None
        record.source = source


def mark_ready(db: Database, manifest: Manifest, store: ModelStore) -> None:
    with db.session() as s:
        record = s.get(ModelRecord, manifest.id) or ModelRecord(
            id=manifest.id, name=manifest.name, revision=manifest.revision
        )
        record.task = manifest.task
        record.backend = manifest.backend
        record.source = manifest.source
        record.path = str(store.path(manifest))
        record.files = {p: f.model_dump() for p, f in manifest.files.items()}
        record.size_bytes = manifest.size_bytes
        record.status = "ready"
        record.error = None
        s.merge(record)


def mark_failed(db: Database, model_id: str, reason: str) -> None:
    with db.session() as s:
        record = s.get(ModelRecord, model_id)
        if record is not None and record.status != "ready":  # a failed re-install keeps the old copy
            record.status = "failed"
            record.error = reason


def forget(db: Database, model_id: str) -> None:
    with db.session() as s:
        record = s.get(ModelRecord, model_id)
        if record is not None:
            s.delete(record)


def set_pinned(db: Database, model_id: str, pinned: bool) -> ModelRecord | None:
    with db.session() as s:
        record = s.get(ModelRecord, model_id)
        if record is not None:
            record.pinned = pinned
        return record


def pinned_ids(db: Database) -> frozenset[str]:
    """Ids of the pinned models: the store never evicts them, and workers never unload them on their own."""
    with db.session() as s:
        return frozenset(s.scalars(select(ModelRecord.id).where(ModelRecord.pinned.is_(True))))


def touch(db: Database, *model_ids: str) -> None:
    """Mark models as used now: the store's LRU eviction reads `last_used_at`."""
    if not model_ids:
        return
    with db.session() as s:
        s.execute(update(ModelRecord).where(ModelRecord.id.in_(model_ids)).values(last_used_at=datetime.now(UTC)))


def sync_from_store(db: Database, store: ModelStore) -> None:
    """The store is the truth for files: register what is on disk, drop `ready` rows whose files left."""
    on_disk = {m.id: m for m in store.installed()}
    with db.session() as s:
        for record in s.scalars(select(ModelRecord).where(ModelRecord.status == "ready")):
            if record.id not in on_disk:
                s.delete(record)
    for manifest in on_disk.values():
        mark_ready(db, manifest, store)


def list_records(db: Database) -> list[ModelRecord]:
    with db.session() as s:
        return list(s.scalars(select(ModelRecord).order_by(ModelRecord.name, ModelRecord.revision)))
