"""Model access control against the running platform: an admin restricts models to users or API
keys; to anyone else such a model is exactly as unknown as one never installed (the same 404) on every
route: REST and OpenAI inference (sync and streaming), async job acceptance, batch lines, both model
lists and the detail. The granted user and admins keep working; lifting the restriction restores it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bitinglip.db.session import Database
from bitinglip.db.tables import ApiKey, User
from bitinglip.models import access
from tests.conftest import EMBEDDING_MODEL, IMAGE_MODEL, TEXT_MODEL
from tests.platform_harness import Platform
from tests.security.conftest import envelope
from tests.test_batches import jsonl, parse, wait_batch
from tests.test_jobs import wait_done

UNKNOWN = "no-such-model"
RESTRICTED = (TEXT_MODEL, IMAGE_MODEL, EMBEDDING_MODEL)


def key_id(key: str) -> str:
    return key.split("-")[1]


def _set(platform: Platform, model: str, **rule: Any) -> dict[str, Any]:
    response = platform.client().put(f"/api/v1/models/{model}/access", json=rule)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def keys(platform: Platform, tenants: dict[str, str]) -> dict[str, str]:
    """The tenants' keys, plus a second key of alice's (user grants cover it, key grants do not)."""
    created = platform.client().post("/api/v1/auth/keys", json={"username": tenants["alice_user"], "name": "two"})
    assert created.status_code == 201, created.text
    return {**tenants, "alice2": created.json()["key"]}


@pytest.fixture(scope="module")
def restricted(platform: Platform, keys: dict[str, str]) -> Iterator[dict[str, str]]:
    """Text and image models for the user alice; the embedding model for alice's first key only."""
    _set(platform, TEXT_MODEL, restricted=True, users=[keys["alice_user"]])
    _set(platform, IMAGE_MODEL, restricted=True, users=[keys["alice_user"]])
    _set(platform, EMBEDDING_MODEL, restricted=True, keys=[key_id(keys["alice"])])
    try:
        yield keys
    finally:
        for model in RESTRICTED:
            _set(platform, model, restricted=False)


def same_as_unknown(withheld: httpx.Response, unknown: httpx.Response, model: str) -> None:
    """The answer for a withheld model is the answer for a missing one, name aside; the names it
    suggests instead (closest to what was typed) are only ever models the caller may use."""
    hidden = envelope(withheld, 404, "not_found_error")
    missing = envelope(unknown, 404, "not_found_error")
    assert hidden["code"] == missing["code"] == "model_not_found", (hidden, missing)
    assert hidden["param"] == missing["param"]
    said, _, suggested = hidden["message"].partition("installed")
    assert said.replace(model, "X") == missing["message"].partition("installed")[0].replace(UNKNOWN, "X"), (
        hidden,
        missing,
    )
    assert not set(re.findall(r"`([^`@]+)", suggested)) & set(RESTRICTED), hidden


def test_access_rules_are_admin_only_and_validated(platform: Platform, tenants: dict[str, str]) -> None:
    bob = platform.client(key=tenants["bob"])
    envelope(bob.get(f"/api/v1/models/{TEXT_MODEL}/access"), 403, "permission_error")
    envelope(bob.put(f"/api/v1/models/{TEXT_MODEL}/access", json={"restricted": False}), 403, "permission_error")
    admin = platform.client()
    rule = admin.get(f"/api/v1/models/{TEXT_MODEL}/access").json()
    assert rule["restricted"] is False and rule["users"] == [] and rule["keys"] == []  # open by default
    bad = admin.put(f"/api/v1/models/{TEXT_MODEL}/access", json={"restricted": True, "users": ["nobody-xyz"]})
    assert envelope(bad, 400)["param"] == "users"
    bad = admin.put(f"/api/v1/models/{TEXT_MODEL}/access", json={"restricted": True, "keys": ["000000000000"]})
    assert envelope(bad, 400)["param"] == "keys"
    envelope(admin.put(f"/api/v1/models/{TEXT_MODEL}@q4_1/access", json={"restricted": True}), 400)
    assert admin.get(f"/api/v1/models/{TEXT_MODEL}/access").json()["restricted"] is False  # nothing half-applied


def test_a_withheld_model_is_unknown_on_every_inference_route(platform: Platform, restricted: dict[str, str]) -> None:
    bob = platform.client(key=restricted["bob"])

    def both(path: str, model: str, body: dict[str, Any]) -> None:
        same_as_unknown(
            bob.post(path, json={**body, "model": model}), bob.post(path, json={**body, "model": UNKNOWN}), model
        )

    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for stream in (False, True):
        both("/api/v1/inference/text", TEXT_MODEL, {"prompt": "hi", "max_tokens": 2, "stream": stream})
        both("/v1/chat/completions", TEXT_MODEL, {**chat, "stream": stream})
        both("/v1/completions", TEXT_MODEL, {"prompt": "hi", "max_tokens": 2, "stream": stream})
    both("/api/v1/inference/text", f"{TEXT_MODEL}@q4_1", {"prompt": "hi", "max_tokens": 2})
    envelope(bob.post("/api/v1/inference/text", json={"prompt": "hi", "max_tokens": 2}), 404)  # the default model
    both("/api/v1/inference/image", IMAGE_MODEL, {"prompt": "x", "width": 64, "height": 64})
    both("/v1/images/generations", IMAGE_MODEL, {"prompt": "x", "size": "64x64"})
    both("/api/v1/inference/embeddings", EMBEDDING_MODEL, {"input": "x"})
    both("/v1/embeddings", EMBEDDING_MODEL, {"input": "x"})
    with pytest.raises(openai.NotFoundError) as raised:
        platform.sdk(key=restricted["bob"]).chat.completions.create(
            model=TEXT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert raised.value.code == "model_not_found"


def test_a_withheld_model_is_unknown_to_async_jobs(platform: Platform, restricted: dict[str, str]) -> None:
    bob = platform.client(key=restricted["bob"])
    for type_, model, params in (
        ("text", TEXT_MODEL, {"prompt": "hi", "max_tokens": 1}),
        ("image", IMAGE_MODEL, {"prompt": "x", "width": 64, "height": 64}),
        ("embedding", EMBEDDING_MODEL, {"input": "x"}),
    ):
        withheld = bob.post("/api/v1/tasks", json={"type": type_, "params": {**params, "model": model}})
        unknown = bob.post("/api/v1/tasks", json={"type": type_, "params": {**params, "model": UNKNOWN}})
        same_as_unknown(withheld, unknown, model)
    for type_ in ("text", "image", "embedding"):  # nothing was accepted
        assert bob.get("/api/v1/tasks", params={"type": type_}).json()["total"] == 0
    alice = platform.client(key=restricted["alice"])
    accepted = alice.post("/api/v1/tasks", json={"type": "text", "params": {"prompt": "hi", "max_tokens": 1}})
    assert accepted.status_code == 202, accepted.text
    assert wait_done(alice, accepted.json()["id"])[0]["status"] == "completed"


def test_a_withheld_model_is_missing_from_both_lists_and_the_detail(
    platform: Platform, restricted: dict[str, str]
) -> None:
    bob = platform.client(key=restricted["bob"])
    names = {m["name"] for m in bob.get("/api/v1/models").json()["data"]}
    assert not names & set(RESTRICTED), names
    assert not {m.id for m in platform.sdk(key=restricted["bob"]).models.list()} & set(RESTRICTED)
    for model in (TEXT_MODEL, f"{TEXT_MODEL}@q4_1", EMBEDDING_MODEL):
        same_as_unknown(bob.get(f"/api/v1/models/{model}"), bob.get(f"/api/v1/models/{UNKNOWN}"), model)
    for who, expected in (("alice", set(RESTRICTED)), ("alice2", {TEXT_MODEL, IMAGE_MODEL})):
        listed = {m["name"] for m in platform.client(key=restricted[who]).get("/api/v1/models").json()["data"]}
        assert listed & set(RESTRICTED) == expected, (who, listed)
        assert {m.id for m in platform.sdk(key=restricted[who]).models.list()} & set(RESTRICTED) == expected
    assert set(RESTRICTED) <= {m["name"] for m in platform.client().get("/api/v1/models").json()["data"]}


def test_the_granted_user_key_and_admins_keep_working(platform: Platform, restricted: dict[str, str]) -> None:
    for key in (restricted["alice"], restricted["alice2"], None):
        client = platform.client(key=key)
        reply = client.post("/api/v1/inference/text", json={"prompt": "hi", "max_tokens": 2, "temperature": 0})
        assert reply.status_code == 200, reply.text
    chat = platform.sdk(key=restricted["alice"]).chat.completions.create(
        model=TEXT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert chat.choices[0].message.content is not None
    for key in (restricted["alice"], None):  # the key grant, and an admin
        vectors = platform.sdk(key=key).embeddings.create(model=EMBEDDING_MODEL, input=["hello"])
        assert len(vectors.data[0].embedding) == 384
    other_key = platform.client(key=restricted["alice2"])  # alice, but not the granted key
    envelope(other_key.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "x"}), 404)


def _chat_line(custom_id: str, model: str) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _batch(platform: Platform, key: str, lines: list[dict[str, Any]]) -> tuple[Any, openai.OpenAI]:
    sdk = platform.sdk(key=key)
    upload = sdk.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    batch = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    return wait_batch(sdk, batch.id), sdk


def test_a_withheld_model_fails_its_batch_lines_as_unknown(platform: Platform, restricted: dict[str, str]) -> None:
    batch, sdk = _batch(
        platform, restricted["bob"], [_chat_line("withheld", TEXT_MODEL), _chat_line("unknown", UNKNOWN)]
    )
    assert batch.status == "completed" and batch.request_counts.failed == 2, batch
    errors = {line["custom_id"]: line for line in parse(sdk.files.content(batch.error_file_id).text)}
    withheld, unknown = errors["withheld"], errors["unknown"]
    assert withheld["error"]["code"] == unknown["error"]["code"] == "model_not_found"

    def shape(line: dict[str, Any], model: str) -> str:
        response = {**line["response"], "request_id": ""}
        same = {**line, "id": "", "custom_id": "", "response": response}
        return re.sub(r"line \d+", "line N", json.dumps(same)).replace(model, "X")

    assert shape(withheld, TEXT_MODEL) == shape(unknown, UNKNOWN)
    granted, sdk = _batch(platform, restricted["alice"], [_chat_line("granted", TEXT_MODEL)])
    assert granted.status == "completed" and granted.request_counts.completed == 1, granted
    assert parse(sdk.files.content(granted.output_file_id).text)[0]["response"]["status_code"] == 200


def test_lifting_the_restriction_restores_access(platform: Platform, restricted: dict[str, str]) -> None:
    bob = platform.client(key=restricted["bob"])
    envelope(bob.post("/api/v1/inference/text", json={"prompt": "hi", "max_tokens": 1}), 404)
    rule = _set(platform, TEXT_MODEL, restricted=False)
    assert rule["restricted"] is False and rule["updated_by"]
    reply = bob.post("/api/v1/inference/text", json={"model": TEXT_MODEL, "prompt": "hi", "max_tokens": 1})
    assert reply.status_code == 200, reply.text
    assert TEXT_MODEL in {m["name"] for m in bob.get("/api/v1/models").json()["data"]}
    assert TEXT_MODEL in {m.id for m in platform.sdk(key=restricted["bob"]).models.list()}
    assert bob.get(f"/api/v1/models/{TEXT_MODEL}").status_code == 200


def test_access_changes_are_audited(platform: Platform, restricted: dict[str, str]) -> None:
    deadline = time.monotonic() + 10
    while True:
        log = (platform.settings.home_dir / "logs" / "gateway.log").read_text()
        found = [line for line in log.splitlines() if "model_access_set" in line and "audit=True" in line]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert any(restricted["alice_user"] in line for line in found), found


def test_batch_owners_are_judged_as_the_tables_say_at_run_time(tmp_path: Path) -> None:
    """What the batch flow run checks each line with: the owner's role and grants now, and a key's
    grants only while the key is live and the owner's."""
    db = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
    with db.session() as s:
        s.add_all([User(username="carol"), User(username="root", role="admin"), User(username="dave")])
        s.add_all([ApiKey(id="aaaaaaaaaaaa", username="carol", name="k", secret_hash="x" * 64)])
        s.add_all([ApiKey(id="bbbbbbbbbbbb", username="dave", name="k", secret_hash="x" * 64)])
    access.set_rule(db, "m", True, ["dave"], ["aaaaaaaaaaaa"], actor="root")
    assert access.job_access(db, "carol", "aaaaaaaaaaaa")("m")  # the granted key
    assert not access.job_access(db, "carol", None)("m")  # carol herself is not granted
    assert not access.job_access(db, "carol", "bbbbbbbbbbbb")("m")  # someone else's key
    assert access.job_access(db, "root", None)("m") and access.job_access(db, "dave", None)("m")
    assert not access.job_access(db, "ghost", None)("m")
    assert access.job_access(db, "carol", None)("open-model")  # no rule: open
    with db.session() as s:
        key = s.get(ApiKey, "aaaaaaaaaaaa")
        assert key is not None
        key.revoked_at = datetime.now(UTC)
        dave = s.get(User, "dave")
        assert dave is not None
        dave.disabled = True
    assert not access.job_access(db, "carol", "aaaaaaaaaaaa")("m")
    assert not access.job_access(db, "dave", None)("m")
    db.dispose()
