"""Backpressure and disconnects: a full queue refuses with Retry-After; a client that goes away
frees its slot in the running batch while its neighbours carry on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bitinglip.config import Settings
from bitinglip.engines.pool import ModelPool
from bitinglip.engines.types import Priority
from bitinglip.errors import Overloaded
from bitinglip.models.store import ModelStore
from bitinglip.schemas import TextGenerationParams
from tests.platform_harness import Platform


async def test_full_queue_is_refused_with_retry_after(model_store: ModelStore, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, max_batch_size=1, max_queue=2, max_wait_ms=0)
    pool = ModelPool(settings, model_store)
    try:
        loaded = await pool.get("smollm2-135m-instruct")
        long = TextGenerationParams(prompt="Tell me a story", max_tokens=40, temperature=0)

        async def until(check: Callable[[], bool]) -> None:
            for _ in range(500):
                if check():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("batcher never reached the expected state")

        running = asyncio.ensure_future(pool.generate_text(long, Priority.SYNC))
        await until(lambda: loaded.batcher.stats.running == 1)  # the only slot is taken
        waiting = [asyncio.ensure_future(pool.generate_text(long, Priority.SYNC)) for _ in range(2)]
        await until(lambda: loaded.batcher.stats.waiting == 2)  # the queue is full
        try:
            await pool.generate_text(long, Priority.SYNC)
            raise AssertionError("a third waiting request must be refused")
        except Overloaded as refused:
            assert refused.status_code == 503
            assert int(refused.headers()["Retry-After"]) >= 1
        results = await asyncio.gather(running, *waiting)
        assert all(r.completion_tokens > 0 for r in results)  # the accepted ones all finish
    finally:
        await pool.close()


def worker_running(platform: Platform) -> int:
    health = httpx.get(f"{platform.settings.worker_url}/health", timeout=10).json()
    return int(sum(m["running"] for m in health["models"]))


def test_disconnected_stream_frees_its_slot(platform: Platform) -> None:
    client = platform.client()
    story = [{"role": "user", "content": "Write a very long story about the sea."}]
    payload = {"messages": story, "max_tokens": 400, "temperature": 0}
    with client.stream("POST", "/api/v1/inference/text", json={**payload, "stream": True}) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(3)]
        assert '"delta"' in received[0] and '"delta"' in received[2]  # mid-generation
        assert worker_running(platform) == 1
    # the client hung up after a few tokens: the worker stops generating for it
    deadline = time.monotonic() + 10
    while worker_running(platform) != 0:
        assert time.monotonic() < deadline, "the abandoned request still occupies a batch slot"
        time.sleep(0.1)
    after = client.post("/api/v1/inference/text", json={"prompt": "Hi", "max_tokens": 3})
    assert after.status_code == 200
