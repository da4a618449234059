"""Mixed load: 32 concurrent users for 60 s sending sync text (32-token replies), streaming text,
embeddings and async jobs, against (a) the embedded single-process default and (b) cluster mode on
this machine (Prefect on PostgreSQL + Redis, two gateways, two model workers), in the same run.
Each user waits ~`--think` seconds between requests, as a person or a client loop does. Reports
requests/s, p50/p95/p99 per kind and errors. Targets: 0 errors; sync p95 < 2 s.

    python -m bench.load [--users 32] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.harness import pct, running_platform, user_store
from tests.cluster_harness import Cluster, ClusterResources
from tests.conftest import home_with_store
from tests.platform_harness import Platform, platform_settings

KINDS = ("sync", "stream", "embeddings", "async")
SENTENCES = ["A man is playing a guitar.", "The weather is nice today.", "Cats sleep a lot.", "Trains are fast."]


@contextmanager
def running_cluster() -> Iterator[Cluster]:
    resources = ClusterResources()
    resources.create()
    with tempfile.TemporaryDirectory(prefix="bitinglip-load-") as tmp:
        home = home_with_store(Path(tmp), user_store())
        env = {**resources.env(), "BITINGLIP_WORKER_MODELS": '["smollm2-135m-instruct", "all-minilm-l6-v2"]'}
        settings = platform_settings(home, fast_heartbeat=False).model_copy(
            update={
                "database_url": env["BITINGLIP_DATABASE_URL"],
                "prefect_database_url": env["BITINGLIP_PREFECT_DATABASE_URL"],
                "prefect_redis_url": resources.redis_url,
                "redis_url": resources.redis_url,
            }
        )
        cluster = Cluster(settings, env_overrides=env)
        try:
            cluster.start_cluster()
            yield cluster
        finally:
            cluster.close()
            resources.drop()


def one(client: httpx.Client, kind: str, i: int) -> None:
    if kind == "sync":
        body = {"prompt": f"Tell me about the number {i}.", "max_tokens": 32, "temperature": 0}
        r = client.post("/api/v1/inference/text", json=body)
        r.raise_for_status()
    elif kind == "stream":
        body = {"prompt": f"Write about the colour {i}.", "max_tokens": 32, "temperature": 0, "stream": True}
        with client.stream("POST", "/api/v1/inference/text", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: {") and '"error"' in line:
                    raise RuntimeError(json.loads(line[6:])["error"]["message"])
    elif kind == "embeddings":
        client.post("/api/v1/inference/embeddings", json={"input": SENTENCES}).raise_for_status()
    else:
        r = client.post("/api/v1/tasks", json={"params": {"prompt": f"Hi {i}", "max_tokens": 8}})
        if r.status_code != 202:
            raise RuntimeError(f"{r.status_code} {r.text[:200]}")


def drive(platform: Platform, gateways: list[str], users: int, seconds: float, think: float) -> dict[str, object]:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def user(k: int) -> None:
        kind = KINDS[k % len(KINDS)]
        with platform.client(timeout=120) as client:
            client.base_url = httpx.URL(gateways[k % len(gateways)])
            i = 0
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    one(client, kind, i)
                    with lock:
                        latencies[kind].append(time.perf_counter() - started)
                except Exception as exc:
                    with lock:
                        errors[kind].append(f"{type(exc).__name__}: {exc}"[:200])
                i += 1
                time.sleep(random.uniform(0.5 * think, 1.5 * think))  # a user reads before asking again

    threads = [threading.Thread(target=user, args=(k,)) for k in range(users)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"wall": wall, "latencies": dict(latencies), "errors": dict(errors)}


def report(name: str, result: dict[str, object]) -> None:
    wall = float(result["wall"])  # type: ignore[arg-type]
    latencies: dict[str, list[float]] = result["latencies"]  # type: ignore[assignment]
    errors: dict[str, list[str]] = result["errors"]  # type: ignore[assignment]
    total = sum(len(v) for v in latencies.values())
    print(f"{name}: {total / wall:.1f} requests/s, {sum(len(v) for v in errors.values())} errors")
    for kind in KINDS:
        values = latencies.get(kind, [])
        print(
            f"  {kind:<10} {len(values) / wall:6.2f}/s  p50 {pct(values, 50):6.3f}s  p95 {pct(values, 95):6.3f}s"
            f"  p99 {pct(values, 99):6.3f}s  errors {len(errors.get(kind, []))}"
        )
    for kind, messages in errors.items():
        print(f"  first {kind} error: {messages[0]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds a user waits between requests")
    args = parser.parse_args()
    with running_platform() as platform:
        embedded = drive(platform, [platform.gateway], args.users, args.seconds, args.think)
    with running_cluster() as cluster:
        clustered = drive(cluster, list(cluster.gateway_urls.values()), args.users, args.seconds, args.think)
    print(
        f"{args.users} users, {args.seconds:.0f} s, think time ~{args.think:.1f} s, kinds {', '.join(KINDS)}"
        " (sync/stream: 32-token replies; async: 8-token jobs)"
    )
    report("(a) embedded default (SQLite, one gateway, one worker)", embedded)
    report("(b) cluster (PostgreSQL + Redis, two gateways, two workers)", clustered)


if __name__ == "__main__":
    main()
