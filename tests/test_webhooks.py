"""Webhooks end to end, on the real platform with real receivers on 127.0.0.1 (allowed for the tests by
BITINGLIP_WEBHOOK_ALLOW_HOSTS): a job's and a batch's events arrive signed with their owner's secret,
as `deliver-webhook` Prefect task runs; a receiver that is down, answers 5xx or redirects gets the event
again with backoff (redirects never followed) until it takes it; every attempt shows on the job; URLs
aimed at the platform's own network are refused at the door."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.platform_harness import Platform
from tests.test_batches import chat_line, jsonl, wait_batch
from tests.test_gateway_text import assert_envelope
from tests.test_jobs import wait_done
from tests.webhook_receiver import Receiver


@pytest.fixture(scope="module")
def users(platform: Platform) -> Iterator[dict[str, httpx.Client]]:
    """Two users with a key each: alice and bob."""
    admin = platform.client()
    clients = {}
    for name in ("alice", "bob"):
        username = f"{name}-{uuid.uuid4().hex[:6]}"
        assert admin.post("/api/v1/users", json={"username": username}).status_code == 201
        key = admin.post("/api/v1/auth/keys", json={"username": username, "name": "hooks"}).json()["key"]
        clients[name] = platform.client(key)
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def text_job(client: httpx.Client, webhook: str, prompt: str = "Say hi.", **extra: Any) -> dict[str, Any]:
    body = {"type": "text", "params": {"prompt": prompt, "max_tokens": 4}, "webhook": webhook, **extra}
    response = client.post("/api/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_deliveries(client: httpx.Client, path: str, until: Any, timeout: float = 120) -> list[dict[str, Any]]:
    """The object's delivery attempts once `until(attempts)` holds."""
    deadline = time.monotonic() + timeout
    while not until(attempts := client.get(path).json()["webhook_deliveries"]):
        assert time.monotonic() < deadline, f"webhook attempts: {attempts}"
        time.sleep(0.1)
    return attempts  # type: ignore[no-any-return]


def delivered(event: str) -> Any:
    return lambda attempts: any(a["event"] == event and a["delivered"] for a in attempts)


def prefect_task_runs(platform: Platform, job_id: str, count: int) -> list[Any]:
    """The `deliver-webhook` task runs of a job, once Prefect has recorded `count` of them settled."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    from bitinglip.prefect_client import prefect_client_settings

    async def read() -> list[Any]:
        with prefect_client_settings(platform.settings):
            async with get_client() as client:
                named = TaskRunFilter(name=TaskRunFilterName(like_=f"webhook · job {job_id}"))
                return list(await client.read_task_runs(task_run_filter=named))

    deadline = time.monotonic() + 30
    while True:
        runs = asyncio.run(read())
        if len(runs) >= count and all(r.state is not None and r.state.is_final() for r in runs):
            return runs
        assert time.monotonic() < deadline, f"task runs in Prefect: {runs}"
        time.sleep(0.5)


def test_job_events_arrive_signed_with_the_owners_secret(
    platform: Platform, users: dict[str, httpx.Client], receiver: Receiver
) -> None:
    alice, bob = users["alice"], users["bob"]
    secret = alice.get("/api/v1/webhooks/secret").json()["secret"]
    assert secret.startswith("whsec_") and alice.get("/api/v1/webhooks/secret").json()["secret"] == secret
    assert bob.get("/api/v1/webhooks/secret").json()["secret"] != secret

    job = text_job(alice, receiver.url("/alice"))
    assert job["webhook"] == {"url": receiver.url("/alice"), "events": ["completed", "failed", "start"]}
    done, _ = wait_done(alice, job["id"])
    assert done["status"] == "completed"
    start, completed = receiver.wait_for(2)
    events = [Webhook(secret).verify(r.body, r.headers) for r in (start, completed)]
    assert [e["type"] for e in events] == ["job.start", "job.completed"]  # in order
    assert events[0]["data"]["status"] == "running" and events[0]["data"]["id"] == job["id"]
    assert events[1]["data"]["status"] == "completed" and events[1]["data"]["result"] == done["result"]
    assert {start.path, completed.path} == {"/alice"}
    assert start.headers["content-type"] == "application/json" and "authorization" not in start.headers
    assert '"prompt"' not in completed.body.decode() and "Say hi." not in completed.body.decode()
    with pytest.raises(WebhookVerificationError):  # another user's secret does not verify it
        Webhook(bob.get("/api/v1/webhooks/secret").json()["secret"]).verify(completed.body, completed.headers)

    attempts = wait_deliveries(alice, f"/api/v1/tasks/{job['id']}", lambda a: len(a) == 2)
    assert [(a["event"], a["attempt"], a["status_code"], a["delivered"]) for a in attempts] == [
        ("start", 1, 200, True),
        ("completed", 1, 200, True),
    ]
    assert [a["webhook_id"] for a in attempts] == [start.headers["webhook-id"], completed.headers["webhook-id"]]
    runs = prefect_task_runs(platform, job["id"], 2)
    assert sorted(r.name for r in runs) == [f"completed webhook · job {job['id']}", f"start webhook · job {job['id']}"]
    assert {r.state.name for r in runs} == {"Completed"}
    assert bob.get(f"/api/v1/tasks/{job['id']}").status_code == 404  # attempts are the owner's to see

    rotated = alice.post("/api/v1/webhooks/secret/rotate").json()["secret"]
    assert rotated != secret and alice.get("/api/v1/webhooks/secret").json()["secret"] == rotated
    again = text_job(alice, receiver.url("/alice"), webhook_events_filter=["completed"])
    (latest,) = receiver.wait_for(3)[2:]
    assert Webhook(rotated).verify(latest.body, latest.headers)["data"]["id"] == again["id"]
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(latest.body, latest.headers)


def test_a_receiver_that_is_down_gets_the_event_when_it_comes_back(
    platform: Platform, users: dict[str, httpx.Client]
) -> None:
    alice = users["alice"]
    down = Receiver()  # its port is free: nothing listens there yet
    job = text_job(alice, down.url("/late"), webhook_events_filter=["completed"])
    path = f"/api/v1/tasks/{job['id']}"
    failing = wait_deliveries(alice, path, lambda a: len(a) >= 2)
    assert {(a["status_code"], a["error"], a["delivered"]) for a in failing} == {(None, "could not connect", False)}
    assert alice.get(path).json()["status"] == "completed"  # the job did not wait for its webhook
    down.start()
    try:
        attempts = wait_deliveries(alice, path, delivered("completed"))
        (received,) = down.wait_for(1)
        assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
        assert {a["webhook_id"] for a in attempts} == {received.headers["webhook-id"]}  # one event, retried
        assert attempts[-1]["status_code"] == 200 and not any(a["delivered"] for a in attempts[:-1])
        secret = alice.get("/api/v1/webhooks/secret").json()["secret"]
        assert Webhook(secret).verify(received.body, received.headers)["data"]["id"] == job["id"]
        assert len(down.received) == 1  # delivered once: no retry after the receiver took it
    finally:
        down.stop()


def test_5xx_and_redirects_are_retried_and_never_followed(platform: Platform, users: dict[str, httpx.Client]) -> None:
    alice = users["alice"]
    receiver = Receiver(answers=[302, 503]).start()  # a redirect to the cloud metadata address, then an error
    try:
        job = text_job(alice, receiver.url("/r"), webhook_events_filter=["completed"])
        attempts = wait_deliveries(alice, f"/api/v1/tasks/{job['id']}", delivered("completed"))
        assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 302), (2, 503), (3, 200)]
        assert [r.path for r in receiver.received] == ["/r", "/r", "/r"]  # every try came back here
    finally:
        receiver.stop()


def test_a_failed_job_sends_its_failed_event(users: dict[str, httpx.Client], receiver: Receiver) -> None:
    alice = users["alice"]
    job = text_job(alice, receiver.url("/f"), prompt="hello " * 9000, webhook_events_filter=["failed"])
    done, _ = wait_done(alice, job["id"])
    assert done["status"] == "failed"
    (received,) = receiver.wait_for(1)
    event = json.loads(received.body)
    assert event["type"] == "job.failed" and event["data"]["error"]["code"] == "context_length_exceeded"
    attempts = wait_deliveries(alice, f"/api/v1/tasks/{job['id']}", delivered("failed"))
    assert [a["event"] for a in attempts] == ["failed"]  # start was not asked for


HOSTILE = [
    "file:///etc/passwd",
    "http://169.254.169.254/latest/meta-data/",
    "http://localhost:8001/api/v1/users",
    "http://[::1]:8001/",
    "http://2130706433:8001/",
    "http://0x7f000001/",
    "http://10.0.0.1/",
    "http://user:pw@127.0.0.1:9/",
    "gopher://127.0.0.1:6379/_INFO",
]


def test_hostile_webhook_urls_are_refused_at_the_door(platform: Platform, users: dict[str, httpx.Client]) -> None:
    alice = users["alice"]
    before = alice.get("/api/v1/tasks").json()["total"]
    for url in HOSTILE:
        response = alice.post("/api/v1/tasks", json={"params": {"prompt": "x"}, "webhook": url})
        assert_envelope(response, 400, "invalid_webhook")
        assert response.json()["error"]["param"] == "webhook", url
    assert_envelope(
        alice.post("/api/v1/tasks", json={"params": {"prompt": "x"}, "webhook": "http://a/" + "a" * 3000}), 422
    )
    bad_filter = {"params": {"prompt": "x"}, "webhook": "http://127.0.0.1:9/", "webhook_events_filter": ["output"]}
    assert_envelope(alice.post("/api/v1/tasks", json=bad_filter), 422)
    assert_envelope(alice.post("/api/v1/tasks", json={**bad_filter, "webhook_events_filter": []}), 422)
    sdk = platform.sdk(alice.headers["Authorization"].removeprefix("Bearer "))
    upload = sdk.files.create(file=("in.jsonl", jsonl([chat_line("a", "hi")])), purpose="batch")
    refused = alice.post(
        "/v1/batches",
        json={"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "webhook": HOSTILE[1]},
    )
    assert_envelope(refused, 400, "invalid_webhook")
    assert alice.get("/api/v1/tasks").json()["total"] == before  # nothing was accepted
    for path in ("/api/v1/webhooks/secret", "/api/v1/webhooks/secret/rotate"):
        method = "GET" if path.endswith("secret") else "POST"
        assert platform.client(key="").request(method, path).status_code == 401


def test_batch_events_through_the_openai_sdk(platform: Platform, users: dict[str, httpx.Client]) -> None:
    alice = users["alice"]
    receiver = Receiver().start()
    try:
        sdk = platform.sdk(alice.headers["Authorization"].removeprefix("Bearer "))
        upload = sdk.files.create(
            file=("in.jsonl", jsonl([chat_line("a", "hi"), chat_line("b", "yo")])), purpose="batch"
        )
        batch = sdk.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"team": "hooks"},
            extra_body={"webhook": receiver.url("/batch")},
        )
        assert batch.model_extra is not None and batch.model_extra["webhook"]["url"] == receiver.url("/batch")
        assert batch.metadata == {"team": "hooks"}  # the caller's metadata stays theirs
        done = wait_batch(sdk, batch.id)
        assert done.status == "completed"
        secret = alice.get("/api/v1/webhooks/secret").json()["secret"]
        events = [Webhook(secret).verify(r.body, r.headers) for r in receiver.wait_for(2)]
        assert [e["type"] for e in events] == ["batch.start", "batch.completed"]
        assert events[1]["data"]["result"]["output_file_id"] == done.output_file_id
        assert events[1]["data"]["result"]["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
        wait_deliveries(alice, f"/v1/batches/{batch.id}", lambda a: len(a) == 2 and all(x["delivered"] for x in a))
        retrieved = sdk.batches.retrieve(batch.id)
        assert retrieved.model_extra is not None
        assert [a["event"] for a in retrieved.model_extra["webhook_deliveries"]] == ["start", "completed"]
        runs = prefect_task_runs(platform, batch.id, 2)
        assert {r.state.name for r in runs} == {"Completed"}
    finally:
        receiver.stop()
