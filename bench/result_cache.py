"""Result cache: the same workload of repeated greedy chat requests (20 distinct prompts drawn with
Zipf-like weights, as a FAQ bot or a retried pipeline sends them) from 4 clients, once with every request
sent `Cache-Control: no-store` (the baseline: each one computed) and once with the cache, same platform,
same run. Reports requests/s, the hit ratio, and the latency of hits against computed answers.

    python -m bench.result_cache [requests-per-round]"""

from __future__ import annotations

import random
import sys
import threading
import time
import uuid

from bench.harness import median, pct, running_platform
from tests.platform_harness import Platform

CLIENTS = 4
PROMPTS = 20
MAX_TOKENS = 16


def _workload(requests: int, tag: str) -> list[str]:
    rng = random.Random(7)
    prompts = [f"In one sentence, what is topic {i}? ({tag})" for i in range(PROMPTS)]
    return rng.choices(prompts, weights=[1 / (i + 1) for i in range(PROMPTS)], k=requests)


def _round(platform: Platform, prompts: list[str], headers: dict[str, str]) -> tuple[float, dict[str, list[float]]]:
    """Requests/s and latencies by X-Cache outcome."""
    latencies: dict[str, list[float]] = {"hit": [], "miss": [], "bypass": []}
    todo = iter(prompts)
    lock = threading.Lock()

    def client_loop() -> None:
        with platform.client(timeout=300) as client:
            while True:
                with lock:
                    prompt = next(todo, None)
                if prompt is None:
                    return
                body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS, "temperature": 0}
                started = time.perf_counter()
                response = client.post("/api/v1/inference/text", json=body, headers=headers)
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, response.text
                with lock:
                    latencies[response.headers["x-cache"]].append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(prompts) / (time.perf_counter() - started), latencies


def _ms(values: list[float]) -> str:
    return f"p50 {median(values) * 1000:7.1f} ms  p95 {pct(values, 95) * 1000:7.1f} ms  (n={len(values)})"


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 160
    with running_platform() as platform:
        with platform.client() as client:  # warm the model
            client.post("/api/v1/inference/text", json={"prompt": "Hi", "max_tokens": 4})
        baseline_rate, baseline = _round(platform, _workload(requests, uuid.uuid4().hex), {"Cache-Control": "no-store"})
        cached_rate, cached = _round(platform, _workload(requests, uuid.uuid4().hex), {})
    hits = len(cached["hit"])
    print(f"{requests} greedy chat requests ({PROMPTS} distinct, Zipf), {CLIENTS} clients, {MAX_TOKENS} tokens:")
    print(f"  no-store (every request computed)  {baseline_rate:6.1f} req/s   {_ms(baseline['bypass'])}")
    print(f"  with the result cache              {cached_rate:6.1f} req/s   hit ratio {hits / requests:.2f}")
    print(f"    hits                             {_ms(cached['hit'])}")
    print(f"    misses (computed, then stored)   {_ms(cached['miss'])}")
    print(f"  requests/s with the cache vs without: {cached_rate / baseline_rate:.2f}x")
    print(f"  hit p50 vs computed p50: {median(cached['hit']) / median(baseline['bypass']):.3f}")


if __name__ == "__main__":
    main()
