"""Gateway overhead on a sync request: the same 16-token greedy generation (a) by a direct engine
call in this process and (b) through the gateway -> model worker HTTP path. Target: b/a <= 1.05."""

from __future__ import annotations

import time

import torch

from bench.harness import MODEL, median, pct, running_platform, user_store
from bitinglip.engines.text import TextEngine
from bitinglip.engines.types import SamplingParams, TextRequest

PROMPT = "Once upon a time, in a small village by the sea,"
RUNS, WARMUP, TOKENS = 20, 3, 16


def main() -> None:
    """(a) and (b) alternate, with a pause between, so the machine's drift hits both alike."""
    store = user_store()
    manifest = store.resolve(MODEL)
    engine = TextEngine.load(manifest.id, store.path(manifest), "cpu", torch.float32, None)
    ids = engine.encode(PROMPT, None)
    payload = {"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "raw": True}  # the engine's input, as is
    a: list[float] = []
    b: list[float] = []
    with running_platform() as platform, platform.client(timeout=60) as client:
        for i in range(WARMUP + RUNS):
            started = time.perf_counter()
            result = engine.run_batch([TextRequest(ids, SamplingParams(max_tokens=TOKENS, temperature=0))])[0]
            direct = time.perf_counter() - started
            assert result.completion_tokens == TOKENS
            time.sleep(0.3)
            started = time.perf_counter()
            # the same greedy request each round: past the result cache, or the gateway would answer it alone
            response = client.post("/api/v1/inference/text", json=payload, headers={"Cache-Control": "no-store"})
            gateway = time.perf_counter() - started
            assert response.status_code == 200 and response.json()["text"] == result.text
            time.sleep(0.3)
            if i >= WARMUP:
                a.append(direct)
                b.append(gateway)
    ratios = [y / x for x, y in zip(a, b, strict=True)]
    print(f"{TOKENS}-token greedy generation, {RUNS} alternating pairs (after {WARMUP} warm-up)")
    print(f"  (a) direct engine   median {median(a) * 1000:7.1f} ms   p95 {pct(a, 95) * 1000:7.1f} ms")
    print(f"  (b) via gateway     median {median(b) * 1000:7.1f} ms   p95 {pct(b, 95) * 1000:7.1f} ms")
    print(
        f"  ratio b/a           median {median(b) / median(a):.3f}   p95 {pct(b, 95) / pct(a, 95):.3f}"
        f"   per-pair median {median(ratios):.3f}   (target <= 1.05)"
    )
    print(f"  gateway overhead    median {(median(b) - median(a)) * 1000:+.1f} ms")


if __name__ == "__main__":
    main()
