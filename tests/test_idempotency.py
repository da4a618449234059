"""`Idempotency-Key` on POST /api/v1/tasks, /v1/batches and /v1/files, on the real platform (and the
official openai SDK): a repeat returns the first object with `Idempotent-Replayed: true`, another body
under the key is a 409 in the one error shape, requests racing with one key make exactly one object,
keys are each user's own, and malformed keys are a 400 that creates nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from bitinglip.db.session import Database
from bitinglip.idempotency import IdempotencyConflict, IdempotencyStore, digest
from tests.platform_harness import Platform
from tests.test_batches import chat_line, jsonl
from tests.test_gateway_text import assert_envelope

REPLAYED = "Idempotent-Replayed"


@pytest.fixture(scope="module")
def users(platform: Platform) -> Iterator[dict[str, str]]:
    """Two users' keys: alice and bob."""
    admin = platform.client()
    keys = {}
    for name in ("alice", "bob"):
        username = f"{name}-{uuid.uuid4().hex[:6]}"
        assert admin.post("/api/v1/users", json={"username": username}).status_code == 201
        keys[name] = admin.post("/api/v1/auth/keys", json={"username": username, "name": "idem"}).json()["key"]
    yield keys


def job_body(prompt: str = "Say hi.") -> dict[str, object]:
    return {"type": "text", "params": {"prompt": prompt, "max_tokens": 2}}


def total(client: httpx.Client) -> int:
    return int(client.get("/api/v1/tasks").json()["total"])


def test_a_repeated_job_request_returns_the_first_job(platform: Platform, users: dict[str, str]) -> None:
    alice = platform.client(users["alice"])
    key, before = f"job-{uuid.uuid4()}", total(alice)
    first = alice.post("/api/v1/tasks", json=job_body(), headers={"Idempotency-Key": key})
    assert first.status_code == 202 and REPLAYED not in first.headers
    # the same request, its JSON written differently (key order, spacing): the same job, same status code
    raw = '{ "params": {"max_tokens": 2, "prompt": "Say hi."},   "type": "text" }'
    again = alice.post(
        "/api/v1/tasks", content=raw, headers={"Idempotency-Key": key, "Content-Type": "application/json"}
    )
    assert again.status_code == 202 and again.headers[REPLAYED] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert total(alice) == before + 1

    other = alice.post("/api/v1/tasks", json=job_body("Say bye."), headers={"Idempotency-Key": key})
    error = assert_envelope(other, 409, "idempotency_key_reused")
    assert error["param"] == "Idempotency-Key"
    batch = alice.post(
        "/v1/batches", json={"input_file_id": "file-x", "endpoint": "/v1/embeddings"}, headers={"Idempotency-Key": key}
    )
    assert_envelope(batch, 409, "idempotency_key_reused")  # a key names one request, on one route
    assert total(alice) == before + 1


def test_racing_requests_with_one_key_make_one_job(platform: Platform, users: dict[str, str]) -> None:
    alice = platform.client(users["alice"])
    key, before = f"race-{uuid.uuid4()}", total(alice)

    def post(_: int) -> httpx.Response:
        with platform.client(users["alice"]) as client:
            return client.post("/api/v1/tasks", json=job_body("Race."), headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    assert {r.status_code for r in responses} == {202}, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(REPLAYED not in r.headers for r in responses) == 1  # one made it, the others repeat it
    assert total(alice) == before + 1


def test_keys_are_each_users_own(platform: Platform, users: dict[str, str]) -> None:
    alice, bob = platform.client(users["alice"]), platform.client(users["bob"])
    key = f"shared-{uuid.uuid4()}"
    mine = alice.post("/api/v1/tasks", json=job_body("Alice."), headers={"Idempotency-Key": key}).json()
    theirs = bob.post("/api/v1/tasks", json=job_body("Alice."), headers={"Idempotency-Key": key})
    assert theirs.status_code == 202 and REPLAYED not in theirs.headers  # bob's own new job, not alice's
    assert theirs.json()["id"] != mine["id"] and theirs.json()["owner"] != mine["owner"]
    other = bob.post("/api/v1/tasks", json=job_body("Bob."), headers={"Idempotency-Key": key})
    assert_envelope(other, 409, "idempotency_key_reused")  # against bob's own request under the key
    assert (
        alice.post("/api/v1/tasks", json=job_body("Alice."), headers={"Idempotency-Key": key}).json()["id"]
        == mine["id"]
    )


@pytest.mark.parametrize(
    "value",
    # (a lone space or DEL never leaves the client or passes the server's HTTP parser: not ours to test)
    [b"", b"a" * 256, b"k" * 5000, b"key with spaces", b"tab\tkey", b"\xe9t\xe9", "ключ".encode()],
)
def test_malformed_keys_are_refused(platform: Platform, users: dict[str, str], value: bytes) -> None:
    alice = platform.client(users["alice"])
    before = total(alice)
    response = alice.post("/api/v1/tasks", json=job_body(), headers=[(b"Idempotency-Key", value)])
    error = assert_envelope(response, 400)
    assert error["param"] == "Idempotency-Key"
    assert total(alice) == before


def test_two_key_headers_are_refused(platform: Platform, users: dict[str, str]) -> None:
    alice = platform.client(users["alice"])
    response = alice.post(
        "/api/v1/tasks", json=job_body(), headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    )
    assert assert_envelope(response, 400)["param"] == "Idempotency-Key"


def test_files_and_batches_through_the_openai_sdk(platform: Platform, users: dict[str, str]) -> None:
    sdk = platform.sdk(users["alice"])
    data = jsonl([chat_line("a", "hi")])
    key = {"Idempotency-Key": f"file-{uuid.uuid4()}"}
    first = sdk.files.with_raw_response.create(file=("in.jsonl", data), purpose="batch", extra_headers=key)
    again = sdk.files.with_raw_response.create(file=("renamed.jsonl", data), purpose="batch", extra_headers=key)
    assert REPLAYED not in first.headers and again.headers[REPLAYED] == "true"
    upload = first.parse()
    assert again.parse().id == upload.id
    with pytest.raises(openai.ConflictError) as conflict:  # other bytes under the key
        sdk.files.create(file=("in.jsonl", jsonl([chat_line("b", "yo")])), purpose="batch", extra_headers=key)
    assert conflict.value.code == "idempotency_key_reused"

    key = {"Idempotency-Key": f"batch-{uuid.uuid4()}"}
    made = sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", extra_headers=key
    )
    repeat = sdk.batches.with_raw_response.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", extra_headers=key
    )
    assert repeat.headers[REPLAYED] == "true" and repeat.parse().id == made.id
    with pytest.raises(openai.ConflictError):
        sdk.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"other": "request"},
            extra_headers=key,
        )
    ids = [b.id for b in sdk.batches.list(limit=100).data]
    assert ids.count(made.id) == 1


def test_racing_uploads_with_one_key_make_one_file(platform: Platform, users: dict[str, str]) -> None:
    data, key = jsonl([chat_line("r", "race")]), f"upload-{uuid.uuid4()}"

    def upload(_: int) -> httpx.Response:
        with platform.client(users["bob"]) as client:
            files = {"file": ("in.jsonl", data), "purpose": (None, "batch")}
            return client.post("/v1/files", files=files, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(upload, range(6)))
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    listed = platform.client(users["bob"]).get("/v1/files", params={"limit": 10_000}).json()["data"]
    assert sum(f["id"] == responses[0].json()["id"] for f in listed) == 1


def test_keys_lapse_and_are_purged(tmp_path: Path) -> None:
    """The store alone, on a real database: a lapsed key is free for a new request; purging removes it."""
    db = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        lapsing, lasting = IdempotencyStore(db, 0), IdempotencyStore(db, 3600)
        claim = lapsing.claim("alice", "k1", "POST /v1/files", digest("POST /v1/files", {"purpose": "batch"}, b"x"))
        with db.session() as s:
            claim.record(s, "file-1")
        assert lapsing.made(claim) is None  # lapsed at once: as if never used
        other = lasting.claim("alice", "k1", "POST /v1/files", digest("POST /v1/files", {"purpose": "batch"}, b"y"))
        with db.session() as s:
            other.record(s, "file-2")  # takes the lapsed key's place
        assert lasting.made(other) == "file-2"
        with pytest.raises(IdempotencyConflict):
            lasting.made(claim)
        assert lasting.purge(datetime.now(UTC) - timedelta(hours=1)) == 0
        assert lasting.purge(datetime.now(UTC) + timedelta(seconds=1)) == 1
        assert lasting.made(other) is None
    finally:
        db.dispose()
