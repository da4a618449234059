"""Benchmark plumbing: a throwaway platform on free ports, its store linked from the user's store
(installing SmolLM2 there first if needed), and small statistics helpers."""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bitinglip.config import Settings
from bitinglip.models import installer
from bitinglip.models.catalog import load_catalog
from bitinglip.models.store import ModelStore
from tests.conftest import home_with_store
from tests.platform_harness import Platform, platform_settings

MODEL = "smollm2-135m-instruct"


def user_store(backend: str = "transformers") -> ModelStore:
    """The user's store with SmolLM2 on transformers (the baselines are transformers' own generate loops), or
    a bench store beside it with SmolLM2 on another backend (`llama.cpp`: what `bitinglip up` serves)."""
    settings = Settings()
    root = settings.store_dir if backend == "transformers" else settings.home_dir / f"bench-models-{backend}"
    store = ModelStore(root)
    installed = {m.name for m in store.installed()}
    for name in (MODEL, "all-minilm-l6-v2"):
        if name not in installed:
            entry = load_catalog()[name]
            print(f"installing {name} into {store.root} (once)...", flush=True)
            installer.install_from(
                settings,
                store,
                entry.source,
                name=name,
                revision=entry.revision,
                task=entry.task,
                backend=backend if name == MODEL else "transformers",
            )
    return store


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    """CPU time used so far (user + system) by each process still there, by pid."""
    seconds = {}
    for p in processes:
        try:
            t = p.cpu_times()
            seconds[p.pid] = t.user + t.system
        except psutil.Error:
            continue
    return seconds


@contextmanager
def running_platform(env: dict[str, str] | None = None, store: ModelStore | None = None) -> Iterator[Platform]:
    store = store or user_store()
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as tmp:
        home = home_with_store(Path(tmp), store)
        platform = Platform(platform_settings(home, fast_heartbeat=False), env_overrides=env or {})
        try:
            platform.start_prefect()
            platform.start_worker(wait=False)
            platform.start_gateway()
            platform.wait_ready(timeout=180)
            yield platform
        finally:
            platform.close()


def run_clients(
    platform: Platform, clients: int, seconds: float, request: Callable[[httpx.Client, int, int], None]
) -> float:
    """`clients` threads, each with its own keep-alive client (the admin's key), calling `request(client, k, i)` until
    the deadline; returns the wall time."""
    deadline = time.perf_counter() + seconds

    def loop(k: int) -> None:
        with platform.client(timeout=300) as client:
            i = 0
            while time.perf_counter() < deadline:
                request(client, k, i)
                i += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def jobs_in_flight(client: httpx.Client) -> int:
    """Jobs queued or running on the platform, from the queue's counts (one query, however many jobs)."""
    by_status = client.get("/api/v1/queue/status").json()["by_status"]
    return int(by_status.get("queued", 0) + by_status.get("running", 0))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
