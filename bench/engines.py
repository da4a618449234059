"""Engine backends on the default model (SmolLM2-135M-Instruct, the Q4_1 GGUF the catalog installs), in
one run: (a) llama.cpp serving the GGUF as installed, (b) transformers serving the same GGUF converted to
fp32 safetensors, both through the gateway with the same streamed chat requests; and (c) a plain
llama-cpp-python loop in this process (`Llama.create_chat_completion`), the engine's own ceiling.

Targets (issue #15): a/b >= 4x at 1 client; a at 8 clients >= 2x b at 8 clients; a >= 0.9 of c at 1
client and above c at 8; a's memory <= 0.3x b's; cold start to first token <= 1 s for a."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.harness import median, pct, run_clients
from bitinglip.config import Settings
from bitinglip.models import installer
from bitinglip.models.catalog import load_catalog
from bitinglip.models.store import ModelStore
from tests.conftest import home_with_store
from tests.platform_harness import Platform, platform_settings

CATALOG_MODEL = "smollm2-135m-instruct"
BACKENDS = {"llama.cpp": "smol-gguf", "transformers": "smol-fp32"}  # backend -> store name in this run
TOKENS = 64
SECONDS = 15.0
LEVELS = (1, 8)
TOPICS = ["the sea", "a lighthouse", "bread", "the moon", "a red bicycle", "winter", "a small robot", "tea"]
PROMPTS = [f"Write a short paragraph about {t}." for t in TOPICS] + [f"Give me three facts about {t}." for t in TOPICS]


@dataclass
class Level:
    clients: int
    tokens: int = 0
    ttfts: list[float] = field(default_factory=list)
    wall: float = 0.0
    errors: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0


def install_both(root: Path) -> ModelStore:
    """The catalog's GGUF installed twice: as it is for llama.cpp, converted for transformers."""
    store = ModelStore(root / "models")
    entry = load_catalog()[CATALOG_MODEL]
    settings = Settings(home=root)
    for backend, name in BACKENDS.items():
        installer.install_from(
            settings, store, entry.source, name=name, revision=entry.revision, task="text", backend=backend
        )
    return store


def chat(client: httpx.Client, model: str, prompt: str, level: Level, lock: threading.Lock) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started, first, tokens = time.perf_counter(), None, 0
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            with lock:
                level.errors += 1
            return
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if first is None and any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                first = time.perf_counter() - started
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    with lock:
        level.tokens += tokens
        if first is not None:
            level.ttfts.append(first)


def run_level(platform: Platform, model: str, clients: int) -> Level:
    level, lock = Level(clients), threading.Lock()
    level.wall = run_clients(
        platform, clients, SECONDS, lambda c, k, i: chat(c, model, PROMPTS[(k * 5 + i) % len(PROMPTS)], level, lock)
    )
    return level


def memory_of(platform: Platform, model_id: str) -> int:
    with platform.client() as client:
        workers = client.get("/api/v1/workers").json()
    return max(
        int(m.get("memory_bytes", 0)) for w in workers["model_workers"] for m in w["models"] if m["id"] == model_id
    )


def through_gateway(store: ModelStore) -> tuple[dict[str, dict[int, Level]], dict[str, int]]:
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-engines-") as tmp:
        settings = platform_settings(home_with_store(Path(tmp), store), fast_heartbeat=False)
        platform = Platform(settings.model_copy(update={"worker_models": []}))
        try:
            platform.start_prefect()
            platform.start_worker(wait=False)
            platform.start_gateway()
            platform.wait_ready(timeout=180)
            levels: dict[str, dict[int, Level]] = {}
            memory: dict[str, int] = {}
            for backend, name in BACKENDS.items():
                run_level(platform, name, 2)  # loads the model, warms up
                levels[backend] = {n: run_level(platform, name, n) for n in LEVELS}
                memory[backend] = memory_of(platform, store.resolve(name).id)
            return levels, memory
        finally:
            platform.close()


def plain_llama(store: ModelStore) -> Level:
    """llama-cpp-python's own chat loop, one request at a time (it has no batching), every core."""
    import llama_cpp

    manifest = store.resolve(BACKENDS["llama.cpp"])
    gguf = next(store.path(manifest).glob("*.gguf"))
    llm = llama_cpp.Llama(str(gguf), n_ctx=4096, n_threads=os.cpu_count() or 1, verbose=False)
    llm.create_chat_completion([{"role": "user", "content": PROMPTS[0]}], max_tokens=8)  # warm-up
    level = Level(1)
    deadline, started, i = time.perf_counter() + SECONDS, time.perf_counter(), 0
    while time.perf_counter() < deadline:
        t0, first = time.perf_counter(), None
        for chunk in llm.create_chat_completion(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], max_tokens=TOKENS, temperature=0, stream=True
        ):
            if first is None and chunk["choices"][0]["delta"].get("content"):  # type: ignore[index]
                first = time.perf_counter() - t0
            level.tokens += 1 if chunk["choices"][0]["delta"].get("content") else 0  # type: ignore[index]
        level.ttfts.append(first or float("nan"))
        i += 1
    level.wall = time.perf_counter() - started
    return level


COLD_START = """
import sys, time, torch
from bitinglip.engines.pool import ENGINES
from bitinglip.engines.protocol import Placement
from bitinglip.engines.batcher import BatchKnobs
from bitinglip.engines.types import SamplingParams, TextRequest
from bitinglip.models.store import ModelStore
from pathlib import Path
started = time.perf_counter()  # a worker has its libraries imported already: from here on is the load
store = ModelStore(Path(sys.argv[1])); manifest = store.resolve(sys.argv[2])
engine = ENGINES[("text", manifest.backend)](manifest.id, store.path(manifest), Placement("cpu", torch.float32))
engine.make_batcher(None, BatchKnobs(8, 5, 64, continuous=False), None)
first = []
ids = engine.encode(None, [{"role": "user", "content": "Hello!"}])
sink = lambda delta: first.append(time.perf_counter())
engine.run_batch([TextRequest(ids, SamplingParams(max_tokens=1, temperature=0), sink)])
print(first[0] - started)
"""


def cold_start(store: ModelStore, name: str) -> float:
    """A fresh process, libraries imported: load, then the first token of a chat reply (what a request
    to a model that is not loaded costs a running worker)."""
    out = subprocess.run([sys.executable, "-c", COLD_START, str(store.root), name], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"cold start of {name} failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-store-") as root:
        store = install_both(Path(root))
        cold = {backend: cold_start(store, name) for backend, name in BACKENDS.items()}
        before = plain_llama(store)
        levels, memory = through_gateway(store)
        # the ceiling is the better of two runs, one on each side of the gateway's: on a shared
        # 2-core box a single run can be a quarter off, and the ratio must not flatter us
        ceiling = max(before, plain_llama(store), key=lambda level: level.tokens_per_s)
    a, b = levels["llama.cpp"], levels["transformers"]
    print(f"{CATALOG_MODEL}, streamed chat, {TOKENS} max tokens, greedy, {SECONDS:.0f} s per level")
    for backend, by_clients in levels.items():
        for n, lv in by_clients.items():
            print(
                f"  {backend:<12} {n} client(s): {lv.tokens_per_s:6.1f} tok/s  TTFT p50 {median(lv.ttfts):5.2f}s"
                f" p95 {pct(lv.ttfts, 95):5.2f}s  errors {lv.errors}"
            )
    print(f"  plain llama-cpp-python loop:  {ceiling.tokens_per_s:6.1f} tok/s  TTFT p50 {median(ceiling.ttfts):5.2f}s")
    print(f"a/b at 1 client:  {a[1].tokens_per_s / b[1].tokens_per_s:.2f}x  (target >= 4)")
    print(f"a/b at 8 clients: {a[8].tokens_per_s / b[8].tokens_per_s:.2f}x  (target >= 2)")
    print(f"a/plain loop: 1 client {a[1].tokens_per_s / ceiling.tokens_per_s:.2f} (target >= 0.9), "
          f"8 clients {a[8].tokens_per_s / ceiling.tokens_per_s:.2f} (target > 1)")  # fmt: skip
    print(f"memory: llama.cpp {memory['llama.cpp'] / 1e6:.0f} MB, transformers {memory['transformers'] / 1e6:.0f} MB, "
          f"ratio {memory['llama.cpp'] / memory['transformers']:.2f} (target <= 0.3)")  # fmt: skip
    print(f"cold start to first token: llama.cpp {cold['llama.cpp']:.2f}s (target <= 1), "
          f"transformers {cold['transformers']:.2f}s")  # fmt: skip


if __name__ == "__main__":
    main()
