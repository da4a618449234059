"""Embeddings throughput: sentences/s through the gateway at 1 and 8 concurrent clients (each sends
16 sentences per request) vs a direct in-process batched call on the same sentences, same run."""

from __future__ import annotations

import time

import httpx
import torch

from bench.harness import run_clients, running_platform, user_store
from bitinglip.engines.embeddings import EmbeddingEngine, EmbeddingRequest
from tests.platform_harness import Platform

MODEL = "all-minilm-l6-v2"
PER_REQUEST = 16
SECONDS = 8.0
SENTENCES = [f"Sentence number {i} talks about {topic}." for i in range(64) for topic in ("rivers", "trains")]


def direct() -> float:
    store = user_store()
    manifest = store.resolve(MODEL)
    engine = EmbeddingEngine.load(manifest.id, store.path(manifest), "cpu", torch.float32, None)
    batch = SENTENCES[: PER_REQUEST * 8]
    engine.run_batch([EmbeddingRequest(batch)])  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < SECONDS:
        engine.run_batch([EmbeddingRequest(batch)])
        done += len(batch)
    return done / (time.perf_counter() - started)


def through_gateway(platform: Platform, clients: int) -> float:
    counts = [0] * clients

    def embed(client: httpx.Client, k: int, i: int) -> None:
        texts = [SENTENCES[(k * 31 + i * PER_REQUEST + j) % len(SENTENCES)] for j in range(PER_REQUEST)]
        response = client.post("/api/v1/inference/embeddings", json={"input": texts})
        assert response.status_code == 200, response.text
        counts[k] += PER_REQUEST

    wall = run_clients(platform, clients, SECONDS, embed)
    return sum(counts) / wall


def main() -> None:
    baseline = direct()
    with running_platform() as platform:
        through_gateway(platform, 2)  # warm-up
        results = {n: through_gateway(platform, n) for n in (1, 8)}
    print(f"direct in-process batch of {PER_REQUEST * 8}: {baseline:7.1f} sentences/s")
    for n, rate in results.items():
        print(f"gateway, {n} client(s) x {PER_REQUEST}/request: {rate:7.1f} sentences/s   ratio {rate / baseline:.2f}")


if __name__ == "__main__":
    main()
