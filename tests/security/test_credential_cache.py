"""Gateways keep verified credentials in memory (bitinglip/auth/credential_cache.py). Against the running
platform and a second gateway replica on the same database: a key both replicas have verified still
stops working on both when it is revoked, its user disabled or their limits changed on one of them (at
once there, within BITINGLIP_CREDENTIAL_RECHECK_S on the other), and a wrong secret for a key id both
hold in memory is refused."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.platform_harness import Platform
from tests.security.conftest import envelope

RECHECK_S = 0.5
PATIENCE_S = 10 * RECHECK_S  # a bound on correctness, not a speed figure


@pytest.fixture(scope="module")
def replica(platform: Platform) -> Iterator[str]:
    url = platform.start_extra_gateway("gateway-credentials", {"BITINGLIP_CREDENTIAL_RECHECK_S": str(RECHECK_S)})
    yield url
    platform.stop("gateway-credentials")


def _user_with_key(platform: Platform) -> tuple[str, str]:
    admin, username = platform.client(), f"carol-{uuid.uuid4().hex[:6]}"
    assert admin.post("/api/v1/users", json={"username": username, "password": "a long password 1"}).status_code == 201
    created = admin.post("/api/v1/auth/keys", json={"username": username, "name": "cached"})
    assert created.status_code == 201, created.text
    return username, created.json()["key"]


def _clients(platform: Platform, replica: str, key: str) -> tuple[httpx.Client, httpx.Client]:
    here = platform.client(key=key)
    there = httpx.Client(base_url=replica, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    for client in (here, there, here, there):  # verified, then answered from memory, on both
        assert client.get("/api/v1/auth/me").status_code == 200
    return here, there


def _eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not check():
        assert time.monotonic() < deadline, f"not within {PATIENCE_S} s"
        time.sleep(0.05)


def _refused(client: httpx.Client) -> bool:
    return client.get("/api/v1/auth/me").status_code == 401


def test_a_revoked_key_stops_on_every_replica(platform: Platform, replica: str) -> None:
    _, key = _user_with_key(platform)
    here, there = _clients(platform, replica, key)
    key_id = key[3:15]  # bl-<12 hex>-<secret>
    assert platform.client().delete(f"/api/v1/auth/keys/{key_id}").status_code == 200
    envelope(here.get("/api/v1/auth/me"), 401, "authentication_error")  # the replica that revoked it: at once
    _eventually(lambda: _refused(there))
    for _ in range(3):  # and it stays refused: nothing refills either cache
        envelope(here.get("/api/v1/auth/me"), 401)
        envelope(there.get("/api/v1/auth/me"), 401)


def test_a_disabled_user_is_refused_on_every_replica_with_keys_and_tokens(platform: Platform, replica: str) -> None:
    username, key = _user_with_key(platform)
    here, there = _clients(platform, replica, key)
    login = httpx.post(f"{replica}/api/v1/auth/login", json={"username": username, "password": "a long password 1"})
    token = httpx.Client(base_url=replica, headers={"Authorization": f"Bearer {login.json()['access_token']}"})
    assert token.get("/api/v1/auth/me").status_code == 200
    admin = platform.client()
    try:
        assert admin.patch(f"/api/v1/users/{username}", json={"disabled": True}).status_code == 200
        envelope(here.get("/api/v1/auth/me"), 401)
        _eventually(lambda: _refused(there) and _refused(token))
        assert admin.patch(f"/api/v1/users/{username}", json={"disabled": False}).status_code == 200
        _eventually(lambda: not _refused(there) and not _refused(token))  # and enabling holds as well
    finally:
        admin.patch(f"/api/v1/users/{username}", json={"disabled": False})


def test_changed_limits_hold_on_every_replica(platform: Platform, replica: str) -> None:
    username, key = _user_with_key(platform)
    here, there = _clients(platform, replica, key)
    admin = platform.client()
    assert admin.patch(f"/api/v1/users/{username}", json={"limits": {"rate_limit_per_minute": 7}}).status_code == 200
    assert here.get("/api/v1/auth/me").headers["X-RateLimit-Limit"] == "7"
    _eventually(lambda: there.get("/api/v1/auth/me").headers.get("X-RateLimit-Limit") == "7")


def test_a_wrong_secret_for_a_remembered_key_id_is_refused(platform: Platform, replica: str) -> None:
    username, key = _user_with_key(platform)
    _clients(platform, replica, key)
    forged = key[:16] + "A" * (len(key) - 16)  # the same key id, another secret
    for url in (platform.gateway, replica):
        response = httpx.get(f"{url}/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"})
        envelope(response, 401, "authentication_error")
        real = httpx.get(f"{url}/api/v1/auth/me", headers={"Authorization": f"Bearer {key}"})
        assert real.json()["username"] == username  # the real key still answers as its own user
