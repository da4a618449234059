"""Interactive users while background work saturates the engine (issue #16, goal 1), on the default
model as users run it (the catalog's SmolLM2 GGUF on llama.cpp), through the gateway.

Three phases of the same length, in one run:
  A. interactive only: CLIENTS streaming chat clients, back to back (the baseline);
  B. background only: low-priority async text jobs, kept queued deep enough to saturate the engine
     (its ceiling: tokens/s with every batch slot busy);
  C. both at once.
Prints stream time to first token (p50/p95), interactive tokens/s, background tokens/s (tokens of jobs
finished in the window) and ratios. Targets: C's TTFT p95 <= 1.0 s; C's interactive tokens/s >= 0.9 of
A's; C's total tokens/s >= 0.9 of B's."""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.engines import Level, chat
from bench.harness import jobs_in_flight, median, pct, run_clients
from bitinglip.config import Settings
from bitinglip.models import installer
from bitinglip.models.catalog import load_catalog
from bitinglip.models.store import ModelStore
from tests.conftest import home_with_store
from tests.platform_harness import Platform, platform_settings

MODEL = "smollm2-135m-instruct"
CLIENTS = 4
SECONDS = 20.0
JOB_TOKENS = 48
BACKLOG = 24  # jobs kept queued or running while background work is on
TOPICS = ["rivers", "glass", "owls", "maps", "salt", "bells", "clouds", "ink", "kites", "moss", "tides", "wool"]


@dataclass
class Background:
    """A feeder that keeps BACKLOG low-priority jobs in the system, and what it submitted."""

    platform: Platform
    ids: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with self.platform.client(timeout=60) as client:
            i = 0
            while not self.stop.is_set():
                for _ in range(max(0, BACKLOG - jobs_in_flight(client))):
                    topic = TOPICS[i % len(TOPICS)]
                    body = {
                        "type": "text",
                        "priority": "low",
                        "params": {
                            "messages": [{"role": "user", "content": f"Write a long essay about {topic}."}],
                            "max_tokens": JOB_TOKENS,
                            "temperature": 0,
                        },
                    }
                    accepted = client.post("/api/v1/tasks", json=body)
                    assert accepted.status_code == 202, accepted.text
                    self.ids.append(accepted.json()["id"])
                    i += 1
                self.stop.wait(0.5)

    def tokens_between(self, client: httpx.Client, start: datetime, end: datetime) -> int:
        """Completion tokens of the jobs that finished inside the window."""
        tokens = 0
        for job_id in self.ids:
            job = client.get(f"/api/v1/tasks/{job_id}").json()
            if job["status"] != "completed" or not job["finished_at"]:
                continue
            finished = datetime.fromisoformat(job["finished_at"])
            if start <= (finished if finished.tzinfo else finished.replace(tzinfo=UTC)) <= end:
                tokens += job["result"]["usage"]["completion_tokens"]
        return tokens

    def cancel_all(self, client: httpx.Client) -> None:
        for job_id in self.ids:
            client.delete(f"/api/v1/tasks/{job_id}")


def interactive(platform: Platform) -> Level:
    level, lock = Level(CLIENTS), threading.Lock()
    prompts = [f"Write a short paragraph about {t}." for t in TOPICS]
    level.wall = run_clients(
        platform, CLIENTS, SECONDS, lambda c, k, i: chat(c, MODEL, prompts[(k * 3 + i) % len(prompts)], level, lock)
    )
    return level


def background_window(platform: Platform, with_interactive: bool) -> tuple[int, float, Level | None]:
    """(background tokens finished in the window, the window's seconds, the interactive level)."""
    feeder = Background(platform)
    thread = threading.Thread(target=feeder.run)
    thread.start()
    try:
        time.sleep(8)  # the backlog builds and the engine fills up before the window opens
        start = datetime.now(UTC)
        level = interactive(platform) if with_interactive else None
        if level is None:
            time.sleep(SECONDS)
        end = datetime.now(UTC)
    finally:
        feeder.stop.set()
        thread.join()
    with platform.client(timeout=120) as client:
        time.sleep(1)
        tokens = feeder.tokens_between(client, start, end)
        feeder.cancel_all(client)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # let the engine drain before the next phase
            if not jobs_in_flight(client):
                break
            time.sleep(0.5)
    return tokens, (end - start).total_seconds(), level


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-prio-") as root:
        store = ModelStore(Path(root) / "models")
        entry = load_catalog()[MODEL]
        settings = Settings(home=Path(root))
        installer.install_from(settings, store, entry.source, name=MODEL, revision=entry.revision, task=entry.task)
        with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as tmp:
            settings = platform_settings(home_with_store(Path(tmp), store), fast_heartbeat=False)
            platform = Platform(settings)
            try:
                platform.start_prefect()
                platform.start_worker(wait=False)
                platform.start_gateway()
                platform.wait_ready(timeout=180)
                interactive(platform)  # warm-up
                alone = interactive(platform)
                ceiling_tokens, ceiling_s, _ = background_window(platform, with_interactive=False)
                mixed_tokens, mixed_s, mixed = background_window(platform, with_interactive=True)
            finally:
                platform.close()
    assert mixed is not None
    ceiling = ceiling_tokens / ceiling_s
    background = mixed_tokens / mixed_s
    print(f"{MODEL} on llama.cpp, {CLIENTS} streaming clients x 64 tokens, low-priority jobs of {JOB_TOKENS} tokens")
    for name, lv in (("A interactive only", alone), ("C with background", mixed)):
        print(
            f"  {name:<20} {lv.tokens_per_s:6.1f} tok/s  TTFT p50 {median(lv.ttfts):5.2f}s"
            f" p95 {pct(lv.ttfts, 95):5.2f}s  errors {lv.errors}"
        )
    print(f"  B background only     {ceiling:6.1f} tok/s (the engine's ceiling)")
    print(f"  C background          {background:6.1f} tok/s")
    print(f"interactive TTFT p95 with background: {pct(mixed.ttfts, 95):.2f}s (target <= 1.0)")
    print(f"interactive tok/s C/A: {mixed.tokens_per_s / alone.tokens_per_s:.2f} (target >= 0.9)")
    print(f"total tok/s C / ceiling: {(mixed.tokens_per_s + background) / ceiling:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
