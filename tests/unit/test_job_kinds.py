"""The job-kind table and what reads it: the dispatcher (flow-run kinds only, owners and params carried
to the submitter, release on failure), the workers' claim of model-worker jobs (priority, warm models
first, racing workers), the flow-run job lifecycle, and the API's job request shapes. Real
SQLite and PostgreSQL stores; the submitter is the dispatcher's injected dependency (Prefect's side is
covered end to end in tests/test_jobs.py), so here it records what it was given."""

from __future__ import annotations

import typing
from datetime import timedelta

import pytest
from pydantic import TypeAdapter

from api.jobs.schemas import JobRequest
from bitinglip.crypto import Cipher
from bitinglip.db.session import Database
from bitinglip.jobs.dispatcher import Dispatcher
from bitinglip.jobs.flowjob import FlowJob
from bitinglip.jobs.kinds import KINDS, JobKind, job_kind, types_run_by
from bitinglip.jobs.store import Dispatched, JobStore
from bitinglip.types import Priority

KEY = "WIZ1rLnlRZr2rPGh0X4dJ7q7wsvB9xJ9-VhVgBBAQyM="  # a Fernet key for this test only


def test_every_kind_has_one_runner_and_the_flow_kinds_a_deployment() -> None:
    worker, flow = types_run_by("model-worker"), types_run_by("flow-run")
    assert sorted(worker + flow) == sorted(KINDS) and not set(worker) & set(flow)
    for kind in KINDS.values():
        assert (kind.deployment is not None) == (kind.runner == "flow-run"), kind
        assert kind.prefect_run_kind == ("flow-run" if kind.deployment else "task-run")
    with pytest.raises(ValueError, match="unknown job type"):
        job_kind("shell")


def test_the_api_accepts_exactly_the_kinds_with_params_in_their_shape() -> None:
    """`POST /api/v1/tasks` takes the kinds whose table entry has params, each with that entry's
    params model; the others (batch, download) come from their own routes only."""
    members = typing.get_args(typing.get_args(JobRequest)[0])
    accepted = {}
    for member in members:
        model = typing.get_args(member)[0]
        (type_,) = typing.get_args(model.model_fields["type"].annotation)
        accepted[type_] = model.model_fields["params"].annotation
    assert accepted == {k.type: k.params for k in KINDS.values() if k.params is not None}
    adapter = TypeAdapter(JobRequest)
    for hostile in ({"type": "download", "params": {}}, {"type": "batch", "params": {}}, {"type": "../x"}):
        with pytest.raises(ValueError):
            adapter.validate_python(hostile)


class Recorder:
    def __init__(self, fail_after: int | None = None) -> None:
        self.runs: list[tuple[str, Dispatched]] = []
        self.fail_after = fail_after

    def __call__(self, kind: JobKind, job: Dispatched) -> str:
        if self.fail_after is not None and len(self.runs) >= self.fail_after:
            raise ConnectionError("prefect is away")
        self.runs.append((kind.type, job))
        return f"run-{len(self.runs)}"


def _store(db: Database) -> JobStore:
    return JobStore(db, Cipher([KEY]))  # params sealed in the DB: the submitter still gets them in clear


def _job(store: JobStore, type_: str, owner: str, model: str = "m@main", priority: Priority = Priority.NORMAL) -> str:
    return store.create(type_=type_, model=model, params={"n": owner}, priority=int(priority), owner=owner).id


async def test_dispatch_takes_flow_run_kinds_only_and_carries_owners_and_params(db: Database) -> None:
    store = _store(db)
    texts = [_job(store, "text", f"user{i}") for i in range(3)]
    downloads = [_job(store, "download", "admin", model=f"d{i}@main") for i in range(2)]
    batch = _job(store, "batch", "carol", priority=Priority.HIGH)
    submit = Recorder()
    dispatcher = Dispatcher(store, submit, interval_s=0.01)

    assert await dispatcher.dispatch_once() == 3
    assert submit.runs[0][1].id == batch  # best priority first
    assert sorted(t for t, _ in submit.runs) == ["batch", "download", "download"]  # one flow run per job
    for _, j in submit.runs:  # opened (owner by owner) only for the flow that shows them; no prompt opened otherwise
        assert j.params == ({"n": j.owner} if job_kind(j.type).flow_takes_params else {}), j
    assert {j.id for _, j in submit.runs} == {*downloads, batch}
    assert {store.get(j.id).prefect_run_id for _, j in submit.runs} == {"run-1", "run-2", "run-3"}
    # model-worker jobs are left for the workers to pull, untouched
    assert all(store.get(t).dispatched_at is None and store.get(t).status == "queued" for t in texts)
    assert await dispatcher.dispatch_once() == 0  # nothing is dispatched twice


def test_workers_claim_best_priority_first_warm_models_at_once_and_never_the_same_job(db: Database) -> None:
    store = _store(db)
    low = _job(store, "text", "ann", priority=Priority.LOW)
    high = _job(store, "text", "bob", priority=Priority.HIGH)
    normal = _job(store, "embedding", "cat", model="e@main")
    cold = _job(store, "image", "dan", model="i@main")
    _job(store, "batch", "eve")  # a flow-run kind: never claimed by a worker
    warm = ["m@main", "e@main"]
    first = store.claim_next("w1", warm, timedelta(hours=1), limit=2)
    assert [j.id for j in first] == [high, normal]  # priority order, across models warm here
    assert first[0].params == {"n": "bob"} and first[0].attempts == 1  # opened for the runner
    second = store.claim_next("w2", warm, timedelta(hours=1), limit=10)
    assert [j.id for j in second] == [low]  # what w1 took is gone; the cold model's job waits
    assert store.claim_next("w3", [], timedelta(0), limit=10)[0].id == cold  # waited long enough: anyone takes it
    assert not store.has_claimable(warm, timedelta(0))
    assert {store.get(i).worker_id for i in (high, normal, low, cold)} == {"w1", "w2", "w3"}
    store.release([low], "w1")  # not w1's: nothing happens
    assert store.get(low).status == "running"
    store.release([low], "w2")
    assert store.get(low).status == "queued" and store.get(low).attempts == 0
    assert store.has_claimable(warm, timedelta(hours=1))


async def test_a_failed_submission_releases_the_rest_for_the_next_round(db: Database) -> None:
    store = _store(db)
    ids = [_job(store, "download", "admin", model=f"d{i}@main") for i in range(3)]
    dispatcher = Dispatcher(store, Recorder(fail_after=1), interval_s=0.01)
    with pytest.raises(ConnectionError):
        await dispatcher.dispatch_once()
    states = [store.get(i) for i in ids]
    assert sum(j.prefect_run_id is not None for j in states) == 1
    assert sum(j.dispatched_at is None for j in states) == 2  # released: taken again next round
    dispatcher.submit = Recorder()
    assert await dispatcher.dispatch_once() == 2


async def test_stale_dispatch_is_taken_again(db: Database) -> None:
    store = _store(db)
    job_id = _job(store, "batch", "carol")
    dispatcher = Dispatcher(store, Recorder(), interval_s=0.01, redispatch_after=timedelta(0))
    assert await dispatcher.dispatch_once() == 1
    assert await dispatcher.dispatch_once() == 1  # never started: dispatched again
    assert store.get(job_id).status == "queued"


def test_flow_job_lifecycle(db: Database) -> None:
    store = _store(db)
    job_id = _job(store, "batch", "carol")
    with FlowJob(store, job_id, "run-a", beat_every_s=60) as job:
        claimed = job.claim(max_attempts=3)
        assert claimed is not None and claimed.params == {"n": "carol"}
        with FlowJob(store, job_id, "run-b", beat_every_s=60) as second:
            assert second.claim(max_attempts=3) is None  # one run holds it
            assert "no longer queued" in second.skipped
        job.finish("completed", result={"ok": 1})
    done = store.get(job_id)
    assert (done.status, done.worker_id, done.result) == ("completed", "flow-run:run-a", {"ok": 1})


def test_flow_job_failure_is_recorded_without_internals_and_raised(db: Database) -> None:
    store = _store(db)
    job_id = _job(store, "download", "admin")
    with FlowJob(store, job_id, "run-a", beat_every_s=60) as job:
        assert job.claim(max_attempts=3) is not None
        with pytest.raises(KeyError), job.failing():
            raise KeyError("/etc/secret-path")
    failed = store.get(job_id)
    assert failed.status == "failed" and failed.error is not None
    assert "/etc/secret-path" not in str(failed.error)
    assert failed.progress == {"phase": "failed"}


def test_flow_job_gives_up_after_max_attempts(db: Database) -> None:
    store = _store(db)
    job_id = _job(store, "batch", "carol")
    for attempt in range(1, 4):  # each run dies while running; the reaper puts the job back
        with FlowJob(store, job_id, f"run-{attempt}", beat_every_s=60) as job:
            assert job.claim(max_attempts=2) is not None or attempt == 3
        if attempt < 3:
            assert store.requeue_silent(("batch",), older_than=timedelta(seconds=-1)) == 1
    gave_up = store.get(job_id)
    assert (gave_up.status, gave_up.attempts) == ("failed", 3)
    assert gave_up.error == {"message": "gave up after 2 attempts", "type": "job_error"}
