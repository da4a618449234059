"""The worker registry (bitinglip/db/workers.py) and taking back a gone worker's jobs, on a real
SQLite file and a real PostgreSQL database of its own: no HTTP, no Prefect."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bitinglip.crypto import Cipher
from bitinglip.db.session import Database
from bitinglip.db.workers import LoadedModel, WorkerRegistry, loaded_model
from bitinglip.jobs.store import JobStore
from tests.unit.conftest import unit_settings

SMOL = LoadedModel(
    id="smollm2-135m-instruct@main",
    name="smollm2-135m-instruct",
    task="text",
    waiting=2,
    running=1,
    load_seconds=1.5,
    tokens_per_s=42.0,
)


def _beat(registry: WorkerRegistry, worker_id: str, at: datetime | None = None, queue_depth: int = 0) -> None:
    registry.beat(
        worker_id,
        url=f"http://{worker_id}",
        device="cpu",
        models=[SMOL],
        queue_depth=queue_depth,
        started_at=datetime.now(UTC) - timedelta(minutes=5),
        at=at,
    )


def _running_job(store: JobStore, worker_id: str, type_: str = "text") -> str:
    job = store.create(type_=type_, model=SMOL["id"], params={"prompt": "hi"}, priority=5, owner="alice")
    assert [j.id for j in store.claim_for_run([job.id], worker_id)] == [job.id]
    return job.id


def test_register_and_heartbeat(db: Database) -> None:
    registry = WorkerRegistry(db, stale_after_s=10)
    assert registry.workers() == []
    _beat(registry, "w1", queue_depth=3)
    [w] = registry.workers()
    assert (w.id, w.url, w.device, w.queue_depth, w.healthy) == ("w1", "http://w1", "cpu", 3, True)
    assert w.models == [SMOL]
    assert 0 <= w.heartbeat_age_s < 10
    assert w.has_model(SMOL["id"]) and w.has_model(SMOL["name"]) and not w.has_model("other")

    _beat(registry, "w1", queue_depth=0)  # a later beat refreshes the same row
    [w] = registry.workers()
    assert w.queue_depth == 0
    assert registry.loaded_model_ids() == {SMOL["id"]}


def test_fresh_and_stale(db: Database) -> None:
    registry = WorkerRegistry(db, stale_after_s=10)
    _beat(registry, "b-new")
    _beat(registry, "a-old", at=datetime.now(UTC) - timedelta(seconds=60))
    assert [w.id for w in registry.workers()] == ["a-old", "b-new"]  # by id
    assert [w.id for w in registry.fresh()] == ["b-new"]
    [old] = registry.stale()
    assert old.id == "a-old" and not old.healthy and old.heartbeat_age_s >= 60
    _beat(registry, "a-old")  # beating again makes it fresh
    assert [w.id for w in registry.fresh()] == ["a-old", "b-new"]


def test_remove(db: Database) -> None:
    registry = WorkerRegistry(db, stale_after_s=10)
    _beat(registry, "w1")
    _beat(registry, "w2")
    assert registry.remove("w1") is True
    assert registry.remove("w1") is False
    assert [w.id for w in registry.workers()] == ["w2"]


def test_loaded_model_entries_are_typed() -> None:
    """The pool's report and rows written without some fields read as complete entries."""
    assert loaded_model({**SMOL, "extra": "dropped"}) == SMOL
    assert loaded_model({"id": "m@r"}) == LoadedModel(
        id="m@r", name="m", task="", waiting=0, running=0, load_seconds=0.0, tokens_per_s=0.0
    )


def test_requeue_worker(db: Database) -> None:
    store = JobStore(db, Cipher([]))
    mine = _running_job(store, "w1")
    mine_embedding = _running_job(store, "w1", "embedding")
    theirs = _running_job(store, "w2")
    flow_run = _running_job(store, "w1", "batch")  # flow runs beat on the job; the reaper handles them
    done = _running_job(store, "w1")
    store.finish_many([(done, {"status": "completed", "result": {"text": "ok"}})], "w1")

    assert store.requeue_worker("w1") == 2
    for job_id in (mine, mine_embedding):
        job = store.get(job_id)
        assert (job.status, job.worker_id, job.dispatched_at) == ("queued", None, None)
        assert job.error is not None and job.error["type"] == "worker_lost"
        assert job.attempts == 1
    assert store.get(theirs).status == "running" and store.get(theirs).worker_id == "w2"
    assert store.get(flow_run).status == "running"
    assert store.get(done).status == "completed"
    assert store.requeue_worker("w1") == 0


def test_release_dead_worker(db: Database, db_url: str, tmp_path: Path) -> None:
    """`up` after killing a worker: its row goes and the jobs it ran return to the queue."""
    from bitinglip.platform import release_dead_worker

    registry = WorkerRegistry(db, stale_after_s=10)
    store = JobStore(db, Cipher([]))
    _beat(registry, "w1")
    _beat(registry, "w2")
    mine = _running_job(store, "w1")
    theirs = _running_job(store, "w2")

    assert release_dead_worker(unit_settings(tmp_path, db_url), "w1") == 1
    assert [w.id for w in registry.workers()] == ["w2"]
    assert store.get(mine).status == "queued"
    assert store.get(theirs).status == "running"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_worker_start_requeues_its_own_running_jobs(db: Database, db_url: str, tmp_path: Path) -> None:
    """A worker restarted by systemd or Kubernetes keeps its id, so the reaper would take its old
    `running` jobs for live ones: the worker takes them back itself before it serves any job."""
    from bitinglip.worker.app import create_worker_app

    settings = unit_settings(
        tmp_path, db_url, worker_id="w-restarted", worker_port=_free_port(), worker_models=[], device="cpu"
    )
    store = JobStore(db, Cipher([]))
    left_over = _running_job(store, "w-restarted")
    other = _running_job(store, "w-other")

    app = create_worker_app(settings, serve_jobs=False)
    async with app.router.lifespan_context(app):
        job = store.get(left_over)
        assert (job.status, job.worker_id, job.dispatched_at) == ("queued", None, None)
        assert job.error is not None and job.error["type"] == "worker_lost"
        assert store.get(other).status == "running"
