"""Retention and deletion against the real platform (results on the moto S3 server): the scheduled
`purge-expired` deployment run as a real Prefect flow run on the `cpu` pool removes expired jobs,
uploads and batches (rows and S3 objects), keeps the rest and reports counts as an artifact; an owner
deletes their own job and file at once, another user gets 404. Store-level checks cover what the
shared platform cannot show safely (age-by-mtime objects, inputs of running batches, running jobs)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from prefect.client.schemas.objects import FlowRun
from sqlalchemy import update

from bitinglip import retention
from bitinglip.batches.files import FileStore
from bitinglip.config import Settings
from bitinglip.crypto import Cipher
from bitinglip.db.session import Database
from bitinglip.db.tables import FileRecord, Job
from bitinglip.errors import Conflict
from bitinglip.jobs.store import JobStore
from bitinglip.results import ResultStore
from tests.conftest import EMBEDDING_MODEL, IMAGE_MODEL, S3Server
from tests.platform_harness import Platform
from tests.security.conftest import envelope

AGE = timedelta(days=20)  # rows made "old"; the purge runs with now = real now + 15 days (retention 30 days)
AHEAD = timedelta(days=15)


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _embedding_lines(tag: str) -> bytes:
    return _jsonl(
        [
            {
                "custom_id": f"{tag}-{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": EMBEDDING_MODEL, "input": t},
            }
            for i, t in enumerate(["a cat", "a dog"])
        ]
    )


def _wait(fetch: Any, done: Any, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while not done(value := fetch()):
        assert time.monotonic() < deadline, value
        time.sleep(0.3)
    return value


def image_job(platform: Platform, key: str) -> dict[str, Any]:
    client = platform.client(key=key)
    params = {
        "prompt": "a red fox",
        "width": 64,
        "height": 64,
        "num_inference_steps": 2,
        "seed": 3,
        "model": IMAGE_MODEL,
    }
    job_id = client.post("/api/v1/tasks", json={"type": "image", "params": params}).json()["id"]
    job = _wait(lambda: client.get(f"/api/v1/tasks/{job_id}").json(), lambda j: j["status"] in ("completed", "failed"))
    assert job["status"] == "completed", job
    return dict(job)


def upload(platform: Platform, key: str, tag: str) -> str:
    client = platform.client(key=key)
    response = client.post("/v1/files", files={"file": ("in.jsonl", _embedding_lines(tag))}, data={"purpose": "batch"})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def s3_keys(s3: S3Server, prefix: str) -> list[str]:
    fs = s3.filesystem()
    fs.invalidate_cache()
    path = f"{s3.bucket}/results/{prefix}"
    return sorted(fs.find(path)) if fs.exists(path) else []


@dataclass
class Made:
    old_job: dict[str, Any]
    new_job: dict[str, Any]
    old_file: str
    new_file: str
    old_batch: dict[str, Any]
    new_batch: dict[str, Any]


@pytest.fixture(scope="module")
def made(platform: Platform, tenants: dict[str, str]) -> Made:
    """Alice's jobs, uploads and batches, two of each: the "old" ones are aged by 20 days in the DB."""
    key = tenants["alice"]
    client = platform.client(key=key)
    batches = []
    for tag in ("old", "new"):
        created = client.post(
            "/v1/batches",
            json={"input_file_id": upload(platform, key, f"batch-{tag}"), "endpoint": "/v1/embeddings"},
        )
        assert created.status_code == 200, created.text
        batches.append(created.json()["id"])
    made = Made(
        old_job=image_job(platform, key),
        new_job=image_job(platform, key),
        old_file=upload(platform, key, "old"),
        new_file=upload(platform, key, "new"),
        old_batch={},
        new_batch={},
    )
    made.old_batch, made.new_batch = (
        _wait(lambda b=b: client.get(f"/v1/batches/{b}").json(), lambda b: b["status"] in ("completed", "failed"))
        for b in batches
    )
    assert made.old_batch["status"] == made.new_batch["status"] == "completed", (made.old_batch, made.new_batch)
    db = Database(platform.settings.gateway_db_url)
    try:
        with db.session() as s:
            for job_id in (made.old_job["id"], made.old_batch["id"]):
                job = s.get(Job, job_id)
                assert job is not None and job.finished_at is not None
                s.execute(
                    update(Job)
                    .where(Job.id == job_id)
                    .values(created_at=job.created_at - AGE, finished_at=job.finished_at - AGE)
                )
            for file_id in (made.old_file, made.old_batch["input_file_id"]):
                record = s.get(FileRecord, file_id)
                assert record is not None
                s.execute(update(FileRecord).where(FileRecord.id == file_id).values(created_at=record.created_at - AGE))
    finally:
        db.dispose()
    return made


def _purge_run(platform: Platform, now: datetime) -> tuple[FlowRun, list[dict[str, str]]]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.deployments import run_deployment

    from bitinglip.prefect_client import prefect_client_settings

    with prefect_client_settings(platform.settings):
        run = cast(
            FlowRun, run_deployment("purge-expired/purge-expired", parameters={"now": now.isoformat()}, timeout=240)
        )
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), key=ArtifactFilterKey(any_=["purge-expired"])
                )
            )
    assert len(artifacts) == 1, artifacts
    data = artifacts[0].data
    return run, list(json.loads(data) if isinstance(data, str) else cast(Any, data))


def test_scheduled_purge_removes_expired_rows_and_s3_objects(
    platform: Platform, tenants: dict[str, str], s3_server: S3Server, made: Made
) -> None:
    alice = platform.client(key=tenants["alice"])
    old_job_objects = s3_keys(s3_server, f"jobs/{tenants['alice_user']}/{made.old_job['id']}")
    old_batch_objects = s3_keys(s3_server, f"batches/{made.old_batch['id']}")
    assert len(old_job_objects) == 1 and len(old_batch_objects) == 1  # the PNG; output.jsonl (no errors)

    chunks = [Path(k).name.removesuffix(".jsonl") for k in s3_keys(s3_server, "batches/chunks")]
    assert chunks and all(s3_keys(s3_server, f"prefect/batch-chunk-{c}") for c in chunks)  # where the purge looks

    run, rows = _purge_run(platform, datetime.now(UTC) + AHEAD)
    assert run.state is not None and run.state.is_completed(), run.state
    report = {row["kind"]: row for row in rows}
    assert set(report) == {"jobs", "results", "files", "batches", "idempotency_keys"}
    assert (report["jobs"]["rows"], report["jobs"]["objects"]) == ("1", "1"), report
    assert (report["files"]["rows"], report["files"]["objects"]) == ("2", "2"), (
        report
    )  # an upload, the old batch's input
    assert (report["batches"]["rows"], report["batches"]["objects"]) == ("1", "1"), report
    assert int(report["batches"]["files"]) >= 1  # its output file (a batch run re-queued mid-way may record two)
    assert report["results"]["objects"] == "0"  # sync image URLs are younger than the cutoff

    # gone: rows (404 through the API) and their S3 objects
    envelope(alice.get(f"/api/v1/tasks/{made.old_job['id']}"), 404)
    envelope(alice.get(f"/v1/files/{made.old_file}"), 404)
    envelope(alice.get(f"/v1/batches/{made.old_batch['id']}"), 404)
    envelope(alice.get(f"/v1/files/{made.old_batch['output_file_id']}"), 404)
    envelope(alice.get(f"/v1/files/{made.old_batch['input_file_id']}"), 404)
    assert s3_keys(s3_server, f"jobs/{tenants['alice_user']}/{made.old_job['id']}") == []
    assert s3_keys(s3_server, f"batches/{made.old_batch['id']}") == []
    assert s3_keys(s3_server, f"files/{made.old_file}.jsonl") == []

    # kept: everything younger than the cutoff, bytes included
    assert alice.get(f"/api/v1/tasks/{made.new_job['id']}").json()["status"] == "completed"
    png = alice.get(made.new_job["result"]["images"][0]["url"].removeprefix(platform.gateway))
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert alice.get(f"/v1/files/{made.new_file}/content").content == _embedding_lines("new")
    assert alice.get(f"/v1/batches/{made.new_batch['id']}").json()["status"] == "completed"
    output = alice.get(f"/v1/files/{made.new_batch['output_file_id']}/content")
    assert output.status_code == 200 and len(output.text.splitlines()) == 2


def test_owner_deletes_own_job_and_file_at_once_others_get_404(
    platform: Platform, tenants: dict[str, str], s3_server: S3Server, made: Made
) -> None:
    alice, bob = platform.client(key=tenants["alice"]), platform.client(key=tenants["bob"])
    job = image_job(platform, tenants["alice"])
    prefix = f"jobs/{tenants['alice_user']}/{job['id']}"
    assert len(s3_keys(s3_server, prefix)) == 1

    envelope(bob.delete(f"/api/v1/tasks/{job['id']}", params={"purge": "true"}), 404)
    assert len(s3_keys(s3_server, prefix)) == 1  # someone else's request touched nothing
    deleted = alice.delete(f"/api/v1/tasks/{job['id']}", params={"purge": "true"})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": job["id"], "object": "job", "deleted": True, "objects": 1, "files": 0}
    envelope(alice.get(f"/api/v1/tasks/{job['id']}"), 404)
    envelope(alice.get(job["result"]["images"][0]["url"].removeprefix(platform.gateway)), 404)
    assert s3_keys(s3_server, prefix) == []

    file_id = upload(platform, tenants["alice"], "mine")
    assert len(s3_keys(s3_server, f"files/{file_id}.jsonl")) == 1
    envelope(bob.delete(f"/v1/files/{file_id}"), 404)
    assert alice.delete(f"/v1/files/{file_id}").json() == {"id": file_id, "object": "file", "deleted": True}
    envelope(alice.get(f"/v1/files/{file_id}"), 404)
    assert s3_keys(s3_server, f"files/{file_id}.jsonl") == []

    # a batch is a job too: deleting it takes its output file (record and bytes) with it
    batch = made.new_batch
    envelope(bob.delete(f"/api/v1/tasks/{batch['id']}", params={"purge": "true"}), 404)
    gone = alice.delete(f"/api/v1/tasks/{batch['id']}", params={"purge": "true"}).json()
    assert (gone["deleted"], gone["objects"]) == (True, 1) and gone["files"] >= 1, gone
    envelope(alice.get(f"/v1/batches/{batch['id']}"), 404)
    envelope(alice.get(f"/v1/files/{batch['output_file_id']}"), 404)
    assert s3_keys(s3_server, f"batches/{batch['id']}") == []


# -- store level, on a private SQLite DB and a private S3 prefix


@pytest.fixture
def stores(tmp_path: Path, s3_server: S3Server) -> Iterator[tuple[JobStore, ResultStore, FileStore]]:
    settings = Settings(
        home=tmp_path,
        results_url=f"s3://{s3_server.bucket}/retention-{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=s3_server.endpoint,
        s3_key="testing",
        s3_secret="testing",
    )
    db = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        yield JobStore(db, Cipher([])), ResultStore(settings), FileStore(db)
    finally:
        db.dispose()


def test_objects_without_rows_expire_by_age_with_their_cache_records(
    stores: tuple[JobStore, ResultStore, FileStore],
) -> None:
    jobs, results, files = stores
    results.put("images/alice/abc/0.png", b"png")
    results.put("batches/chunks/k1.jsonl", b"{}\n")
    results.put("prefect/batch-chunk-k1", b"cache record")
    now = datetime.now(UTC)
    assert retention.purge_results(results, now - timedelta(days=1)).objects == 0
    assert retention.purge_batches(jobs, results, files, now - timedelta(days=1)).objects == 0
    assert results.get("images/alice/abc/0.png") == b"png"

    assert retention.purge_results(results, now + timedelta(minutes=1)).objects == 1
    assert retention.purge_batches(jobs, results, files, now + timedelta(minutes=1)).objects == 1
    assert list(results.objects("images/")) == [] and list(results.objects("batches/")) == []
    assert list(results.objects("prefect/")) == []  # a later batch recomputes the chunk, never reads a hole


def test_inputs_of_unfinished_batches_outlive_retention(stores: tuple[JobStore, ResultStore, FileStore]) -> None:
    jobs, results, files = stores
    for file_id in ("file-busy", "file-idle"):
        files.create(
            owner="alice",
            purpose="batch",
            filename="in.jsonl",
            size=3,
            key=results.put(f"files/{file_id}.jsonl", b"{}\n"),
            line_count=1,
            file_id=file_id,
        )
    jobs.create(type_="batch", model="m", params={"input_file_id": "file-busy"}, priority=5, owner="alice")
    removed = retention.purge_files(jobs, results, files, datetime.now(UTC) + timedelta(minutes=1))
    assert (removed.rows, removed.objects) == (1, 1)
    assert files.get("file-busy").id == "file-busy" and results.get("files/file-busy.jsonl") == b"{}\n"


def test_a_running_job_is_not_deleted_a_queued_one_is_cancelled_first(
    stores: tuple[JobStore, ResultStore, FileStore],
) -> None:
    jobs, _, _ = stores
    running = jobs.create(type_="text", model="m", params={"prompt": "x"}, priority=5, owner="alice")
    jobs.claim_for_run([running.id], "worker-1")
    with pytest.raises(Conflict):
        jobs.settled(running.id, "alice")
    queued = jobs.create(type_="text", model="m", params={"prompt": "y"}, priority=5, owner="alice")
    assert jobs.settled(queued.id, "alice").status == "cancelled"
    assert jobs.delete_many([running.id, queued.id]) == 1
