"""Async job path: 200 one-token jobs from 1 and from 16 concurrent submitters, and the same 200
requests sent synchronously by 16 clients (the baseline).

Prints acceptance latency (target p95 <= 20 ms), orchestration overhead per job (end-to-end minus
engine time), completed jobs/s, and the async/sync ratio at 16 (target >= 0.8)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx

from bench.harness import jobs_in_flight, median, pct, running_platform
from tests.platform_harness import Platform

JOBS = 200
POLL_S = 0.1  # how often the round asks whether any job is still queued or running (the queue's counts)


def sync_round(platform: Platform, clients: int, tag: str) -> float:
    """The same one-token requests, sent and answered synchronously: requests/s."""
    per_client = JOBS // clients

    def client_loop(k: int) -> None:
        with platform.client(timeout=60) as client:
            for i in range(per_client):
                body = {"prompt": f"{tag} {k * per_client + i}:", "max_tokens": 1, "temperature": 0}
                response = client.post("/api/v1/inference/text", json=body)
                assert response.status_code == 200, response.text

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, range(clients)))
    rate = per_client * clients / (time.perf_counter() - t0)
    print(f"{clients:>2} sync clients: {per_client * clients} requests, {rate:6.1f} requests/s")
    return rate


def run_round(platform: Platform, submitters: int, tag: str) -> float:
    def submit(client: httpx.Client, i: int) -> tuple[str, float]:
        started = time.perf_counter()
        response = client.post(
            "/api/v1/tasks",
            json={"type": "text", "params": {"prompt": f"{tag} {i}:", "max_tokens": 1, "temperature": 0}},
        )
        elapsed = time.perf_counter() - started
        assert response.status_code == 202, response.text
        return response.json()["id"], elapsed

    per_submitter = JOBS // submitters
    accepted: list[tuple[str, float]] = []

    def submitter(k: int) -> list[tuple[str, float]]:
        with platform.client(timeout=60) as client:  # one keep-alive connection each
            return [submit(client, k * per_submitter + i) for i in range(per_submitter)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(submitters) as pool:
        for batch in pool.map(submitter, range(submitters)):
            accepted.extend(batch)
    ids = {job_id for job_id, _ in accepted}
    with platform.client(timeout=60) as client:
        while jobs_in_flight(client):
            time.sleep(POLL_S)
        wall = time.perf_counter() - t0
        page = client.get("/api/v1/tasks", params={"limit": 500}).json()["items"]
    mine = [j for j in page if j["id"] in ids]
    assert len(mine) == len(ids) and all(j["status"] in ("completed", "failed", "cancelled") for j in mine)
    failed = [j for j in mine if j["status"] != "completed"]
    created = [datetime.fromisoformat(j["created_at"]) for j in mine]
    finished = [datetime.fromisoformat(j["finished_at"]) for j in mine]
    e2e = [(f - c).total_seconds() for c, f in zip(created, finished, strict=True)]
    overhead = [t - (j["timings"]["engine_seconds"] or 0) for t, j in zip(e2e, mine, strict=True)]
    span = (max(finished) - min(created)).total_seconds()
    runs = {j["prefect_run_id"] for j in mine}
    latencies = [lat for _, lat in accepted]
    print(f"{submitters:>2} submitter(s): {len(mine)} jobs, {len(failed)} not completed, {len(runs)} task runs")
    print(
        f"    acceptance  p50 {median(latencies) * 1000:6.1f} ms  p95 {pct(latencies, 95) * 1000:6.1f} ms"
        "   (target p95 <= 20 ms)"
    )
    print(f"    end-to-end  p50 {median(e2e) * 1000:6.0f} ms  p95 {pct(e2e, 95) * 1000:6.0f} ms")
    queue = [j["timings"]["queue_seconds"] for j in mine]
    run = [j["timings"]["run_seconds"] for j in mine]
    engine = [j["timings"]["engine_seconds"] for j in mine]
    print(
        f"    accepted->started p50 {median(queue) * 1000:6.0f} ms   started->finished p50 {median(run) * 1000:6.0f} ms"
        f"   engine p50 {median(engine) * 1000:6.0f} ms"
    )
    print(f"    orchestration overhead per job (e2e - engine) p50 {median(overhead) * 1000:6.0f} ms")
    print(f"    completed   {len(mine) / span:6.1f} jobs/s (first accepted -> last finished), wall {wall:.1f}s")
    return len(mine) / wall


def main() -> None:
    with running_platform() as platform:
        run_round(platform, 1, "warm-up")  # first round also warms Prefect's task path
        print("--- measured ---")
        run_round(platform, 1, "sequential")
        async_rate = run_round(platform, 16, "concurrent")
        sync_rate = sync_round(platform, 16, "sync")
        print(f"async/sync at 16: {async_rate / sync_rate:.2f} (jobs/s over the round's wall time; target >= 0.8)")


if __name__ == "__main__":
    main()
