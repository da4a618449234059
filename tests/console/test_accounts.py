"""The API behind the Keys & usage page: an admin changes a user's role (audited; the platform is
never left without an enabled admin), and usage per user and per key per day (a user: their own only)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TEXT_MODEL
from tests.console.conftest import User
from tests.platform_harness import Platform, platform_settings
from tests.security.conftest import envelope


def new_user(admin: httpx.Client, role: str = "user", keys: int = 1) -> tuple[str, list[str]]:
    name = f"acct-{uuid.uuid4().hex[:8]}"
    assert admin.post("/api/v1/users", json={"username": name, "role": role}).status_code == 201
    made = [admin.post("/api/v1/auth/keys", json={"username": name, "name": f"k{i}"}) for i in range(keys)]
    assert all(m.status_code == 201 for m in made), [m.text for m in made]
    return name, [m.json()["key"] for m in made]


def audit_lines(platform: Platform, event: str, needle: str, count: int) -> list[str]:
    """The gateway log's audit lines of `event` that mention `needle`, once `count` are there (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        log = (platform.settings.home_dir / "logs" / "gateway.log").read_text()
        found = [line for line in log.splitlines() if event in line and "audit=True" in line and needle in line]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


# -- roles


def test_an_admin_changes_a_role_and_it_holds_from_the_next_request(platform: Platform) -> None:
    admin = platform.client()
    name, (key,) = new_user(admin)
    carol = platform.client(key=key)
    envelope(carol.get("/api/v1/users"), 403)
    promoted = admin.patch(f"/api/v1/users/{name}", json={"role": "admin"})
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin", promoted.text
    assert carol.get("/api/v1/auth/me").json()["role"] == "admin"
    assert carol.get("/api/v1/users").status_code == 200
    demoted = carol.patch(f"/api/v1/users/{name}", json={"role": "user"})  # an admin may step down herself
    assert demoted.status_code == 200 and demoted.json()["role"] == "user", demoted.text
    envelope(carol.get("/api/v1/users"), 403)
    envelope(carol.patch(f"/api/v1/users/{name}", json={"role": "admin"}), 403)  # nor climb back
    lines = audit_lines(platform, "user_role_changed", name, 2)
    assert any("role=admin" in line and "outcome=ok" in line for line in lines), lines
    assert any("role=user" in line and f"actor={name}" in line for line in lines), lines


@pytest.mark.parametrize(
    "body",
    [
        {"role": "root"},
        {"role": "ADMIN"},
        {"role": ""},
        {"role": None, "disabled": "maybe"},
        {"role": ["admin"]},
        {"role": {"$ne": "user"}},
        {"role": "admin\u0000"},
        {"role": "a" * 10_000},
    ],
)
def test_hostile_roles_are_refused_in_the_envelope(platform: Platform, users: dict[str, User], body: Any) -> None:
    envelope(platform.client().patch(f"/api/v1/users/{users['bob'].username}", json=body), 422, "invalid_request_error")
    assert platform.client(key=users["bob"].key).get("/api/v1/auth/me").json()["role"] == "user"


def test_changing_a_role_needs_credentials_and_a_known_user(platform: Platform, users: dict[str, User]) -> None:
    path = f"/api/v1/users/{users['bob'].username}"
    envelope(platform.client(key="").patch(path, json={"role": "admin"}), 401)
    envelope(platform.client(key=users["alice"].key).patch(path, json={"role": "admin"}), 403)
    envelope(platform.client().patch("/api/v1/users/nobody-here", json={"role": "admin"}), 404)


@pytest.fixture(scope="module")
def lone_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A gateway of its own (fresh DB, no Prefect or workers): its bootstrap admin is the only admin."""
    home: Path = tmp_path_factory.mktemp("lone-home")
    gateway = Platform(platform_settings(home))
    try:
        gateway.start_gateway()
        yield gateway
    finally:
        gateway.close()


def test_the_last_enabled_admin_is_neither_demoted_nor_disabled(lone_gateway: Platform) -> None:
    admin, me = lone_gateway.client(), lone_gateway.settings.admin_username
    for body in ({"role": "user"}, {"disabled": True}):
        error = envelope(admin.patch(f"/api/v1/users/{me}", json=body), 409, "conflict_error")
        assert "last enabled admin" in str(error["message"])
    assert admin.get("/api/v1/auth/me").json()["role"] == "admin"
    for event in ("user_role_changed", "user_disabled"):
        assert audit_lines(lone_gateway, event, "outcome=refused", 1), event

    # a disabled admin does not count: with the second one disabled, the first is still the last
    second, (second_key,) = new_user(admin, role="admin")
    assert admin.patch(f"/api/v1/users/{second}", json={"disabled": True}).status_code == 200
    envelope(admin.patch(f"/api/v1/users/{me}", json={"role": "user"}), 409)
    assert admin.patch(f"/api/v1/users/{second}", json={"disabled": False}).status_code == 200

    # two admins demoting each other at once: one goes through, the platform keeps an admin
    other = lone_gateway.client(key=second_key)
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda pair: pair[0].patch(f"/api/v1/users/{pair[1]}", json={"role": "user"}),
                [(admin, second), (other, me)],
            )
        )
    assert sorted(a.status_code for a in answers) in ([200, 403], [200, 409]), [a.text for a in answers]
    roles = {
        u["username"]: u["role"]
        for u in (admin if answers[0].status_code == 200 else other).get("/api/v1/users").json()
    }
    assert [n for n in (me, second) if roles[n] == "admin"] in ([me], [second]), roles


# -- usage per user and per key per day


def settled(client: httpx.Client, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (now := client.get("/api/v1/usage").json())["tokens"]["reserved"]:
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
    return dict(now)


def complete(key: str, platform: Platform, max_tokens: int) -> int:
    body = {"model": TEXT_MODEL, "prompt": "Hi", "max_tokens": max_tokens, "temperature": 0}
    answer = platform.client(key=key).post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["usage"]["total_tokens"])


def test_usage_per_user_and_per_key_per_day(platform: Platform, users: dict[str, User]) -> None:
    admin = platform.client()
    name, (first, second) = new_user(admin, keys=2)
    spent = {first: complete(first, platform, 3), second: complete(second, platform, 5)}
    complete(users["alice"].key, platform, 2)  # someone else's use, never in his answer
    dave = platform.client(key=first)
    total = settled(dave)["tokens"]["used"]
    assert total == sum(spent.values())

    answer = dave.get("/api/v1/usage/daily", params={"days": 3})
    assert answer.status_code == 200, answer.text
    history = answer.json()
    assert history["until"] == settled(dave)["day"] and history["since"] < history["until"]
    rows = history["data"]
    assert {r["username"] for r in rows} == {name}  # his own only
    today = [r for r in rows if r["day"] == history["until"]]
    assert today[0] == {
        "day": history["until"],
        "username": name,
        "key_id": None,
        "key_name": None,
        "tokens": total,
        "images": 0,
    }
    keys = {r["key_name"]: r["tokens"] for r in today[1:]}
    assert keys == {"k0": spent[first], "k1": spent[second]}
    assert dave.get("/api/v1/usage/daily", params={"username": name}).json()["data"] == rows

    # others': admins only; an admin gets one user's rows, or everyone's
    error = envelope(dave.get("/api/v1/usage/daily", params={"username": users["alice"].username}), 403)
    assert error["type"] == "permission_error"
    assert admin.get("/api/v1/usage/daily", params={"username": name, "days": 3}).json()["data"] == rows
    everyone = admin.get("/api/v1/usage/daily").json()["data"]
    assert {name, users["alice"].username} <= {r["username"] for r in everyone}
    envelope(admin.get("/api/v1/usage/daily", params={"username": "nobody-here"}), 404)
    envelope(platform.client(key="").get("/api/v1/usage/daily"), 401)


@pytest.mark.parametrize(
    "query",
    [
        "days=0",
        "days=-1",
        "days=91",
        "days=abc",
        "days=1e9",
        "days=" + "9" * 400,
        "username=",
        "username=../admin",
        "username=%3Cscript%3E",
        "username=Admin",
        "username=" + "a" * 65,
        "username=admin%00",
        "username=admin%0d%0aSet-Cookie:x=1",
    ],
)
def test_hostile_usage_queries_get_the_envelope(platform: Platform, query: str) -> None:
    response = platform.client().get(f"/api/v1/usage/daily?{query}")
    envelope(response, 422, "invalid_request_error")
    assert "Set-Cookie" not in response.headers
