"""Starts, restarts and stops the platform's processes from Python (a shell `&` child ignored SIGTERM
once; Popen children stop on one). Children run in their own sessions (process groups) so Ctrl-C
reaches only us, and we stop them in reverse order, group and all.

A child started with a `RestartPolicy` that dies is started again after a backoff (1, 2, 4 ... s,
capped), so one crashed worker does not take the gateway and Prefect down with it; a crash loop
(more restarts within the window than the policy allows) still stops everything, loudly. A child
started without one takes the platform down at once (`check` raises `ChildDied`): test harnesses
rely on that to see a child that dies while they wait for it.

Stopping is bounded: SIGTERM to every group, `grace` seconds, then SIGKILL to each group and to
every process any child started (snapshotted before the stop, so a flow run in its own session
goes too). `bitinglip up` also binds each child to its own life (`procctl.die_with_parent`), makes
itself a subreaper (orphans come back to it, and its final sweep ends them) and caps each child's
log by size (`child_logs`); test harnesses keep the plain defaults."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import psutil

from bitinglip import procctl
from bitinglip.child_logs import ChildLog

log = logging.getLogger(__name__)

LOG_TAIL_CHARS = 2000
LAST_WAVE_S = 5.0  # the stop_last children's own time to stop, after the others


@dataclass(frozen=True)
class RestartPolicy:
    """Restart a child that exits, at most `attempts` times within `window_s` seconds."""

    attempts: int
    window_s: float
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    # Past its budget, an essential child (Prefect, the gateway) stops everything; another (a model or
    # pool worker, which one tenant's poison job could crash repeatedly) stays down, loudly, while the
    # gateway keeps answering 503 for its models.
    essential: bool = True

    def delay(self, recent_restarts: int) -> float:
        """1, 2, 4 ... s for the 1st, 2nd, 3rd ... restart within the window: a child that dies again
        at once is retried ever more slowly, one that ran for a while is back quickly."""
        return min(self.max_delay_s, self.first_delay_s * 2**recent_restarts)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str] = field(default_factory=list)
    cwd: Path | None = None
    env: dict[str, str] | None = None
    policy: RestartPolicy | None = None
    on_crash: Callable[[Child], None] | None = None
    restarted_at: deque[float] = field(default_factory=deque)  # monotonic times, within the window
    exits: list[tuple[int, float]] = field(default_factory=list)  # (exit code, restart delay) per crash
    restart_due: float | None = None  # set while backing off
    group_killed: bool = False  # its process died and its group was killed: nothing left to stop
    given_up: bool = False  # a non-essential child past its restart budget: left down
    stop_last: bool = False  # others depend on it while they stop (Prefect's server)
    death_signal: int = signal.SIGTERM  # sent by the kernel if the supervisor dies first

    @property
    def restarts(self) -> int:
        return len(self.exits)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""


class ChildDied(RuntimeError):
    pass


# (max_bytes, backup_count) of one child's log, by child name
RotationFor = Callable[[str], tuple[int, int]]


class Supervisor:
    def __init__(
        self,
        log_dir: Path,
        env: dict[str, str],
        *,
        rotation: RotationFor | None = None,
        bind_children: bool = False,
        subreaper: bool = False,
    ) -> None:
        """`rotation`: children write into a pipe copied to size-capped files (else straight into an
        ever-growing NAME.log). `bind_children`: each child gets SIGTERM if we die. `subreaper`: we
        adopt our children's orphans, and `stop_all` ends every process left under us."""
        self.log_dir = log_dir
        self.env = env
        self.children: list[Child] = []
        self.rotation = rotation
        self.bind_children = bind_children
        self.subreaper = subreaper and procctl.become_subreaper()
        self._logs: dict[str, ChildLog] = {}
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        restart: RestartPolicy | None = None,
        on_crash: Callable[[Child], None] | None = None,
        stop_last: bool = False,
        death_signal: int = signal.SIGTERM,
    ) -> Child:
        """Start `argv` as child `name`, its output appended to log_dir/NAME.log. With `restart`, a
        death is answered by a restart (see `check`); `on_crash` runs once the dead child's process
        group is gone and before it starts again: cleanup that only the parent knows to be safe.
        `death_signal`: what the kernel sends the child if we die without stopping it (with
        `bind_children`); `stop_last`: stopped after the others (see `stop_all`)."""
        log_path = self.log_dir / f"{name}.log"
        if self.rotation is not None and name not in self._logs:
            self._logs[name] = ChildLog(log_path, *self.rotation(name))
        process = self._spawn(name, list(argv), cwd, env, death_signal)
        child = Child(name, process, log_path, list(argv), cwd, env, restart, on_crash)
        child.stop_last, child.death_signal = stop_last, death_signal
        self.children.append(child)
        return child

    def _spawn(
        self, name: str, argv: list[str], cwd: Path | None, env: dict[str, str] | None, death_signal: int
    ) -> subprocess.Popen[bytes]:
        # Logs hold request ids, user names and audit lines: the platform's alone (0600), and so is
        # everything a child creates (umask 077: databases, results, Prefect's files).
        log_path = self.log_dir / f"{name}.log"
        child_log = self._logs.get(name)
        preexec = procctl.die_with_parent(death_signal) if self.bind_children else None

        def popen(stdout: int | IO[bytes]) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.env, **(env or {})},
                cwd=cwd,
                start_new_session=True,
                umask=0o077,
                preexec_fn=preexec,
            )

        if child_log is not None:
            process = popen(stdout=subprocess.PIPE)
            assert process.stdout is not None
            child_log.attach(process.stdout, name)
            return process
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log_file:
            return popen(stdout=log_file)

    def check(self) -> None:
        """Never blocks: notices dead children, schedules their restarts, starts those that are due.
        Raises ChildDied for a child without a restart policy, or one past its restart budget."""
        now = time.monotonic()
        if self.subreaper:
            self._reap_orphans()
        for child in self.children:
            if child.given_up:
                continue
            if child.restart_due is not None:
                if now >= child.restart_due:
                    self._restart(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            if not child.group_killed:  # whatever it started dies with it
                _signal_group(child.process, signal.SIGKILL)
                child.group_killed = True
            policy = child.policy
            if policy is None:
                raise ChildDied(f"{child.name} exited with code {code}; last log lines:\n{child.log_tail()}")
            while child.restarted_at and now - child.restarted_at[0] > policy.window_s:
                child.restarted_at.popleft()
            if len(child.restarted_at) >= policy.attempts:
                message = (
                    f"{child.name} exited with code {code} after {len(child.restarted_at)} restart(s) within "
                    f"{policy.window_s:g}s (restart_attempts={policy.attempts}): giving up"
                )
                if policy.essential:
                    raise ChildDied(f"{message}. Last lines of {child.log_path}:\n{child.log_tail()}")
                child.given_up = True
                log.error("%s; the rest of the platform keeps running. Last lines of %s", message, child.log_path)
                self._event(child, f"{message}; left down")
                if child.on_crash is not None:
                    child.on_crash(child)
                continue
            delay = policy.delay(len(child.restarted_at))
            child.restarted_at.append(now)
            child.exits.append((code, delay))
            child.restart_due = now + delay
            self._event(
                child,
                f"{child.name} (pid {child.process.pid}) exited with code {code}; restarting in {delay:g}s "
                f"(restart {len(child.restarted_at)} of {policy.attempts} within {policy.window_s:g}s)",
            )
            if child.on_crash is not None:
                try:
                    child.on_crash(child)
                except Exception:  # a failed cleanup must not stop the restart (or everything else)
                    log.exception("cleanup after %s exited failed", child.name)

    def _restart(self, child: Child) -> None:
        child.process = self._spawn(child.name, child.argv, child.cwd, child.env, child.death_signal)
        child.restart_due = None
        child.group_killed = False
        self._event(child, f"{child.name} restarted (pid {child.process.pid})")

    def _event(self, child: Child, message: str) -> None:
        """Into our log (the console of `up`) and the child's own log file, beside its crash."""
        log.warning(message)
        line = f"\n--- supervisor {time.strftime('%Y-%m-%dT%H:%M:%S')}: {message} ---\n"
        child_log = self._logs.get(child.name)
        if child_log is not None:
            child_log.write(line)
            return
        try:
            with child.log_path.open("a") as fh:
                fh.write(line)
        except OSError:
            pass

    def wait_http(self, url: str, timeout: float, ok: tuple[int, ...] = (200,)) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            try:
                if httpx.get(url, timeout=2.0).status_code in ok:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout:.0f}s")
            time.sleep(0.25)

    def stop_all(self, grace: float = 15.0) -> None:
        """Stop in two waves: every child but the `stop_last` ones (Prefect's server), newest
        first, then those. Each wave: SIGTERM to each group, a wait, SIGKILL to each group. Then
        whatever any child started elsewhere (a process in a session of its own escapes the group
        kill) is killed too. A child seen dead (backing off, or given up on) has nothing left to
        stop: its group was killed then. Returns within `grace` + LAST_WAVE_S seconds (and the
        moments SIGKILL takes).

        The order matters: a Prefect pool worker that gets SIGTERM drains (it waits for its flow
        runs, then deregisters and emits its "stopped" event), talking to the server all along."""
        running = [c for c in reversed(self.children) if not c.group_killed]
        started_by_children = [p for c in running for p in _descendants(c.process.pid)]
        deadline = time.monotonic() + grace
        self._stop_wave([c for c in running if not c.stop_last], deadline, grace)
        last_deadline = max(deadline, time.monotonic() + min(grace, LAST_WAVE_S))
        self._stop_wave([c for c in running if c.stop_last], last_deadline, grace)
        _kill_all(started_by_children)
        if self.subreaper:
            self._reap_orphans(kill=True)
        for child_log in self._logs.values():
            child_log.drain(timeout=2)
            child_log.close()
        self._logs.clear()
        self.children.clear()

    def _stop_wave(self, children: list[Child], deadline: float, grace: float) -> None:
        for child in children:
            if child.process.poll() is None:
                _signal_group(child.process, signal.SIGTERM)
        for child in children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) still running %gs after SIGTERM: killed", child.name, child.process.pid, grace)
            _signal_group(child.process, signal.SIGKILL)
            child.process.wait()

    def _reap_orphans(self, kill: bool = False) -> None:
        """As a subreaper we adopt the orphans of our children: wait for those that exited (no
        zombies pile up), and on the final sweep (`kill`) end every one still running."""
        ours = {c.process.pid for c in self.children}
        if not kill:
            self._reap_exited_orphans(ours)
            return
        try:
            adopted = [p for p in psutil.Process().children() if p.pid not in ours]
        except psutil.Error:
            return
        for process in adopted:
            try:
                if kill:
                    _kill_all([process, *process.children(recursive=True)])
                if process.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(process.pid, os.WNOHANG)
            except (psutil.Error, ChildProcessError):
                pass

    @staticmethod
    def _reap_exited_orphans(ours: set[int]) -> None:
        """Reap adopted children that exited, without scanning /proc (that cost ~0.4% of a core at two
        checks a second): waitid peeks at one exited child without reaping it; our own are left to poll()."""
        while True:
            try:
                exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if exited is None or exited.si_pid in ours:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(exited.si_pid, os.WNOHANG)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL each still running (psutil checks a pid still names the same process) and wait."""
    alive = []
    for process in processes:
        try:
            process.kill()
            alive.append(process)
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
