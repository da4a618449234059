"""Async-job acceptance: `POST /api/v1/tasks` from 16 concurrent submitters (one keep-alive
connection each, asyncio and aiohttp, so the load generator stays light on a 2-core box: ~75 us of CPU a
request, where httpx took ~480), for the embedded default (SQLite) and with the gateway DB on PostgreSQL.
Targets: p95 <= 20 ms and >= 500 accepted/s.

Two rounds of `POST`: closed loop (each submitter sends again as soon as it is answered: the most this
gateway accepts here, its p95 set by that queue, Little's law) and paced at 500/s, the goal's rate,
offered by the same 16 submitters on a fixed schedule, latency counted from each request's scheduled
time (the p95 a client sees at that rate).

Baselines in the same run: `GET /api/v1/auth/me` from the same 16 submitters: the same key check, rate
limit, logging and framework, without the job (the ceiling of this gateway and client here); and the
framework's floor, a bare FastAPI route under uvicorn (bench/floor_app.py) with the same client. Also
checks durability: a job answered 202 just before the gateway is killed with SIGKILL is there, and
runs, after a restart.

    python -m bench.acceptance [seconds-per-round]"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import psutil

from bench.harness import cpu_seconds, median, pct, running_platform
from bitinglip.platform import PROJECT_DIR
from bitinglip.supervisor import Supervisor
from tests.cluster_harness import ClusterResources
from tests.platform_harness import Platform, free_port

SUBMITTERS = 16
PACED_RATE = 500.0  # the goal's rate, offered by the same 16 submitters on a schedule
JOB = {"type": "text", "priority": "low", "params": {"prompt": "Hi", "max_tokens": 1, "temperature": 0}}


async def _round(
    platform: Platform, seconds: float, method: str, path: str, expect: int, rate: float | None = None
) -> tuple[float, list[float]]:
    headers = {"Authorization": f"Bearer {platform.admin_key}"}
    return await _load(platform.gateway, headers, seconds, method, path, expect, rate)


async def _load(
    base_url: str,
    headers: dict[str, str],
    seconds: float,
    method: str,
    path: str,
    expect: int,
    rate: float | None = None,
) -> tuple[float, list[float]]:
    """Closed loop (each submitter sends its next request when the last is answered) or, with `rate`,
    paced: each submitter sends on a fixed schedule of rate/SUBMITTERS a second, every request
    scheduled before the deadline is sent, and its latency counts from its scheduled time, so a slow
    answer that delays the next sends is not hidden (no coordinated omission). With one request in
    flight per submitter, a paced round offers less than `rate` whenever answers take longer than
    the schedule's gap (32 ms at 500/s): its printed rate shows it."""
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    gap = SUBMITTERS / rate if rate else 0.0

    async def submitter(k: int) -> None:
        connection = aiohttp.TCPConnector(limit=1)  # one keep-alive connection per submitter
        timeout = aiohttp.ClientTimeout(total=60)
        due = started + gap * k / SUBMITTERS  # paced submitters start staggered
        async with aiohttp.ClientSession(base_url, headers=headers, connector=connection, timeout=timeout) as client:
            while due < deadline if gap else time.perf_counter() < deadline:
                if gap:
                    if (wait := due - time.perf_counter()) > 0:
                        await asyncio.sleep(wait)
                    sent, due = due, due + gap
                else:
                    sent = time.perf_counter()
                async with client.request(method, path, json=JOB if method == "POST" else None) as response:
                    body = await response.read()
                latencies.append(time.perf_counter() - sent)
                assert response.status == expect, body

    await asyncio.gather(*(submitter(k) for k in range(SUBMITTERS)))
    return len(latencies) / (time.perf_counter() - started), latencies


def _report(label: str, rate: float, latencies: list[float]) -> None:
    p50, p95 = median(latencies) * 1000, pct(latencies, 95) * 1000
    print(f"  {label:<22} {rate:7.0f}/s   p50 {p50:6.1f} ms   p95 {p95:6.1f} ms")


def _durable(platform: Platform) -> None:
    """202, then SIGKILL the gateway at once: after a restart the job exists and completes."""
    with platform.client() as client:
        job_id = client.post("/api/v1/tasks", json={**JOB, "priority": "high"}).json()["id"]
    platform.kill("gateway")
    platform.start_gateway()
    with platform.client() as client:
        deadline = time.monotonic() + 120
        while (status := client.get(f"/api/v1/tasks/{job_id}").json()["status"]) != "completed":
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
    print("  durable: a job answered 202 right before kill -9 of the gateway was there and completed")


def _measure(platform: Platform, seconds: float, label: str) -> None:
    asyncio.run(_round(platform, 2, "POST", "/api/v1/tasks", 202))  # warm connections, caches, counters
    print(f"{label}, {SUBMITTERS} submitters, {seconds:.0f} s per round:")
    health_rate, health = asyncio.run(_round(platform, seconds, "GET", "/api/v1/auth/me", 200))
    _report("GET /api/v1/auth/me", health_rate, health)
    processes = {name: psutil.Process(child.process.pid) for name, child in platform.children.items()}
    processes["load generator (this process)"] = psutil.Process()
    before, started = cpu_seconds(list(processes.values())), time.perf_counter()
    rate, accepted = asyncio.run(_round(platform, seconds, "POST", "/api/v1/tasks", 202))
    after, elapsed = cpu_seconds(list(processes.values())), time.perf_counter() - started
    _report("POST /api/v1/tasks", rate, accepted)
    split = ", ".join(
        f"{name} {100 * (after[p.pid] - before[p.pid]) / elapsed:.0f}%"
        for name, p in processes.items()
        if p.pid in before and p.pid in after
    )
    print(f"  CPU during it (% of one core; 2 cores here): {split}")
    print(f"  accepted/s vs auth/me: {rate / health_rate:.2f}   (targets: p95 <= 20 ms, >= 500/s)")
    paced_rate, paced = asyncio.run(_round(platform, seconds, "POST", "/api/v1/tasks", 202, rate=PACED_RATE))
    _report(f"POST, paced {PACED_RATE:.0f}/s", paced_rate, paced)
    _durable(platform)


def _framework_floor(seconds: float) -> None:
    """The same client against one bare FastAPI route under uvicorn on this machine: what any Python
    gateway here starts from, before keys, limits, logs or a database."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bitinglip-floor-") as logs:
        sup = Supervisor(Path(logs), dict(os.environ))
        argv = [sys.executable, "-m", "uvicorn", "bench.floor_app:app", "--port", str(port), "--no-access-log"]
        sup.start("floor", [*argv, "--log-level", "warning"], cwd=PROJECT_DIR)
        try:
            sup.wait_http(f"{base_url}/me", timeout=30)
            asyncio.run(_load(base_url, {}, 2, "GET", "/me", 200))
            print(f"Framework floor, {SUBMITTERS} submitters, {seconds:.0f} s:")
            _report("GET /me (bare FastAPI)", *asyncio.run(_load(base_url, {}, seconds, "GET", "/me", 200)))
        finally:
            sup.stop_all()


@contextmanager
def _postgres() -> Iterator[dict[str, str]]:
    resources = ClusterResources()
    resources.create()
    try:
        yield {"BITINGLIP_DATABASE_URL": resources.env()["BITINGLIP_DATABASE_URL"]}
    finally:
        resources.drop()


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    _framework_floor(seconds)
    with running_platform() as platform:
        _measure(platform, seconds, "SQLite (embedded default)")
    with _postgres() as env, running_platform(env) as platform:
        _measure(platform, seconds, "PostgreSQL gateway DB")


if __name__ == "__main__":
    main()
