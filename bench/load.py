"""Mixed load as clients see it: 32 concurrent users for 60 s sending sync chat (exactly 32-token replies:
`ignore_eos`), streaming chat, embeddings, low-priority async jobs (8 tokens) and control-plane reads
(`GET /api/v1/tasks`), against (a) the embedded single-process default and (b) cluster mode on this
machine (Prefect on PostgreSQL + Redis, two gateways, two model workers), in the same run. Chat goes
through the model's chat template (`messages`), every prompt is the user's own (no result-cache hits).
Each user waits ~`--think` seconds between requests, as a person or a client loop does. Reports, per
kind, requests/s and latency p50/p95/p99; for streams the time to first token and the inter-token
latency p50/p95; async acceptance p95; the background backlog left queued at the end; errors.
Targets: 0 errors; sync p95 < 2 s; stream TTFT p95 <= 1 s.

    python -m bench.load [--users 32] [--seconds 60]
"""

from __future__ import annotations

import argparse
import itertools
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
from bitinglip.models.store import ModelStore
from tests.cluster_harness import Cluster, ClusterResources
from tests.conftest import home_with_store
from tests.platform_harness import Platform, platform_settings

KINDS = ("sync", "stream", "embeddings", "async", "control")
SENTENCES = ["A man is playing a guitar.", "The weather is nice today.", "Cats sleep a lot.", "Trains are fast."]


@contextmanager
def running_cluster(store: ModelStore) -> Iterator[Cluster]:
    resources = ClusterResources()
    resources.create()
    with tempfile.TemporaryDirectory(prefix="bitinglip-load-") as tmp:
        home = home_with_store(Path(tmp), store)
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


def _chat(k: int, i: int, **extra: object) -> dict[str, object]:
    content = f"User {k}, question {i}: tell me about the number {i * 7 + k}."
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 32, "ignore_eos": True, **extra}


def one(client: httpx.Client, kind: str, k: int, i: int, timings: dict[str, list[float]]) -> None:
    """One request of `kind` by user `k`; stream timings go to `timings` ("ttft", "itl")."""
    if kind == "sync":
        client.post("/api/v1/inference/text", json=_chat(k, i, temperature=0)).raise_for_status()
    elif kind == "stream":
        started = time.perf_counter()
        arrivals: list[float] = []
        with client.stream("POST", "/api/v1/inference/text", json=_chat(k, i, stream=True)) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: {") and '"error"' in line:
                    raise RuntimeError(json.loads(line[6:])["error"]["message"])
                if line.startswith("data: {") and '"delta"' in line:
                    arrivals.append(time.perf_counter())
        if arrivals:
            timings["ttft"].append(arrivals[0] - started)
            timings["itl"].extend(b - a for a, b in itertools.pairwise(arrivals))
    elif kind == "embeddings":
        client.post("/api/v1/inference/embeddings", json={"input": SENTENCES}).raise_for_status()
    elif kind == "async":
        job = {"priority": "low", "params": {"prompt": f"Hi {k}-{i}", "max_tokens": 8, "ignore_eos": True}}
        r = client.post("/api/v1/tasks", json=job)
        if r.status_code != 202:
            raise RuntimeError(f"{r.status_code} {r.text[:200]}")
    else:
        client.get("/api/v1/tasks", params={"limit": 20}).raise_for_status()


def drive(platform: Platform, gateways: list[str], users: int, seconds: float, think: float) -> dict[str, object]:
    latencies: dict[str, list[float]] = defaultdict(list)
    timings: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def user(k: int) -> None:
        kind = KINDS[k % len(KINDS)]
        mine: dict[str, list[float]] = defaultdict(list)
        with platform.client(timeout=120) as client:
            client.base_url = httpx.URL(gateways[k % len(gateways)])
            i = 0
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    one(client, kind, k, i, mine)
                    with lock:
                        latencies[kind].append(time.perf_counter() - started)
                except Exception as exc:
                    with lock:
                        errors[kind].append(f"{type(exc).__name__}: {exc}"[:200])
                i += 1
                time.sleep(random.uniform(0.5 * think, 1.5 * think))  # a user reads before asking again
        with lock:
            for name, values in mine.items():
                timings[name].extend(values)

    threads = [threading.Thread(target=user, args=(k,)) for k in range(users)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    with platform.client() as client:
        backlog = client.get(f"{gateways[0]}/api/v1/queue/status").json()["queued_by_priority"]
    return {
        "wall": wall,
        "latencies": dict(latencies),
        "timings": dict(timings),
        "errors": dict(errors),
        "backlog": backlog,
    }


def report(name: str, result: dict[str, object]) -> None:
    wall = float(result["wall"])  # type: ignore[arg-type]
    latencies: dict[str, list[float]] = result["latencies"]  # type: ignore[assignment]
    timings: dict[str, list[float]] = result["timings"]  # type: ignore[assignment]
    errors: dict[str, list[str]] = result["errors"]  # type: ignore[assignment]
    total = sum(len(v) for v in latencies.values())
    print(f"{name}: {total / wall:.1f} requests/s, {sum(len(v) for v in errors.values())} errors")
    for kind in KINDS:
        values = latencies.get(kind, [])
        print(
            f"  {kind:<10} {len(values) / wall:6.2f}/s  p50 {pct(values, 50):6.3f}s  p95 {pct(values, 95):6.3f}s"
            f"  p99 {pct(values, 99):6.3f}s  errors {len(errors.get(kind, []))}"
        )
    ttft, itl = timings.get("ttft", []), timings.get("itl", [])
    print(f"  stream TTFT p50 {pct(ttft, 50):6.3f}s  p95 {pct(ttft, 95):6.3f}s   (target p95 <= 1.0 s)")
    print(f"  stream inter-token latency p50 {pct(itl, 50) * 1000:6.1f} ms  p95 {pct(itl, 95) * 1000:6.1f} ms")
    print(f"  background backlog left queued at the end: {result['backlog']}")
    for kind, messages in errors.items():
        print(f"  first {kind} error: {messages[0]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds a user waits between requests")
    parser.add_argument("--backend", default="llama.cpp", help="SmolLM2's engine (default: what `up` serves)")
    args = parser.parse_args()
    store = user_store(args.backend)
    with running_platform(store=store) as platform:
        embedded = drive(platform, [platform.gateway], args.users, args.seconds, args.think)
    with running_cluster(store) as cluster:
        clustered = drive(cluster, list(cluster.gateway_urls.values()), args.users, args.seconds, args.think)
    print(
        f"SmolLM2 on {args.backend}; {args.users} users, {args.seconds:.0f} s, think time ~{args.think:.1f} s,"
        f" kinds {', '.join(KINDS)}"
        " (sync/stream: 32-token chat replies; async: 8-token low-priority jobs; control: GET /api/v1/tasks)"
    )
    report("(a) embedded default (SQLite, one gateway, one worker)", embedded)
    report("(b) cluster (PostgreSQL + Redis, two gateways, two workers)", clustered)


if __name__ == "__main__":
    main()
