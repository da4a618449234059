"""`bitinglip up` as users run it, with a real `kill -9`: a crashed model worker is restarted while
the gateway keeps answering (503 + Retry-After for inference, everything else as usual) and every
accepted job finishes exactly once; a held port is named before anything starts; SIGTERM stops it with
nothing left running."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from bitinglip.jobs.store import TERMINAL
from bitinglip.models.store import ModelStore
from tests.conftest import TEXT_MODEL, home_with_store
from tests.platform_harness import free_port
from tests.test_supervisor import gone

ROOT = Path(__file__).resolve().parents[2]
JOBS = 20


@dataclass
class Up:
    """A `bitinglip up --no-install` process on free ports under its own home."""

    process: subprocess.Popen[bytes]
    home: Path
    output: Path
    gateway: str
    worker: str

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def log_tail(self, child: str = "gateway") -> str:
        """For failure messages: what the child said last."""
        return (self.home / "logs" / f"{child}.log").read_text(errors="replace")[-3000:]

    def client(self) -> httpx.Client:
        key = (self.home / "admin.key").read_text().strip()
        return httpx.Client(base_url=self.gateway, timeout=60, headers={"Authorization": f"Bearer {key}"})

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def worker_pid(self) -> int | None:
        """The model worker among our descendants, by its command line."""
        for proc in self.descendants():
            try:
                if " ".join(proc.cmdline()).endswith("bitinglip.cli worker") and not gone(proc.pid):
                    return int(proc.pid)
            except psutil.NoSuchProcess:
                continue
        return None

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"`up` exited with {self.process.returncode}:\n{self.text()[-4000:]}"
            try:
                if httpx.get(f"{self.gateway}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"not ready after {timeout}s:\n{self.text()[-4000:]}"
            time.sleep(0.5)


def up_env(home: Path, **extra: str) -> tuple[dict[str, str], int, int]:
    """The environment of a fresh platform: nothing BITINGLIP_/PREFECT_ inherited, fast heartbeats
    (as tests/platform_harness.py's platform_settings), only the text model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITINGLIP_", "PREFECT_"))}
    gateway_port, worker_port = free_port(), free_port()
    env.update(
        {
            "BITINGLIP_HOME": str(home),
            "BITINGLIP_GATEWAY_PORT": str(gateway_port),
            "BITINGLIP_WORKER_PORT": str(worker_port),
            "BITINGLIP_PREFECT_PORT": str(free_port()),
            "BITINGLIP_WORKER_HEARTBEAT_S": "0.5",
            "BITINGLIP_WORKER_STALE_AFTER_S": "3.0",
            "BITINGLIP_JOB_ORPHAN_AFTER_S": "4.0",
            "BITINGLIP_REAPER_INTERVAL_S": "1.0",
            "BITINGLIP_JOB_REDISPATCH_AFTER_S": "8.0",
            "BITINGLIP_WORKER_MODELS": json.dumps([TEXT_MODEL]),
            "BITINGLIP_RATE_LIMIT_PER_MINUTE": "1000000",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **extra,
        }
    )
    return env, gateway_port, worker_port


def start_up(home: Path, **extra: str) -> Up:
    env, gateway_port, worker_port = up_env(home, **extra)
    output = home / "up.out"
    with output.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bitinglip.cli", "up", "--no-install"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Up(process, home, output, f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{worker_port}")


def running_under(home: Path) -> list[int]:
    """Live processes of the platform under `home` (every child `up` starts carries BITINGLIP_HOME),
    whoever their parent is now: what a stopped platform must not leave behind."""
    pids = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("BITINGLIP_HOME") == str(home) and not gone(proc.pid):
                pids.append(int(proc.pid))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def kill_everything(up: Up) -> None:
    """Test cleanup only: whatever is left of a failed test must not outlive it."""
    try:
        left = up.descendants()
    except psutil.NoSuchProcess:
        left = []
    up.process.kill()
    up.process.wait(30)
    for proc in left:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture
def platform(tmp_path: Path, model_store: ModelStore) -> Iterator[Up]:
    up = start_up(home_with_store(tmp_path / "home", model_store))
    try:
        up.wait_ready()
        yield up
    finally:
        if up.process.poll() is None:
            kill_everything(up)


def submit(platform: Up, client: httpx.Client, i: int) -> str:
    body = {"params": {"messages": [{"role": "user", "content": f"Count from {i} to {i + 5}."}], "max_tokens": 8}}
    response = client.post("/api/v1/tasks", json=body)
    assert response.status_code == 202, f"{response.text}\n{platform.log_tail()}"
    return str(response.json()["id"])


def wait_all(client: httpx.Client, jobs: list[str], timeout: float) -> list[dict[str, Any]]:
    """Every job's final view (the timeout only catches a hang: a shared CPU can be very slow)."""
    deadline = time.monotonic() + timeout
    while True:
        views = [client.get(f"/api/v1/tasks/{j}").json() for j in jobs]
        if all(v["status"] in TERMINAL for v in views):
            return views
        assert time.monotonic() < deadline, [(v["id"], v["status"], v["attempts"]) for v in views]
        time.sleep(1)


@pytest.mark.timeout(1500)  # the platform starts, runs 20 jobs twice over, restarts a worker: minutes on 2 cores
def test_killed_model_worker_is_restarted_while_the_gateway_answers(platform: Up) -> None:
    client = platform.client()
    jobs = [submit(platform, client, i) for i in range(JOBS)]
    deadline = time.monotonic() + 120
    while not client.get("/api/v1/tasks", params={"status": "running"}).json()["items"]:
        assert time.monotonic() < deadline, "no job started"
        time.sleep(0.05)
    victim = platform.worker_pid()
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    unfinished = [j for j in jobs if client.get(f"/api/v1/tasks/{j}").json()["status"] != "completed"]
    assert unfinished  # the worker died with work to do: nothing of it can finish until it is back

    seen_503 = 0
    other_5xx: list[str] = []
    deadline = time.monotonic() + 240
    while True:  # the platform keeps serving while the worker is down, until it is back
        assert platform.process.poll() is None, f"`up` stopped:\n{platform.text()[-4000:]}"
        health = httpx.get(f"{platform.gateway}/health", timeout=10)
        assert health.status_code in (200, 503) and "workers" in health.json()  # answers, maybe degraded
        assert client.get("/api/v1/tasks", params={"limit": 5}).status_code == 200
        sync = client.post("/api/v1/inference/text", json={"prompt": "Hi", "max_tokens": 1})
        if sync.status_code == 503:
            seen_503 += 1
            assert int(sync.headers["Retry-After"]) >= 1
            assert set(sync.json()["error"]) == {"message", "type", "param", "code"}  # the one envelope
        elif sync.status_code >= 500:
            other_5xx.append(f"{sync.status_code} {sync.text[:200]}\n{platform.log_tail()}")
        else:
            assert sync.status_code == 200, sync.text
        restarted = platform.worker_pid()
        if restarted not in (None, victim) and _ok(f"{platform.worker}/health") and sync.status_code == 200:
            break
        assert time.monotonic() < deadline, f"worker not back:\n{platform.text()[-4000:]}"
        time.sleep(0.1)
    assert other_5xx == []
    assert seen_503 > 0  # the restart takes seconds (backoff, imports, model load): 503s meanwhile
    assert "model-worker" in platform.text() and "exited with code -9; restarting in 1s" in platform.text()

    final = wait_all(client, jobs, timeout=900)
    assert [j["status"] for j in final] == ["completed"] * JOBS  # none lost
    assert all(j["attempts"] <= 2 for j in final)  # none ran twice to completion
    assert all(isinstance(j["result"]["text"], str) for j in final)
    assert any(j["attempts"] == 2 for j in final if j["id"] in unfinished)

    left = platform.descendants()
    platform.process.send_signal(signal.SIGTERM)
    assert platform.process.wait(120) == 0
    assert [p.pid for p in left if not gone(p.pid)] == []
    assert running_under(platform.home) == []
    assert "all processes stopped" in platform.text()


def test_a_held_port_is_named_before_anything_starts(tmp_path: Path, model_store: ModelStore) -> None:
    """`up` checks its ports first: a held one is named and nothing starts (it used to start the
    Prefect server into a crash loop; giving up on a crash loop is tested on the supervisor itself,
    tests/test_supervisor.py)."""
    home = home_with_store(tmp_path / "home", model_store)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        up = start_up(home, BITINGLIP_PREFECT_PORT=str(port))
        try:
            assert up.process.wait(60) == 1
        finally:
            if up.process.poll() is None:
                kill_everything(up)
    assert f"in use already: 127.0.0.1:{port} (Prefect server)" in up.text()
    assert running_under(home) == []


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
