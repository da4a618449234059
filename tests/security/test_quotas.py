"""Quotas and rate limits against the running platform: they belong to the user (every key and login
token shares them; a key can only narrow them; admins set them), concurrent requests cannot overshoot
a quota, a dropped stream and an async job are charged, and nobody can mint keys without end."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.conftest import TEXT_MODEL
from tests.platform_harness import Platform
from tests.security.conftest import envelope

PASSWORD = "correct horse battery staple"


def new_user(platform: Platform, *, password: str | None = None, **limits: int) -> tuple[str, str]:
    """A fresh user (with `limits` set by the admin) and a key of theirs."""
    admin = platform.client()
    username = f"q-{uuid.uuid4().hex[:8]}"
    body: dict[str, Any] = {"username": username} | ({"password": password} if password else {})
    assert admin.post("/api/v1/users", json=body).status_code == 201
    if limits:
        updated = admin.patch(f"/api/v1/users/{username}", json={"limits": limits})
        assert updated.status_code == 200, updated.text
        assert {k: v for k, v in updated.json()["limits"].items() if v is not None} == limits
    created = admin.post("/api/v1/auth/keys", json={"username": username})
    assert created.status_code == 201, created.text
    return username, created.json()["key"]


def usage(platform: Platform, key: str) -> dict[str, Any]:
    response = platform.client(key=key).get("/api/v1/usage")
    assert response.status_code == 200, response.text
    return dict(response.json())


def settled_usage(platform: Platform, key: str, timeout: float = 30) -> dict[str, Any]:
    """The caller's usage once nothing is held any more (settling a dropped stream is asynchronous)."""
    deadline = time.monotonic() + timeout
    while (now := usage(platform, key))["tokens"]["reserved"] or now["images"]["reserved"]:
        assert time.monotonic() < deadline, (now["tokens"], now["images"])
        time.sleep(0.2)
    return now


def completion(prompt: str = "Hi", max_tokens: int = 4) -> dict[str, Any]:
    return {"model": TEXT_MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}


def test_concurrent_requests_never_overshoot_the_quota(platform: Platform) -> None:
    _, key = new_user(platform, tokens_per_day=30)

    def one(_: int) -> httpx.Response:
        with platform.client(key=key) as client:
            return client.post("/v1/completions", json=completion())

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    served = [r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200]
    refused = [envelope(r, 429, "rate_limit_error") for r in responses if r.status_code != 200]
    assert served and refused, [r.status_code for r in responses]
    assert all(e["code"] == "tokens_quota_exceeded" for e in refused)
    assert sum(served) <= 30, served  # the quota, not the quota plus what was in flight
    tokens = settled_usage(platform, key)["tokens"]
    assert tokens["used"] == sum(served) and tokens["limit"] == 30


def test_keys_and_login_tokens_share_the_users_quota(platform: Platform) -> None:
    username, first = new_user(platform, password=PASSWORD, tokens_per_day=40)
    second = platform.client(key=first).post("/api/v1/auth/keys", json={"name": "second"}).json()["key"]
    login = platform.client(key="").post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    token = login.json()["access_token"]
    clients = [platform.client(key=k) for k in (first, second, token)]

    served = []
    for client in clients:  # one request each: 14 tokens reserved, ~5 used
        response = client.post("/v1/completions", json=completion())
        assert response.status_code == 200, response.text
        served.append(response.json()["usage"]["total_tokens"])
    views = [settled_usage(platform, k) for k in (first, second, token)]
    assert {v["tokens"]["used"] for v in views} == {sum(served)}  # one count, whoever asks

    while (response := clients[0].post("/v1/completions", json=completion())).status_code == 200:
        served.append(response.json()["usage"]["total_tokens"])
    assert envelope(response, 429)["code"] == "tokens_quota_exceeded"
    assert int(response.headers["Retry-After"]) >= 1 and response.headers["X-RateLimit-Limit"] == "40"
    for client in clients[1:]:  # the other key and the login token are out of quota too
        assert envelope(client.post("/v1/completions", json=completion()), 429)["code"] == "tokens_quota_exceeded"
    assert sum(served) <= 40 and settled_usage(platform, token)["tokens"]["used"] == sum(served)


def test_a_key_can_narrow_but_never_widen_the_users_limits(platform: Platform) -> None:
    admin = platform.client()
    username, _ = new_user(platform, tokens_per_day=30)

    def key(**limits: int) -> httpx.Client:
        created = admin.post("/api/v1/auth/keys", json={"username": username, **limits})
        assert created.status_code == 201, created.text
        return platform.client(key=created.json()["key"])

    narrow, wide = key(tokens_per_day=10), key(tokens_per_day=1_000_000)
    assert envelope(narrow.post("/v1/completions", json=completion()), 429)["code"] == "tokens_quota_exceeded"
    narrow_view = narrow.get("/api/v1/usage").json()
    assert narrow_view["key"]["tokens"]["limit"] == 10 and narrow_view["tokens"]["limit"] == 30
    served = 0
    while (response := wide.post("/v1/completions", json=completion())).status_code == 200:
        served += response.json()["usage"]["total_tokens"]
    assert envelope(response, 429)["code"] == "tokens_quota_exceeded" and served <= 30  # the user's 30 hold


def test_the_rate_limit_belongs_to_the_user(platform: Platform) -> None:
    username, first = new_user(platform, password=PASSWORD, rate_limit_per_minute=4)
    second = platform.client().post("/api/v1/auth/keys", json={"username": username}).json()["key"]
    login = platform.client(key="").post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    clients = [platform.client(key=k) for k in (first, second, login.json()["access_token"], first)]
    remaining = [c.get("/api/v1/auth/me").headers["X-RateLimit-Remaining"] for c in clients]
    assert remaining == ["3", "2", "1", "0"]  # one window for all of the user's credentials
    refused = platform.client(key=second).get("/api/v1/auth/me")
    assert envelope(refused, 429)["code"] == "rate_limit_exceeded" and refused.headers["X-RateLimit-Limit"] == "4"


def test_keys_per_user_are_capped(platform: Platform) -> None:
    cap = platform.settings.max_keys_per_user
    username, key = new_user(platform)
    mine = platform.client(key=key)
    made = [mine.post("/api/v1/auth/keys", json={"name": f"k{i}"}) for i in range(cap - 1)]
    assert all(r.status_code == 201 for r in made)
    refused = mine.post("/api/v1/auth/keys", json={"name": "one too many"})
    assert envelope(refused, 409)["code"] == "too_many_keys"
    by_admin = platform.client().post("/api/v1/auth/keys", json={"username": username})
    assert envelope(by_admin, 409)["code"] == "too_many_keys"  # admins cannot go past it either
    assert mine.delete(f"/api/v1/auth/keys/{made[0].json()['id']}").status_code == 200
    assert mine.post("/api/v1/auth/keys", json={"name": "after a revocation"}).status_code == 201


def test_dropped_streams_are_charged(platform: Platform) -> None:
    _, key = new_user(platform, tokens_per_day=10_000)
    client = platform.client(key=key)
    streams = [
        ("/api/v1/inference/text", {"prompt": "Once upon a time", "max_tokens": 200, "stream": True}),
        ("/v1/completions", {**completion("Once upon a time", 200), "stream": True}),
    ]
    charged = 0
    for path, body in streams:
        with client.stream("POST", path, json=body) as response:
            assert response.status_code == 200
            seen = 0
            for line in response.iter_lines():
                seen += line.startswith("data: {")
                if seen >= 4:
                    break  # the client goes away mid-stream
        tokens = settled_usage(platform, key)["tokens"]
        assert tokens["used"] > charged, tokens  # charged, though no result event ever reached the client
        assert tokens["used"] - charged < 200 + 40  # what it saw, not the whole reservation
        charged = tokens["used"]

    done = client.post("/api/v1/inference/text", json={"prompt": "Hi", "max_tokens": 3, "stream": True})
    result = [line for line in done.text.splitlines() if '"result"' in line]
    assert result and settled_usage(platform, key)["tokens"]["used"] > charged


def test_async_jobs_reserve_at_acceptance_and_settle_when_done(platform: Platform) -> None:
    _, key = new_user(platform, tokens_per_day=60)
    client = platform.client(key=key)
    too_big = client.post("/api/v1/tasks", json={"type": "text", "params": {"prompt": "Hi", "max_tokens": 100}})
    assert envelope(too_big, 429)["code"] == "tokens_quota_exceeded"  # refused at the door, not queued
    accepted = client.post("/api/v1/tasks", json={"type": "text", "params": {"prompt": "Hi", "max_tokens": 4}})
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + 120
    while (job := client.get(f"/api/v1/tasks/{accepted.json()['id']}").json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["status"] == "completed", job
    tokens = settled_usage(platform, key)["tokens"]
    assert tokens["used"] == job["result"]["usage"]["total_tokens"] > 0


def test_usage_of_others_is_for_admins(platform: Platform) -> None:
    username, key = new_user(platform, images_per_day=3)
    other, _ = new_user(platform)
    view = platform.client().get("/api/v1/usage", params={"username": username}).json()
    assert view["username"] == username and view["images"] == {"limit": 3, "used": 0, "reserved": 0, "remaining": 3}
    assert view["rate_limit_per_minute"] == platform.settings.rate_limit_per_minute and view["resets_in_s"] > 0
    envelope(platform.client(key=key).get("/api/v1/usage", params={"username": other}), 403, "permission_error")
    envelope(platform.client().get("/api/v1/usage", params={"username": "nobody-here"}), 404)
    envelope(platform.client(key=key).patch(f"/api/v1/users/{username}", json={"limits": {}}), 403)
