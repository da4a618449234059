"""`bitinglip up` stops everything it started, whatever stops it: SIGINT, SIGTERM, SIGHUP, its
parent dying, `bitinglip down`, even SIGKILL of the supervisor itself. Real platforms (Prefect
server, model worker, both pool workers, gateway); afterwards no process of the platform is left
(by pid, and by any process whose environment names the home) and every port is free."""

from __future__ import annotations

import os
import signal
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ops.up_process import (
    LOG_MAX_BYTES,
    Up,
    bitinglip,
    start_up,
    start_up_under_parent,
    up_env,
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def assert_all_stopped(up: Up) -> None:
    deadline = time.monotonic() + 15  # a killed process can take a moment to be reaped by its adopter
    while (left := up.leftovers()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], "still running after the stop:\n" + "\n".join(left) + f"\n--- up said:\n{up.text()}"
    assert up.busy_ports() == []


@pytest.fixture
def cleanup() -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        up.kill_everything()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_stops_every_child(home: Path, sig: signal.Signals, cleanup: list[Up], tmp_path: Path) -> None:
    notify = None
    env = up_env(home)
    if sig == signal.SIGTERM:  # what systemd sends; it also listens for READY=1 / STOPPING=1
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify.sock"))
        notify.settimeout(0)
        env["NOTIFY_SOCKET"] = str(tmp_path / "notify.sock")
    up = start_up(home, env)
    cleanup.append(up)
    up.wait_ready()
    assert httpx.get(f"{up.gateway}/health", timeout=10).status_code == 200
    if notify is not None:  # systemd hears from the supervisor alone
        assert all("NOTIFY_SOCKET" not in process.environ() for process in up.platform)
        with httpx.Client(base_url=up.gateway, headers={"Authorization": "Bearer bl-000000000000-" + "x" * 43}) as c:
            for _ in range(300):  # each one an audit line (request_denied): ~60 kB through a 20 kB cap
                assert c.get("/api/v1/auth/me").status_code == 401
    os.kill(up.pid, sig)
    up.wait_gone()
    assert up.process is not None and up.process.returncode == 0, up.text()
    assert f"stopping ({sig.name})" in up.text() and "all processes stopped" in up.text()
    assert_all_stopped(up)
    assert not (home / "up.pid").exists()
    if notify is not None:
        messages = []
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except BlockingIOError:
                break
        notify.close()
        assert messages[0].startswith("READY=1") and messages[-1] == "STOPPING=1"
        assert_logs_capped(home)


def assert_logs_capped(home: Path) -> None:
    """Each component's file rotated at the cap (2 backups here), whole lines only, all private."""
    logs = home / "logs"
    files = sorted(logs.iterdir())
    names = {p.name for p in files}
    assert {"gateway.log", "model-worker.log", "prefect-server.log", "pool-worker-gpu.log"} <= names
    assert {"gateway.log.1", "gateway.log.2"} <= names  # the denied requests' audit lines, rotated
    assert not any(n.endswith(".log.3") for n in names)  # backup_count 2: the oldest went
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        data = path.read_bytes()
        assert len(data) <= LOG_MAX_BYTES + 2000, path  # the cap, give or take the line that crossed it
        assert data == b"" or data.endswith(b"\n"), path  # rotated between lines, never inside one


def test_the_parent_dying_stops_everything(home: Path, cleanup: list[Up]) -> None:
    """`up` under a shell-like parent that is killed -9: the kernel tells `up` (PR_SET_PDEATHSIG),
    which stops as on SIGTERM."""
    up, parent = start_up_under_parent(home)
    cleanup.append(up)
    up.wait_ready()
    parent.kill()
    parent.wait(10)
    up.wait_gone()
    assert "stopping (SIGTERM)" in up.text() or "stopping (parent exited)" in up.text(), up.text()
    assert_all_stopped(up)


def test_the_supervisor_killed_takes_its_children_along(home: Path, cleanup: list[Up]) -> None:
    """SIGKILL leaves the supervisor no say: each child was bound to it (PR_SET_PDEATHSIG) and
    stops on its own; the pidfile it left is seen as stale."""
    up = start_up(home)
    cleanup.append(up)
    up.wait_ready()
    os.kill(up.pid, signal.SIGKILL)
    up.wait_gone()
    deadline = time.monotonic() + 60  # no supervisor to escalate: each child's own shutdown
    while up.leftovers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert_all_stopped(up)
    assert (home / "up.pid").exists()
    down = bitinglip(up.env, "down")
    assert down.returncode == 0 and "stale pidfile" in down.stdout, down.stdout + down.stderr


def test_down_status_health_and_a_second_up(home: Path, cleanup: list[Up]) -> None:
    up = start_up(home)
    cleanup.append(up)
    up.wait_ready()
    status = bitinglip(up.env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"pid {up.pid}" in status.stdout
    health = bitinglip(up.env, "health")
    assert health.returncode == 0 and health.stdout.startswith("ok"), health.stdout + health.stderr
    second = start_up(home, up.env)  # same home, same ports
    cleanup.append(second)
    second.wait_gone(timeout=60)
    assert second.process is not None and second.process.returncode == 1
    assert f"already running from this home (pid {up.pid})" in second.text()
    assert "bitinglip down" in second.text()
    assert up.process is not None and up.process.poll() is None  # the first one is untouched
    assert httpx.get(f"{up.gateway}/health", timeout=10).status_code == 200

    down = bitinglip(up.env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"stopped (supervisor pid {up.pid})" in down.stdout
    up.wait_gone()
    assert up.process.returncode == 0 and "stopping (SIGTERM)" in up.text()
    assert_all_stopped(up)
    again = bitinglip(up.env, "down")
    assert again.returncode == 0 and "no platform is running" in again.stdout
    after = bitinglip(up.env, "health")
    assert after.returncode == 1 and after.stdout.startswith("down:")
    status = bitinglip(up.env, "status")
    assert status.returncode == 1 and "not running" in status.stdout


def test_up_refuses_ports_in_use(home: Path) -> None:
    env = up_env(home)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["BITINGLIP_GATEWAY_PORT"])))
        squatter.listen()
        result = bitinglip(env, "up", "--no-install")
    assert result.returncode == 1
    assert f"127.0.0.1:{env['BITINGLIP_GATEWAY_PORT']} (gateway)" in result.stdout
    assert not (home / "up.pid").exists()
