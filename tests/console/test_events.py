"""GET /api/v1/events against the running platform: credentials, hostile parameters, and tenancy
(a user hears only of their own jobs; an admin of everyone's, plus workers and dashboard figures)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from api.console.events import MAX_STREAMS_PER_USER
from tests.conftest import TEXT_MODEL
from tests.console.conftest import EventReader, User
from tests.platform_harness import Platform
from tests.security.conftest import envelope


def submit(platform: Platform, key: str, prompt: str) -> str:
    accepted = platform.client(key=key).post(
        "/api/v1/tasks", json={"params": {"model": TEXT_MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0}}
    )
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["id"])


def finished(job_id: str) -> Callable[[str, Any], bool]:
    return lambda event, data: event == "job" and data["id"] == job_id and data["status"] == "completed"


@pytest.mark.parametrize("key", ["", "bl-000000000000-" + "x" * 43, "not-a-token", "Bearer"])
def test_no_or_wrong_credentials_is_401(platform: Platform, key: str) -> None:
    response = platform.client(key=key).get("/api/v1/events")  # key "": no Authorization header at all
    envelope(response, 401, "authentication_error")
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "query",
    [
        "topics=<script>alert(1)</script>",
        "topics=jobs&topics=jobs&topics=jobs&topics=jobs",
        "topics=" + "j" * 10_000,
        "topics=",
        "topics=%00",
        "topics=jobs%0d%0aSet-Cookie:%20x=1",
        "topics=%F0%9F%92%A5",
        "topics=JOBS",
    ],
)
def test_hostile_topics_are_refused_in_the_envelope(platform: Platform, query: str) -> None:
    response = platform.client().get(f"/api/v1/events?{query}")
    envelope(response, 422, "invalid_request_error")
    assert "Set-Cookie" not in response.headers


def test_workers_topic_is_for_admins(platform: Platform, users: dict[str, User]) -> None:
    response = platform.client(key=users["alice"].key).get("/api/v1/events?topics=workers")
    envelope(response, 403, "permission_error")


def test_users_hear_only_of_their_own_jobs(
    platform: Platform, users: dict[str, User], reader: Callable[..., EventReader]
) -> None:
    alice, bob = users["alice"], users["bob"]
    streams = {
        name: reader(key) for name, key in (("alice", alice.key), ("bob", bob.key), ("admin", platform.admin_key))
    }
    for name, stream in streams.items():
        _, hello = stream.wait_for(lambda e, _: e == "hello", timeout=30)
        assert hello["username"] == {"alice": alice.username, "bob": bob.username}.get(name, "admin")
    assert set(streams["alice"].seen[0][1]["topics"]) == {"jobs", "dashboard"}  # no workers for a user
    assert "workers" in streams["admin"].seen[0][1]["topics"]

    alice_job = submit(platform, alice.key, "Alice's secret plan")
    bob_job = submit(platform, bob.key, "Bob's secret plan")
    streams["alice"].wait_for(finished(alice_job))
    streams["bob"].wait_for(finished(bob_job))
    admin = streams["admin"]

    def both_finished(event: str, data: Any) -> bool:
        seen = [*admin.seen, (event, data)]
        return all(any(finished(job)(*e) for e in seen) for job in (alice_job, bob_job))

    admin.wait_for(both_finished)

    def jobs_in(stream: EventReader) -> set[tuple[str, str]]:
        return {(d["id"], d["owner"]) for e, d in stream.seen if e == "job"}

    assert jobs_in(streams["alice"]) == {(alice_job, alice.username)}
    assert jobs_in(streams["bob"]) == {(bob_job, bob.username)}
    assert {(alice_job, alice.username), (bob_job, bob.username)} <= jobs_in(admin)
    # what a job event carries: status and progress, never the prompt or the result
    for _, data in streams["alice"].seen:
        assert "secret plan" not in str(data)


def test_admin_hears_workers_and_dashboard_figures_and_users_a_narrower_dashboard(
    platform: Platform, users: dict[str, User], reader: Callable[..., EventReader]
) -> None:
    admin = reader(platform.admin_key)
    _, workers = admin.wait_for(lambda e, _: e == "workers", timeout=30)
    assert workers and {"id", "healthy", "heartbeat_age_s", "models", "memory_used_bytes"} <= set(workers[0])
    assert any(w["healthy"] for w in workers)
    _, figures = admin.wait_for(lambda e, _: e == "dashboard", timeout=30)
    assert {"queue", "requests_per_s", "tokens_per_s", "workers"} <= set(figures)
    assert set(figures["queue"]["queued_by_priority"]) == {"high", "normal", "low"}

    alice = reader(users["alice"].key, topics=["dashboard"])
    _, narrow = alice.wait_for(lambda e, _: e == "dashboard", timeout=30)
    assert set(narrow) == {"queue", "at"}  # no workers, rates or memory of the platform


def test_a_revoked_key_stops_hearing(
    platform: Platform, users: dict[str, User], reader: Callable[..., EventReader]
) -> None:
    """Credentials are checked again while the stream is open (every RECHECK_S = 10 s), not only at its start."""
    admin = platform.client()
    made = admin.post("/api/v1/auth/keys", json={"username": users["alice"].username, "name": "short-lived"})
    assert made.status_code == 201, made.text
    stream = reader(made.json()["key"], topics=["jobs"])
    stream.wait_for(lambda e, _: e == "hello", timeout=30)
    assert admin.delete(f"/api/v1/auth/keys/{made.json()['id']}").status_code == 200
    _, bye = stream.wait_for(lambda e, _: e == "goodbye", timeout=40)
    assert "no longer valid" in bye["reason"]
    stream.join_ended(timeout=10)  # the server closed the stream


def test_one_user_may_hold_a_bounded_number_of_streams(
    platform: Platform, users: dict[str, User], reader: Callable[..., EventReader]
) -> None:
    """Each stream holds a connection and a queue: a user (or a stolen key) cannot open them without
    end; closing one makes room again. Another user is not affected."""
    streams = [reader(users["alice"].key, topics=["jobs"]) for _ in range(MAX_STREAMS_PER_USER)]
    for stream in streams:
        stream.wait_for(lambda e, _: e == "hello", timeout=30)
    with platform.client(key=users["alice"].key, timeout=10).stream(
        "GET", "/api/v1/events", params={"topics": ["jobs"]}
    ) as refused:  # streamed: were it accepted, it would never end
        assert refused.status_code == 429
        refused.read()
        assert "event streams are open" in str(envelope(refused, 429)["message"])
    other = reader(users["bob"].key, topics=["jobs"])
    other.wait_for(lambda e, _: e == "hello", timeout=30)
    streams[0].close()  # the server notices at its next write (a ping or a recheck, within 15 s)
    deadline = time.monotonic() + 45
    while True:
        with platform.client(key=users["alice"].key, timeout=10).stream(
            "GET", "/api/v1/events", params={"topics": ["jobs"]}
        ) as again:
            if again.status_code == 200:
                break
        assert time.monotonic() < deadline, "the closed stream's place never came back"
        time.sleep(1)
