"""The pieces under `up`'s stop and logs, with real processes and files: the pidfile lock (held,
stale after kill -9), log rotation of a child's output, and the stop reaching a process a child
started in a session of its own."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bitinglip.pidfile import AlreadyRunning, PidFile, is_stale, running
from bitinglip.supervisor import Supervisor

PY = sys.executable
HOLD = """
import sys, time
from pathlib import Path
from bitinglip.pidfile import PidFile
held = PidFile(Path(sys.argv[1]))  # kept: the lock lives as long as its file object
held.acquire({"gateway_url": "http://x"})
print("held", flush=True)
time.sleep(600)
"""
CHATTY = """
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"n": i, "event": "x" * 80, "level": "info"}), flush=i % 100 == 0)
"""
# Starts a grandchild in its own session (as a flow run may be), prints its pid, then lives.
ESCAPER = """
import subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(g.pid, flush=True)
time.sleep(600)
"""


def test_pidfile_is_held_while_its_process_lives_and_stale_after_kill(tmp_path: Path) -> None:
    path = tmp_path / "up.pid"
    assert running(path) is None and not is_stale(path)
    holder = subprocess.Popen([PY, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        info = running(path)
        assert info is not None and info.pid == holder.pid and info.details == {"gateway_url": "http://x"}
        with pytest.raises(AlreadyRunning, match=rf"already running from this home \(pid {holder.pid}\)"):
            PidFile(path).acquire()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        holder.kill()
        holder.wait()
    assert path.exists() and is_stale(path) and running(path) is None  # kill -9 left the file, not the lock
    mine = PidFile(path)
    mine.acquire()
    info = running(path)
    assert info is not None and info.pid != holder.pid
    mine.release()
    assert not path.exists() and running(path) is None


def test_a_childs_log_is_rotated_between_lines_and_capped(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "logs", {"PATH": "/usr/bin:/bin"}, rotation=lambda name: (20_000, 3))
    child = sup.start("chatty", [PY, "-c", CHATTY, "3000"])  # ~290 kB through a 20 kB cap
    child.process.wait(60)
    sup.stop_all(grace=2)  # drains the pump
    logs = tmp_path / "logs"
    names = sorted(p.name for p in logs.iterdir())
    assert names == ["chatty.log", "chatty.log.1", "chatty.log.2", "chatty.log.3"]
    kept: list[int] = []
    for name in ["chatty.log.3", "chatty.log.2", "chatty.log.1", "chatty.log"]:  # oldest first
        path = logs / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        data = path.read_text()
        assert len(data.encode()) <= 20_000 and data.endswith("\n")
        kept += [json.loads(line)["n"] for line in data.splitlines()]  # every line whole JSON
    assert kept == list(range(kept[0], 3000))  # in order, nothing lost within what is kept
    assert 3000 - kept[0] < 1000  # the older lines were dropped with the oldest files


def test_restart_events_go_through_the_capped_log(tmp_path: Path) -> None:
    from bitinglip.supervisor import RestartPolicy

    sup = Supervisor(tmp_path / "logs", {"PATH": "/usr/bin:/bin"}, rotation=lambda name: (20_000, 1))
    child = sup.start(
        "flaky", [PY, "-c", "print('boom', flush=True); raise SystemExit(3)"], restart=RestartPolicy(2, 300, 0.05)
    )
    deadline = time.monotonic() + 30
    while child.restarts < 2:
        assert time.monotonic() < deadline
        sup.check()
        time.sleep(0.02)
    sup.stop_all(grace=2)
    text = (tmp_path / "logs" / "flaky.log").read_text()
    assert text.count("boom") >= 2 and "restarting in" in text


def test_stop_reaches_what_a_child_started_in_its_own_session(tmp_path: Path) -> None:
    """A process in a session of its own escapes the group kill; the stop ends it anyway."""
    sup = Supervisor(tmp_path / "logs", {"PATH": "/usr/bin:/bin"})
    child = sup.start("escaper", [PY, "-c", ESCAPER])
    deadline = time.monotonic() + 30
    while not (tmp_path / "logs" / "escaper.log").read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = psutil.Process(int((tmp_path / "logs" / "escaper.log").read_text().split()[0]))
    assert grandchild.is_running() and psutil.Process(child.process.pid).children() == [grandchild]
    sup.stop_all(grace=2)
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
