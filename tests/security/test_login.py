"""Login against the running gateway: it does not tell which users exist (the same answer, and the
same argon2 work, for unknown, disabled and password-less users as for a wrong password), and its
throttle is per client address and per address + user name, so nobody can lock a user out.

Clients bind their own loopback source addresses (127.0.x.y): the gateway sees each as its own client
(it trusts X-Forwarded-For only from its configured proxies)."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator
from itertools import count

import httpx
import pytest

from tests.platform_harness import Platform
from tests.security.conftest import envelope

PASSWORD = "correct horse battery staple"
_addresses = count(2)


def from_address(platform: Platform, address: str | None = None) -> httpx.Client:
    """A client whose connections come from their own loopback address (a fresh one by default)."""
    if address is None:
        n = next(_addresses)
        address = f"127.0.{100 + n // 250}.{n % 250 + 2}"
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=platform.gateway, timeout=60, transport=transport)


def login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    return client.post("/api/v1/auth/login", json={"username": username, "password": password})


@pytest.fixture(scope="module")
def accounts(platform: Platform) -> Iterator[dict[str, str]]:
    admin = platform.client()
    suffix = uuid.uuid4().hex[:6]
    names = {kind: f"login-{kind}-{suffix}" for kind in ("active", "disabled", "keyonly")}
    for kind, username in names.items():
        body = {"username": username} if kind == "keyonly" else {"username": username, "password": PASSWORD}
        assert admin.post("/api/v1/users", json=body).status_code == 201
    assert admin.patch(f"/api/v1/users/{names['disabled']}", json={"disabled": True}).json()["disabled"] is True
    yield names


def test_login_does_not_tell_which_users_exist(platform: Platform, accounts: dict[str, str]) -> None:
    cases = {
        "wrong password": (accounts["active"], "not the password"),
        "unknown user": (f"nobody-{uuid.uuid4().hex[:8]}", PASSWORD),
        "disabled user": (accounts["disabled"], PASSWORD),  # even with the right password
        "no password": (accounts["keyonly"], PASSWORD),
    }
    bodies, timings = {}, {name: [] for name in cases}
    for _ in range(5):  # interleaved, each attempt from an address of its own (no throttling)
        for name, (username, password) in cases.items():
            with from_address(platform) as client:
                started = time.perf_counter()
                response = login(client, username, password)
                timings[name].append(time.perf_counter() - started)
            bodies[name] = envelope(response, 401, "authentication_error")
    assert len({repr(body) for body in bodies.values()}) == 1, bodies  # word for word the same answer
    medians = {name: statistics.median(t) for name, t in timings.items()}
    reference = medians["wrong password"]  # a real argon2 verification
    for name, median in medians.items():
        assert median > 0.5 * reference, (name, medians)  # the same work, not a shortcut

    with from_address(platform) as client:
        assert login(client, accounts["active"], PASSWORD).status_code == 200


def test_throttling_one_address_does_not_lock_the_user_out(platform: Platform, accounts: dict[str, str]) -> None:
    per_minute = platform.settings.login_attempts_per_minute
    attacker, user = from_address(platform, "127.0.0.2"), from_address(platform, "127.0.0.3")
    statuses = [login(attacker, accounts["active"], f"guess-{i}").status_code for i in range(per_minute + 2)]
    assert statuses[:per_minute] == [401] * per_minute and statuses[per_minute:] == [429, 429]
    throttled = login(attacker, accounts["active"], PASSWORD)  # even the right password, from there
    assert envelope(throttled, 429, "rate_limit_error")["code"] == "rate_limit_exceeded"
    assert int(throttled.headers["Retry-After"]) >= 1
    assert login(attacker, f"other-{uuid.uuid4().hex[:6]}", "x").status_code == 429  # the address as a whole

    mine = login(user, accounts["active"], PASSWORD)  # the user, from their own address, is not locked out
    assert mine.status_code == 200, mine.text
    assert (
        platform.client(key=mine.json()["access_token"]).get("/api/v1/auth/me").json()["username"]
        == (accounts["active"])
    )
