"""Results encrypted at rest: a platform of its own started with BITINGLIP_RESULTS_ENCRYPTION_KEYS
(results on the moto S3 server, the gateway DB in SQLite). Images, job payloads, uploads and batch
outputs lie on S3 and in the DB as ciphertext and come back as plaintext through the API only; after a
rotation (new key first, old key second) old objects still read, the `reencrypt-results` deployment
rewrites them under the new key, and the old key can then go."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.fernet import Fernet
from prefect.client.schemas.objects import FlowRun
from pydantic import SecretStr
from sqlalchemy import text

from bitinglip.config import Settings
from bitinglip.crypto import MARKER, Cipher, SealedDataError, new_key
from bitinglip.db.session import Database
from bitinglip.jobs.store import JobStore
from bitinglip.models.store import ModelStore
from bitinglip.results import ResultStore
from tests.conftest import EMBEDDING_MODEL, IMAGE_MODEL, TEXT_MODEL, S3Server, home_with_store, result_path
from tests.platform_harness import Platform, platform_settings

SECRET = "pineapple-7731"  # appears in a prompt; must never appear in the DB or on S3
PREFIX = "encrypted"
KEYS = "BITINGLIP_RESULTS_ENCRYPTION_KEYS"


# -- the cipher and the stores, in process


def test_cipher_seals_opens_and_rotates() -> None:
    old, new = new_key(), new_key()
    sealed = Cipher([old]).seal(b"result")
    assert sealed.startswith(MARKER) and b"result" not in sealed
    assert Cipher([new, old]).open(sealed) == b"result"  # rotation: the old key still decrypts
    resealed = Cipher([new, old]).reseal(sealed)
    assert resealed is not None and Cipher([new]).open(resealed) == b"result"
    assert Cipher([new, old]).reseal(resealed) is None  # already under the newest key
    assert Cipher([]).seal(b"plain") == b"plain" and Cipher([old]).open(b"plain") == b"plain"  # no keys: unchanged
    for wrong in (Cipher([]), Cipher([new])):
        with pytest.raises(SealedDataError):  # never ciphertext handed out as the result
            wrong.open(sealed)
    column = Cipher([old]).seal_json({"prompt": SECRET})
    assert SECRET not in json.dumps(column) and Cipher([new, old]).open_json(column) == {"prompt": SECRET}


def test_job_rows_hold_ciphertext_and_read_as_plaintext(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        key = new_key()
        jobs = JobStore(db, Cipher([key]))
        job = jobs.create(type_="text", model="m", params={"prompt": SECRET}, priority=5, owner="alice")
        assert job.params == {"prompt": SECRET}
        jobs.claim_for_run([job.id], "w")
        jobs.finish_many([(job.id, {"status": "completed", "result": {"text": f"{SECRET}!"}})], "w")
        assert SECRET not in _raw_row(db, job.id)
        assert (jobs.get(job.id).params, jobs.get(job.id).result) == ({"prompt": SECRET}, {"text": f"{SECRET}!"})
        with pytest.raises(SealedDataError):
            JobStore(db, Cipher([new_key()])).get(job.id)
    finally:
        db.dispose()


def _raw_row(db: Database, job_id: str) -> str:
    with db.engine.connect() as conn:
        params, result = conn.execute(text("SELECT params, result FROM jobs WHERE id = :id"), {"id": job_id}).one()
    raw = f"{params} {result}"
    assert '"$sealed"' in str(params)
    return raw


# -- end to end


@pytest.fixture(scope="module")
def keys() -> list[str]:
    return [new_key()]


@pytest.fixture(scope="module")
def sealed_platform(
    tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore, s3_server: S3Server, keys: list[str]
) -> Iterator[Platform]:
    """Prefect, one model worker (image and text models), gateway, both pool workers; results on S3."""
    home = home_with_store(tmp_path_factory.mktemp("sealed-home"), model_store)
    env = {
        **s3_server.env,
        "BITINGLIP_RESULTS_URL": f"s3://{s3_server.bucket}/{PREFIX}",
        "BITINGLIP_WORKER_MODELS": json.dumps([IMAGE_MODEL, TEXT_MODEL]),
        KEYS: json.dumps(keys),
    }
    running = Platform(platform_settings(home), env_overrides=env)
    try:
        running.start_all(timeout=180)
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def stored(sealed_platform: Platform, s3_server: S3Server) -> dict[str, Any]:
    """One of everything: a sync image URL, an image job, a text job, an upload and a batch."""
    client = sealed_platform.client()
    found: dict[str, Any] = {}
    image = client.post(
        "/api/v1/inference/image",
        json={
            "prompt": "a red fox",
            "width": 64,
            "height": 64,
            "num_inference_steps": 2,
            "seed": 1,
            "response_format": "url",
        },
    )
    assert image.status_code == 200, image.text
    found["image_url"] = image.json()["data"][0]["url"].removeprefix(sealed_platform.gateway)
    submitted = [
        client.post("/api/v1/tasks", json={"type": t, "params": p}).json()["id"]
        for t, p in (
            ("image", {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 2}),
            ("text", {"prompt": f"Repeat: {SECRET}", "max_tokens": 4, "temperature": 0}),
        )
    ]
    found["image_job"], found["text_job"] = (_wait(client, f"/api/v1/tasks/{j}", "status") for j in submitted)
    lines = [
        {
            "custom_id": f"{SECRET}-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": EMBEDDING_MODEL, "input": t},
        }
        for i, t in enumerate(["a cat", "a dog"])
    ]
    found["input"] = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.post("/v1/files", files={"file": ("in.jsonl", found["input"])}, data={"purpose": "batch"}).json()
    found["file"] = upload["id"]
    batch = client.post("/v1/batches", json={"input_file_id": upload["id"], "endpoint": "/v1/embeddings"}).json()
    found["batch"] = _wait(client, f"/v1/batches/{batch['id']}", "status")
    return found


def _wait(client: Any, path: str, field: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (body := client.get(path).json())[field] not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, body
        time.sleep(0.3)
    assert body[field] == "completed", body
    return dict(body)


def _objects(s3: S3Server) -> dict[str, bytes]:
    """Every object the platform stored under its prefix, except Prefect's own cache records."""
    fs = s3.filesystem()
    root = f"{s3.bucket}/{PREFIX}/"
    return {p.removeprefix(root): fs.cat_file(p) for p in fs.find(root) if not p.startswith(f"{root}prefect/")}


def test_results_and_payloads_are_ciphertext_at_rest_plaintext_through_the_api(
    sealed_platform: Platform, s3_server: S3Server, stored: dict[str, Any]
) -> None:
    client = sealed_platform.client()
    objects = _objects(s3_server)
    kinds = {key.split("/")[0] for key in objects}
    assert {"images", "jobs", "files", "batches"} <= kinds, sorted(objects)
    for key, data in objects.items():
        assert data.startswith(MARKER), key  # every stored result is sealed ...
        assert b"\x89PNG" not in data and SECRET.encode() not in data and b"custom_id" not in data, key

    # ... and the API hands back plaintext
    for path in (stored["image_url"], stored["image_job"]["result"]["images"][0]["url"]):
        png = client.get(path.removeprefix(sealed_platform.gateway))
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), path
    text_job = client.get(f"/api/v1/tasks/{stored['text_job']['id']}").json()
    assert text_job["params"]["prompt"] == f"Repeat: {SECRET}" and text_job["result"]["text"]
    assert client.get(f"/v1/files/{stored['file']}/content").content == stored["input"]
    output = [
        json.loads(line)
        for line in client.get(f"/v1/files/{stored['batch']['output_file_id']}/content").text.splitlines()
    ]
    assert sorted(o["custom_id"] for o in output) == [
        f"{SECRET}-0",
        f"{SECRET}-1",
    ]  # the flow run read and wrote sealed

    db = Database(sealed_platform.settings.gateway_db_url)
    try:
        for job_id in (stored["text_job"]["id"], stored["image_job"]["id"], stored["batch"]["id"]):
            assert SECRET not in _raw_row(db, job_id)
    finally:
        db.dispose()


def test_rotation_old_key_reads_reencrypt_moves_everything_to_the_new_key(
    sealed_platform: Platform, s3_server: S3Server, stored: dict[str, Any], keys: list[str]
) -> None:
    from prefect.deployments import run_deployment

    from bitinglip.prefect_client import prefect_client_settings

    old, new = keys[0], new_key()
    _restart(sealed_platform, [new, old])  # step 1: prepend the new key, restart
    client = sealed_platform.client()
    assert client.get(stored["image_url"]).content.startswith(b"\x89PNG")  # old objects still read
    assert client.get(f"/api/v1/tasks/{stored['text_job']['id']}").json()["params"]["prompt"] == f"Repeat: {SECRET}"

    with prefect_client_settings(sealed_platform.settings):  # step 2: re-encrypt under the new key
        run = cast(FlowRun, run_deployment("reencrypt-results/reencrypt-results", timeout=240))
    assert run.state is not None and run.state.is_completed(), run.state
    only_new = Fernet(new.encode())
    for key, data in _objects(s3_server).items():
        only_new.decrypt(data[len(MARKER) :])  # raises unless sealed under the new key
        assert key
    settings = Settings(results_encryption_keys=[SecretStr(new)])
    db = Database(sealed_platform.settings.gateway_db_url)
    try:
        job = JobStore(db, Cipher.from_settings(settings)).get(stored["text_job"]["id"])
        assert job.params["prompt"] == f"Repeat: {SECRET}" and job.result
    finally:
        db.dispose()

    _restart(sealed_platform, [new])  # step 3: drop the old key
    client = sealed_platform.client()
    assert client.get(stored["image_url"]).content.startswith(b"\x89PNG")
    assert client.get(f"/v1/files/{stored['file']}/content").content == stored["input"]
    assert client.get(f"/api/v1/tasks/{stored['batch']['id']}").json()["status"] == "completed"
    store = ResultStore(
        Settings(
            results_url=f"s3://{s3_server.bucket}/{PREFIX}",
            s3_endpoint_url=s3_server.endpoint,
            s3_key="testing",
            s3_secret="testing",
            results_encryption_keys=[SecretStr(old)],
        )
    )
    with pytest.raises(SealedDataError):  # the old key alone opens nothing any more
        store.get(result_path(stored["image_url"]))


def _restart(platform: Platform, keys: list[str]) -> None:
    """New key list for the gateway and the cpu pool worker (whose flow runs re-encrypt)."""
    platform.sup.env[KEYS] = json.dumps(keys)
    platform.stop("gateway")
    platform.start_gateway()
    platform.stop("pool-worker-cpu")
    platform.start_pool_worker("cpu")
    platform.wait_ready(timeout=60)
