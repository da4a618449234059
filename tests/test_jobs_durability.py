"""Nothing is lost: jobs survive a gateway restart, a stopped worker and a Prefect outage.
These tests stop and restart real components, and leave the platform running again."""

from __future__ import annotations

import time

from tests.platform_harness import Platform
from tests.test_jobs import prefect_task_run_state, submit, wait_done


def test_queued_job_cancel_and_gateway_restart_lose_nothing(platform: Platform) -> None:
    platform.stop("model-worker")  # nothing can run: jobs stay queued
    try:
        client = platform.client()
        jobs = [submit(client, {"prompt": f"Say {i}", "max_tokens": 2, "temperature": 0}) for i in range(3)]
        deadline = time.monotonic() + 30  # once the worker's heartbeat goes stale, sync requests get 503
        while (
            sync := client.post("/api/v1/inference/text", json={"prompt": "Hi", "max_tokens": 2})
        ).status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert int(sync.headers["Retry-After"]) >= 1
        assert sync.json()["error"]["type"] == "service_unavailable"
        cancelled = client.delete(f"/api/v1/tasks/{jobs[0]['id']}").json()
        assert cancelled["status"] == "cancelled"
        platform.stop("gateway")
        platform.start_gateway()
    finally:
        platform.start_worker()
        platform.wait_ready()
    client = platform.client()
    final = [wait_done(client, j["id"])[0] for j in jobs]
    assert final[0]["status"] == "cancelled" and final[0]["result"] is None
    assert [j["status"] for j in final[1:]] == ["completed", "completed"]
    assert all(j["attempts"] == 1 for j in final[1:])  # ran exactly once


def test_job_submitted_while_prefect_is_down_completes_and_is_recorded(platform: Platform) -> None:
    """A worker with no flow run open cannot open one and claims nothing (the job waits queued); one
    whose flow run is still open runs it, and Prefect's client replays the task run's events once the
    server is back. Either way the job completes and Prefect has its record."""
    platform.stop("prefect-server")
    try:
        client = platform.client()
        started = time.perf_counter()
        job = submit(client, {"prompt": "Hello", "max_tokens": 2, "temperature": 0})
        assert time.perf_counter() - started < 2.0  # accepted without Prefect
        time.sleep(8)
        assert client.get(f"/api/v1/tasks/{job['id']}").json()["status"] in ("queued", "completed")
    finally:
        platform.start_prefect()
    final, _ = wait_done(platform.client(), job["id"], timeout=180)
    assert final["status"] == "completed"
    assert prefect_task_run_state(platform, final["prefect_run_id"]) == "COMPLETED"


def test_job_of_a_killed_worker_is_taken_back_and_finishes_once(platform: Platform) -> None:
    client = platform.client()
    essay = [{"role": "user", "content": "Write a very long essay about mountains."}]
    job = submit(client, {"messages": essay, "max_tokens": 200, "temperature": 0})
    deadline = time.monotonic() + 60
    while client.get(f"/api/v1/tasks/{job['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    platform.kill("model-worker")  # kill -9 mid-generation: no chance to clean up
    try:
        time.sleep(1)
        assert client.get(f"/api/v1/tasks/{job['id']}").json()["status"] == "running"
    finally:
        platform.start_worker()
        platform.wait_ready()
    final, _ = wait_done(client, job["id"], timeout=180)
    assert final["status"] == "completed", final
    assert final["attempts"] == 2  # the dead worker's attempt, then the new worker's
    assert final["error"] is not None and final["error"]["type"] == "worker_lost"  # why it ran twice
    assert final["result"]["usage"]["completion_tokens"] > 0
