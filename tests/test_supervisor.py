"""The supervisor with real child processes (tiny `python -c` programs): a child that dies is
restarted with backoff, a crash loop gives up loudly, a child without a restart policy still stops
everything at once (the test harnesses rely on that), and stop_all leaves nothing running."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from bitinglip.supervisor import Child, ChildDied, RestartPolicy, Supervisor

PY = sys.executable
FAST = {"first_delay_s": 0.05, "max_delay_s": 1.0}  # the backoff's shape, without the wait

CRASH = "print('boom: out of cheese', flush=True); raise SystemExit(3)"
# Dies the first time it runs (no marker yet), then keeps running.
CRASH_ONCE = """
import pathlib, sys, time
marker = pathlib.Path(sys.argv[1])
if not marker.exists():
    marker.touch()
    raise SystemExit(7)
print('up again', flush=True)
time.sleep(600)
"""
# Starts a grandchild (its pid into the file named by argv[1]), then lives (or dies, with argv[2]).
WITH_GRANDCHILD = """
import pathlib, subprocess, sys, time
g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
pathlib.Path(sys.argv[1]).write_text(str(g.pid))
if len(sys.argv) > 2:
    raise SystemExit(1)
time.sleep(600)
"""
IGNORES_SIGTERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print('ready', flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody has reaped yet (it runs nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def until(sup: Supervisor, done: Callable[[], bool], timeout: float = 60) -> None:
    """Drive the supervisor's loop as `up` does until `done` (the timeout only catches a hang)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        sup.check()
        time.sleep(0.02)


def read_pid(path: Path, sup: Supervisor) -> int:
    until(sup, lambda: path.exists() and path.read_text().strip() != "")
    return int(path.read_text())


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    supervisor = Supervisor(tmp_path / "logs", env={"PATH": "/usr/bin:/bin"})
    yield supervisor
    supervisor.stop_all(grace=2)


def test_backoff_doubles_and_is_capped() -> None:
    policy = RestartPolicy(attempts=10, window_s=300)
    assert [policy.delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_crash_loop_is_restarted_with_backoff_then_given_up_loudly(sup: Supervisor) -> None:
    child = sup.start("flaky", [PY, "-c", CRASH], restart=RestartPolicy(attempts=3, window_s=300, **FAST))
    pids = {child.process.pid}

    def note_pid() -> bool:
        pids.add(child.process.pid)
        return False  # go on until check() gives up

    with pytest.raises(ChildDied) as died:
        until(sup, note_pid)
    assert child.exits == [(3, 0.05), (3, 0.1), (3, 0.2)]  # 1, 2, 4 ... times the first delay
    assert len(pids) == 4  # the first start and three restarts, each a new process
    message = str(died.value)
    assert "flaky exited with code 3 after 3 restart(s) within 300s" in message
    assert "restart_attempts=3" in message and "giving up" in message
    assert "boom: out of cheese" in message  # the log tail says why
    log = child.log_path.read_text()
    assert log.count("boom: out of cheese") == 4  # every run appended to the same log
    assert log.count("restarting in") == 3 and log.count("restarted (pid") == 3


def test_a_crash_looping_worker_is_left_down_while_the_rest_runs(sup: Supervisor) -> None:
    """A model worker that one tenant's poison job crashes again and again must not take the gateway
    down with it: past its budget it stays down, loudly, and check() goes on supervising the others."""
    survivor = sup.start("gateway", [PY, "-c", "import time; time.sleep(600)"], restart=RestartPolicy(1, 300))
    cleaned: list[str] = []
    worker = sup.start(
        "model-worker",
        [PY, "-c", CRASH],
        restart=RestartPolicy(attempts=2, window_s=300, essential=False, **FAST),
        on_crash=lambda child: cleaned.append(child.name),
    )
    until(sup, lambda: worker.given_up)
    for _ in range(20):
        sup.check()  # no ChildDied: the platform keeps running
        time.sleep(0.02)
    assert worker.restarts == 2 and worker.process.poll() == 3
    assert survivor.process.poll() is None
    assert cleaned == ["model-worker"] * 3  # its jobs released after every crash, the last one too
    assert "giving up; left down" in worker.log_path.read_text()


def test_restarts_outside_the_window_do_not_count(sup: Supervisor) -> None:
    """A child that ran longer than the window before dying is not a crash loop: restarted each
    time, at the first delay again."""
    policy = RestartPolicy(attempts=1, window_s=0.2, **FAST)
    child = sup.start("slow-crash", [PY, "-c", "import time; time.sleep(0.5); raise SystemExit(2)"], restart=policy)
    until(sup, lambda: child.restarts >= 3)
    assert child.exits[:3] == [(2, 0.05)] * 3


def test_a_restarted_child_keeps_running(sup: Supervisor, tmp_path: Path) -> None:
    seen_dead: list[bool] = []
    child = sup.start(
        "worker",
        [PY, "-c", CRASH_ONCE, str(tmp_path / "marker")],
        restart=RestartPolicy(attempts=2, window_s=300, **FAST),
        on_crash=lambda c: seen_dead.append(gone(c.process.pid)),
    )
    first = child.process.pid
    until(sup, lambda: "up again" in child.log_path.read_text())
    assert child.process.pid != first and child.exits == [(7, 0.05)]
    assert seen_dead == [True]  # the cleanup ran once the old process was gone
    for _ in range(50):  # the loop goes on; the healthy child is left alone
        sup.check()
        time.sleep(0.02)
    assert child.process.poll() is None and child.restarts == 1


def test_a_failing_crash_cleanup_does_not_stop_the_restart(sup: Supervisor, tmp_path: Path) -> None:
    def broken(child: Child) -> None:
        raise ConnectionError("database away")

    child = sup.start(
        "worker",
        [PY, "-c", CRASH_ONCE, str(tmp_path / "marker")],
        restart=RestartPolicy(attempts=2, window_s=300, **FAST),
        on_crash=broken,
    )
    until(sup, lambda: "up again" in child.log_path.read_text())
    assert child.process.poll() is None


def test_a_child_without_restart_policy_stops_everything_at_once(sup: Supervisor) -> None:
    child = sup.start("one-shot", [PY, "-c", CRASH])
    child.process.wait(30)
    with pytest.raises(ChildDied, match="one-shot exited with code 3") as died:
        sup.check()
    assert "boom: out of cheese" in str(died.value) and child.restarts == 0


def test_a_crashed_child_takes_what_it_started_with_it(sup: Supervisor, tmp_path: Path) -> None:
    child = sup.start(
        "leaky",
        [PY, "-c", WITH_GRANDCHILD, str(tmp_path / "grandchild"), "die"],
        restart=RestartPolicy(attempts=5, window_s=300, first_delay_s=60),  # stays down during the test
    )
    grandchild = read_pid(tmp_path / "grandchild", sup)
    until(sup, lambda: child.restart_due is not None)
    until(sup, lambda: gone(grandchild))  # killed with its dead parent's group, not left running


def test_stop_all_leaves_nothing_running(sup: Supervisor, tmp_path: Path) -> None:
    """Running children, their grandchildren, a restarted child, one ignoring SIGTERM, one backing
    off: after stop_all none of their processes runs."""
    policy = RestartPolicy(attempts=5, window_s=300, **FAST)
    parent = sup.start("parent", [PY, "-c", WITH_GRANDCHILD, str(tmp_path / "g1")], restart=policy)
    stubborn = sup.start("stubborn", [PY, "-c", IGNORES_SIGTERM], restart=policy)
    restarted = sup.start("restarted", [PY, "-c", CRASH_ONCE, str(tmp_path / "marker")], restart=policy)
    backing_off = sup.start(
        "backing-off", [PY, "-c", CRASH], restart=RestartPolicy(attempts=5, window_s=300, first_delay_s=60)
    )
    pids = [read_pid(tmp_path / "g1", sup)]
    until(sup, lambda: "ready" in stubborn.log_path.read_text())
    until(sup, lambda: "up again" in restarted.log_path.read_text())
    until(sup, lambda: backing_off.restart_due is not None)
    pids += [parent.process.pid, stubborn.process.pid, restarted.process.pid]
    assert not any(gone(pid) for pid in pids)
    sup.stop_all(grace=1)
    assert [pid for pid in pids if not gone(pid)] == []
    assert sup.children == []
