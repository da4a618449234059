"""A real `bitinglip up` as an operator runs it: its own session (signals reach only it), a fresh
home and free ports, no models (a platform that starts in seconds), small log caps. Everything it
started is recorded by pid so a test can check that none of it outlives the stop."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bitinglip.platform import PROJECT_DIR
from tests.platform_harness import free_port

STOP_GRACE_S = 10
LOG_MAX_BYTES = 20_000


def up_env(home: Path, **extra: str) -> dict[str, str]:
    ports = {"GATEWAY": free_port(), "WORKER": free_port(), "PREFECT": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITINGLIP_", "PREFECT_"))}
    env.update(
        {
            "BITINGLIP_HOME": str(home),
            **{f"BITINGLIP_{name}_PORT": str(port) for name, port in ports.items()},
            "BITINGLIP_WORKER_MODELS": "[]",
            "BITINGLIP_STOP_GRACE_S": str(STOP_GRACE_S),
            "BITINGLIP_LOG_MAX_BYTES": str(LOG_MAX_BYTES),
            "BITINGLIP_LOG_BACKUP_COUNT": "2",
            "HF_HUB_OFFLINE": "1",
            "COLUMNS": "200",
            **extra,
        }
    )
    return env


def bitinglip(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bitinglip.cli", *args],
        env=env,
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def up_argv() -> list[str]:
    return [sys.executable, "-m", "bitinglip.cli", "up", "--no-install"]


@dataclass
class Up:
    """`bitinglip up`, started directly (`process`) or by an intermediate parent (`pid` only)."""

    home: Path
    env: dict[str, str]
    output: Path
    pid: int
    process: subprocess.Popen[bytes] | None = None
    platform: list[psutil.Process] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.env['BITINGLIP_GATEWAY_PORT']}"

    @property
    def ports(self) -> list[int]:
        return [int(self.env[f"BITINGLIP_{name}_PORT"]) for name in ("GATEWAY", "WORKER", "PREFECT")]

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_ready(self, timeout: float = 240) -> None:
        """Until `up` says ready (it printed the gateway's address after every health check passed)."""
        deadline = time.monotonic() + timeout
        while "ready in" not in self.text():
            assert psutil.pid_exists(self.pid), f"up exited before ready:\n{self.text()}"
            assert time.monotonic() < deadline, f"up not ready after {timeout}s:\n{self.text()}"
            time.sleep(0.5)
        self.platform = psutil.Process(self.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in self.platform)
        for expected in ("bitinglip.prefect_server", "bitinglip.cli worker", "bitinglip.cli gateway", "--pool gpu"):
            assert expected in names, names

    def wait_gone(self, timeout: float = STOP_GRACE_S + 40) -> None:
        """Until the supervisor has exited (reaped by us, or by whoever adopted it)."""
        if self.process is not None:
            self.process.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        while _alive(self.pid):
            assert time.monotonic() < deadline, f"up (pid {self.pid}) still running:\n{self.text()}"
            time.sleep(0.2)

    def leftovers(self) -> list[str]:
        """Whatever of the platform still runs: the processes seen at ready, and any process whose
        environment names this home (a flow run, a restarted child started after ready)."""
        found = {p.pid: p for p in self.platform if _alive_process(p)}
        for p in psutil.process_iter(["pid"]):
            try:
                ours = p.info["pid"] != os.getpid() and p.environ().get("BITINGLIP_HOME") == str(self.home)
                if ours and p.status() != psutil.STATUS_ZOMBIE:
                    found[p.pid] = p
            except psutil.Error:
                continue
        return [f"{p.pid} {' '.join(_cmdline(p))[:120]}" for p in found.values()]

    def busy_ports(self) -> list[int]:
        busy = []
        for port in self.ports:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    busy.append(port)
        return busy

    def kill_everything(self) -> None:
        """Test cleanup after a failure: nothing of ours may linger for the next test."""
        for p in [*self.platform, *(_process(self.pid),)]:
            try:
                if p is not None:
                    p.kill()
            except psutil.Error:
                pass
        if self.process is not None:
            self.process.wait(10)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _alive(pid: int) -> bool:
    process = _process(pid)
    return process is not None and _alive_process(process)


def _alive_process(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return ["?"]


def start_up(home: Path, env: dict[str, str] | None = None) -> Up:
    env = env or up_env(home)
    output = home.parent / f"{home.name}-up.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            up_argv(), env=env, cwd=PROJECT_DIR, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Up(home, env, output, process.pid, process)


# The intermediate parent: starts `up`, prints its pid, waits for it (a shell or `make` would).
PARENT = """
import subprocess, sys
child = subprocess.Popen(sys.argv[2:], stdout=open(sys.argv[1], "wb"), stderr=subprocess.STDOUT)
print(child.pid, flush=True)
child.wait()
"""


def start_up_under_parent(home: Path) -> tuple[Up, subprocess.Popen[str]]:
    env = up_env(home)
    output = home.parent / f"{home.name}-up.out"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(output), *up_argv()],
        env=env,
        cwd=PROJECT_DIR,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    return Up(home, env, output, pid), parent
