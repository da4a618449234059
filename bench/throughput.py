"""Dynamic batching pays: the same prompts, 1/4/8/16 concurrent streaming clients, 64 new tokens each,
(a) through the gateway with batching on and (b) with max_batch_size=1, in one run, plus the ceiling:
a direct `model.generate` at batch 8 in this process. Targets here: a/b >= 3.5x at 8 clients with
p50 TTFT < 1 s, and (a) at 8 clients >= 0.8 of the ceiling."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import httpx
import torch

from bench.harness import MODEL, median, pct, run_clients, running_platform, user_store
from tests.platform_harness import Platform

TOKENS = 64
LEVELS = (1, 4, 8, 16)
SECONDS = 12.0
PROMPTS = [
    f"Here is a long and detailed story about a {who} who {what}. Once upon a time,"
    for who in ("baker", "pilot", "robot", "farmer", "painter", "sailor", "doctor", "wizard")
    for what in ("lost a map", "found a door")
]


@dataclass
class Level:
    clients: int
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    wall: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0


def one_request(client: httpx.Client, prompt: str, level: Level, lock: threading.Lock) -> None:
    payload = {"prompt": prompt, "max_tokens": TOKENS, "temperature": 0, "stream": True, "raw": True}
    started = time.perf_counter()
    first = None
    tokens = 0
    with client.stream("POST", "/api/v1/inference/text", json=payload) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if "delta" in event and first is None:
                first = time.perf_counter() - started
            if "result" in event:
                tokens = event["result"]["usage"]["completion_tokens"]
            assert "error" not in event, event
    with lock:
        level.tokens += tokens
        level.latencies.append(time.perf_counter() - started)
        level.ttfts.append(first if first is not None else float("nan"))


def run_level(platform: Platform, clients: int) -> Level:
    level, lock = Level(clients), threading.Lock()

    def generate(client: httpx.Client, k: int, i: int) -> None:
        one_request(client, PROMPTS[(k * 7 + i) % len(PROMPTS)], level, lock)

    level.wall = run_clients(platform, clients, SECONDS, generate)
    return level


def sweep(batch_size: int) -> dict[int, Level]:
    env = {"BITINGLIP_MAX_BATCH_SIZE": str(batch_size)}
    with running_platform(env) as platform:
        run_level(platform, 2)  # warm-up
        return {n: run_level(platform, n) for n in LEVELS}


def ceiling(batch: int = 8) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    store = user_store()
    path = store.path(store.resolve(MODEL))
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    encoded = tokenizer(PROMPTS[:batch], return_tensors="pt", padding=True)
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(**encoded, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False)
        best = max(best, batch * TOKENS / (time.perf_counter() - started))
    return best


def report(name: str, levels: dict[int, Level]) -> None:
    print(name)
    for n, lv in levels.items():
        print(
            f"  {n:>2} clients: {lv.tokens_per_s:7.1f} tok/s  latency p50 {median(lv.latencies):5.2f}s"
            f" p95 {pct(lv.latencies, 95):5.2f}s  TTFT p50 {median(lv.ttfts):5.2f}s p95 {pct(lv.ttfts, 95):5.2f}s"
            f"  ({len(lv.latencies)} requests)"
        )


def main() -> None:
    batched = sweep(8)
    unbatched = sweep(1)
    ceiling_tps = ceiling(8)
    report("(a) gateway, dynamic batching (max_batch_size=8)", batched)
    report("(b) gateway, max_batch_size=1", unbatched)
    print("ratio a/b by clients: " + "  ".join(
        f"{n}: {batched[n].tokens_per_s / unbatched[n].tokens_per_s:.2f}x" for n in LEVELS
    ))  # fmt: skip
    print(f"ceiling: direct model.generate batch 8 in-process: {ceiling_tps:.1f} tok/s")
    print(f"(a) at 8 clients / ceiling = {batched[8].tokens_per_s / ceiling_tps:.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
