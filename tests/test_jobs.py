"""Async jobs end to end: accepted durably, run as Prefect task runs by the warm model worker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.conftest import CAPITAL
from tests.platform_harness import Platform
from tests.test_gateway_text import assert_envelope

TERMINAL = {"completed", "failed", "cancelled"}


def submit(
    client: httpx.Client, params: dict[str, Any], priority: str = "normal", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    response = client.post(
        "/api/v1/tasks", json={"type": "text", "priority": priority, "params": params}, headers=headers
    )
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_done(client: httpx.Client, job_id: str, timeout: float = 120) -> tuple[dict[str, Any], list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/tasks/{job_id}").json()
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        if job["status"] in TERMINAL:
            return job, seen
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} not finished after {timeout}s; statuses {seen}")


def prefect_task_run(platform: Platform, run_id: str, settled: bool = True) -> Any:
    """Prefect records task runs from events, a little after the fact (docs/architecture.md §4: never trust one
    call): read until the run exists (and, with `settled`, has reached a final state), for up to 30 s."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from bitinglip.prefect_client import prefect_client_settings

    async def read() -> Any:
        with prefect_client_settings(platform.settings):
            async with get_client() as client:
                try:
                    return await client.read_task_run(run_id)
                except ObjectNotFound:
                    return None

    deadline = time.monotonic() + 30
    run = None
    while time.monotonic() < deadline:
        run = asyncio.run(read())
        if run is not None and run.state is not None and (not settled or run.state.is_final()):
            return run
        time.sleep(0.2)
    raise AssertionError(f"task run {run_id} not recorded (or not final) after 30 s: {run}")


def prefect_task_run_state(platform: Platform, run_id: str) -> str:
    return str(prefect_task_run(platform, run_id).state.type.value)


def test_job_lifecycle_answers_paris_as_a_prefect_run(platform: Platform) -> None:
    client = platform.client()
    started = time.perf_counter()
    accepted = submit(
        client,
        {"messages": CAPITAL, "max_tokens": 24, "temperature": 0},
        priority="high",
        headers={"X-Request-ID": "job-lifecycle-1"},
    )
    assert time.perf_counter() - started < 2.0
    assert accepted["status"] == "queued" and accepted["priority"] == "high"

    job, seen = wait_done(client, accepted["id"])
    assert job["status"] == "completed", job
    assert seen[-1] == "completed"  # a warm worker, poked at once, may have claimed it before the first look
    assert set(seen) <= {"queued", "running", "completed"}
    assert "Paris" in job["result"]["text"]
    assert job["attempts"] == 1
    assert job["started_at"] < job["finished_at"]
    assert job["timings"]["engine_seconds"] > 0
    assert job["prefect_url"].endswith(job["prefect_run_id"])
    assert prefect_task_run_state(platform, job["prefect_run_id"]) == "COMPLETED"
    assert job["request_id"] == "job-lifecycle-1"  # one id: gateway log, job record, worker log
    assert "job-lifecycle-1" in (platform.settings.home_dir / "logs" / "model-worker.log").read_text()


def test_each_job_is_its_own_task_run_named_and_tagged_inside_a_shared_flow_run(platform: Platform) -> None:
    client = platform.client()
    ids = [submit(client, {"prompt": f"Count to {i}:", "max_tokens": 2, "temperature": 0})["id"] for i in range(12)]
    jobs = [wait_done(client, job_id)[0] for job_id in ids]
    assert all(j["status"] == "completed" for j in jobs)
    assert len({j["prefect_run_id"] for j in jobs}) == len(jobs)  # a record per job
    runs = [prefect_task_run(platform, j["prefect_run_id"]) for j in jobs]
    for job, run in zip(jobs, runs, strict=True):
        assert run.state.type.value == "COMPLETED"
        assert run.name == f"text job {job['id']} · {job['owner']} · normal"  # findable by job id in the UI
        assert {"bitinglip", "text", f"model:{job['model']}", f"owner:{job['owner']}"} <= set(run.tags)
    # jobs that arrive while a worker is busy join its open flow run instead of each paying a run's start
    assert len({r.flow_run_id for r in runs}) < len(jobs)
    assert all(r.flow_run_id is not None for r in runs)


def test_list_filters_and_pages(platform: Platform) -> None:
    client = platform.client()
    done = submit(client, {"prompt": "Hi", "max_tokens": 1})
    wait_done(client, done["id"])
    completed = client.get("/api/v1/tasks", params={"status": "completed", "limit": 500}).json()
    assert done["id"] in {j["id"] for j in completed["items"]}
    assert all(j["status"] == "completed" for j in completed["items"])
    page = client.get("/api/v1/tasks", params={"limit": 1, "offset": 1}).json()
    assert len(page["items"]) == 1 and page["total"] >= 2 and page["offset"] == 1
    texts = client.get("/api/v1/tasks", params={"type": "text", "limit": 500}).json()
    assert texts["total"] >= 1 and all(j["type"] == "text" for j in texts["items"])
    assert client.get("/api/v1/tasks", params={"type": "no-such-type"}).json()["total"] == 0
    assert_envelope(client.get("/api/v1/tasks", params={"status": "sleeping"}), 422)
    assert_envelope(client.get("/api/v1/tasks", params={"limit": 0}), 422)


def test_job_bad_inputs(platform: Platform) -> None:
    client = platform.client()
    assert_envelope(
        client.post("/api/v1/tasks", json={"type": "text", "params": {"model": "nope", "prompt": "x"}}),
        404,
        "model_not_found",
    )
    assert_envelope(
        client.post("/api/v1/tasks", json={"type": "text", "priority": "urgent", "params": {"prompt": "x"}}),
        422,
    )
    assert_envelope(client.post("/api/v1/tasks", json={"type": "video", "params": {"prompt": "x"}}), 422)
    assert_envelope(client.post("/api/v1/tasks", json={"type": "text", "params": {"max_tokens": 3}}), 422)
    assert_envelope(client.get("/api/v1/tasks/does-not-exist"), 404, "not_found")
    assert_envelope(client.delete("/api/v1/tasks/does-not-exist"), 404, "not_found")


def test_too_long_job_fails_with_the_reason(platform: Platform) -> None:
    client = platform.client()
    job, _ = wait_done(client, submit(client, {"prompt": "hello " * 9000, "max_tokens": 8})["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "context_length_exceeded"
    assert prefect_task_run_state(platform, job["prefect_run_id"]) == "FAILED"  # a bad request is not retried
    assert job["attempts"] == 1


def test_queue_status_counts(platform: Platform) -> None:
    body = platform.client().get("/api/v1/queue/status").json()
    assert body["by_status"]["completed"] >= 1
    assert set(body["queued_by_priority"]) == {"high", "normal", "low"}
    assert body["dispatcher_healthy"] is True


def test_running_job_can_be_cancelled(platform: Platform) -> None:
    client = platform.client()
    count = ", ".join(str(n) for n in range(1, 40))  # a list it goes on counting, not an essay that may end
    job = submit(client, {"prompt": count, "max_tokens": 2000, "temperature": 0, "raw": True})
    deadline = time.monotonic() + 60
    while client.get(f"/api/v1/tasks/{job['id']}").json()["status"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cancelled = client.delete(f"/api/v1/tasks/{job['id']}").json()
    assert cancelled["cancel_requested"] is True
    final, _ = wait_done(client, job["id"])
    assert final["status"] == "cancelled"
    assert final["result"]["usage"]["completion_tokens"] < 2000  # it stopped early, not at max_tokens
    assert prefect_task_run_state(platform, final["prefect_run_id"]) == "CANCELLED"  # not Completed
