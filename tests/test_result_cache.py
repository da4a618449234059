"""The result cache through the real gateway and worker: a repeated deterministic request is answered
without the engine, for its own user only, and every way out of it (non-deterministic sampling,
Cache-Control, a withdrawn model) is honoured."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.platform_harness import Platform

TEXT_MODEL = "smollm2-135m-instruct"


def _chat(word: str, **extra: Any) -> dict[str, Any]:
    """A request no other test sends (a fresh word in it), so the first answer is always a miss."""
    return {"messages": [{"role": "user", "content": f"Name a colour. ({word})"}], "max_tokens": 6, **extra}


@pytest.fixture
def user_key(platform: Platform) -> Iterator[str]:
    admin = platform.client()
    username = f"cache-{uuid.uuid4().hex[:6]}"
    assert admin.post("/api/v1/users", json={"username": username}).status_code == 201
    yield admin.post("/api/v1/auth/keys", json={"username": username, "name": "t"}).json()["key"]
    admin.patch(f"/api/v1/users/{username}", json={"disabled": True})


def _text(client: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    response = client.post("/api/v1/inference/text", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


def test_a_repeated_greedy_request_is_replayed_without_the_engine(platform: Platform) -> None:
    client, body = platform.client(), _chat(uuid.uuid4().hex, temperature=0)
    first = _text(client, body)
    assert first.headers["x-cache"] == "miss" and first.json()["worker"] != "cache"
    again = _text(client, body)
    assert again.headers["x-cache"] == "hit"
    replay, original = again.json(), first.json()
    assert replay["text"] == original["text"] and replay["usage"] == original["usage"]
    assert replay["worker"] == "cache"  # no worker answered it
    assert replay["timings"]["total_seconds"] == 0 and replay["timings"]["batch_size"] == 0
    # what shapes the answer is part of the request's identity: one token more is another request
    assert _text(client, {**body, "max_tokens": 7}).headers["x-cache"] == "miss"


def test_seeded_sampling_is_cached_per_seed_and_unseeded_sampling_never(platform: Platform) -> None:
    client, word = platform.client(), uuid.uuid4().hex
    seeded = _chat(word, temperature=0.9, seed=7)
    assert _text(client, seeded).headers["x-cache"] == "miss"
    assert _text(client, seeded).headers["x-cache"] == "hit"
    assert _text(client, {**seeded, "seed": 8}).headers["x-cache"] == "miss"
    sampled = _chat(word, temperature=0.9)
    assert [_text(client, sampled).headers["x-cache"] for _ in range(2)] == ["bypass", "bypass"]


def test_cache_control_opts_out_and_odd_values_change_nothing(platform: Platform) -> None:
    client, body = platform.client(), _chat(uuid.uuid4().hex, temperature=0)
    # no-store: neither read nor written, so the next plain request is still a miss
    assert _text(client, body, **{"Cache-Control": "no-store"}).headers["x-cache"] == "bypass"
    assert _text(client, body).headers["x-cache"] == "miss"
    # no-cache: answered afresh (and stored again); directives are case-insensitive, among others
    assert _text(client, body, **{"Cache-Control": "max-age=0, No-Cache"}).headers["x-cache"] == "bypass"
    for hostile in ("no-store-please", "no-cache=" + "x" * 4000, ",,,;;=", "private, max-age=-1"):
        response = client.post("/api/v1/inference/text", json=body, headers={"Cache-Control": hostile})
        assert response.status_code == 200, response.text  # an unknown directive is ignored, not an error
    assert response.headers["x-cache"] == "hit"


def test_one_users_answer_is_never_replayed_to_another(platform: Platform, user_key: str) -> None:
    body = _chat(uuid.uuid4().hex, temperature=0)
    admin, user = platform.client(), platform.client(key=user_key)
    assert _text(admin, body).headers["x-cache"] == "miss"
    assert _text(admin, body).headers["x-cache"] == "hit"
    assert _text(user, body).headers["x-cache"] == "miss"  # same request, same model, another user
    assert _text(user, body).headers["x-cache"] == "hit"


def test_a_model_withdrawn_from_a_user_is_not_served_from_their_cache(platform: Platform, user_key: str) -> None:
    admin, user, body = platform.client(), platform.client(key=user_key), _chat(uuid.uuid4().hex, temperature=0)
    for expected in ("miss", "hit"):
        assert _text(user, body).headers["x-cache"] == expected
    rule = {"restricted": True, "users": [platform.settings.admin_username]}
    assert admin.put(f"/api/v1/models/{TEXT_MODEL}/access", json=rule).status_code == 200
    try:
        refused = user.post("/api/v1/inference/text", json=body)
        assert refused.status_code == 404, refused.text
    finally:
        assert admin.put(f"/api/v1/models/{TEXT_MODEL}/access", json={"restricted": False}).status_code == 200


def test_embeddings_are_cached_and_the_openai_sdk_reads_and_opts_out(platform: Platform) -> None:
    client, texts = platform.client(), [f"cache check {uuid.uuid4().hex}", "second text"]
    first = client.post("/api/v1/inference/embeddings", json={"input": texts})
    again = client.post("/api/v1/inference/embeddings", json={"input": texts})
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert again.json()["data"] == first.json()["data"] and again.json()["worker"] == "cache"

    sdk = platform.sdk()
    messages = _chat(uuid.uuid4().hex)["messages"]
    calls = [
        sdk.chat.completions.with_raw_response.create(model=TEXT_MODEL, messages=messages, max_tokens=6, temperature=0)
        for _ in range(2)
    ]
    assert [c.headers["x-cache"] for c in calls] == ["miss", "hit"]
    assert calls[0].parse().choices[0].message.content == calls[1].parse().choices[0].message.content
    fresh = sdk.chat.completions.with_raw_response.create(
        model=TEXT_MODEL,
        messages=messages,
        max_tokens=6,
        temperature=0,
        extra_headers={"Cache-Control": "no-cache"},
    )
    assert fresh.headers["x-cache"] == "bypass"
    embedded = sdk.embeddings.with_raw_response.create(model="all-minilm-l6-v2", input=texts)
    assert embedded.headers["x-cache"] == "hit"  # the same texts to the same model: the same answer, either route
