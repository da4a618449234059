"""Starts, restarts and stops the platform's processes from Python (a shell `&` child ignored SIGTERM
once; Popen children stop on one). Children run in their own sessions (process groups) so Ctrl-C
reaches only us, and we stop them in reverse order, group and all.

A child started with a `RestartPolicy` that dies is started again after a backoff (1, 2, 4 ... s,
capped), so one crashed worker does not take the gateway and Prefect down with it; a crash loop
(more restarts within the window than the policy allows) still stops everything, loudly. A child
started without one takes the platform down at once (`check` raises `ChildDied`): test harnesses
rely on that to see a child that dies while they wait for it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

LOG_TAIL_CHARS = 2000


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


class Supervisor:
    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.children: list[Child] = []
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        restart: RestartPolicy | None = None,
        on_crash: Callable[[Child], None] | None = None,
    ) -> Child:
        """Start `argv` as child `name`, its output appended to log_dir/NAME.log. With `restart`, a
        death is answered by a restart (see `check`); `on_crash` runs once the dead child's process
        group is gone and before it starts again: cleanup that only the parent knows to be safe."""
        log_path = self.log_dir / f"{name}.log"
        child = Child(
            name, self._spawn(list(argv), log_path, cwd, env), log_path, list(argv), cwd, env, restart, on_crash
        )
        self.children.append(child)
        return child

    def _spawn(
        self, argv: list[str], log_path: Path, cwd: Path | None, env: dict[str, str] | None
    ) -> subprocess.Popen[bytes]:
        # Logs hold request ids, user names and audit lines: the platform's alone (0600), and so is
        # everything a child creates (umask 077: databases, results, Prefect's files).
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log_file:
            return subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.env, **(env or {})},
                cwd=cwd,
                start_new_session=True,
                umask=0o077,
            )

    def check(self) -> None:
        """Never blocks: notices dead children, schedules their restarts, starts those that are due.
        Raises ChildDied for a child without a restart policy, or one past its restart budget."""
        now = time.monotonic()
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
        child.process = self._spawn(child.argv, child.log_path, child.cwd, child.env)
        child.restart_due = None
        child.group_killed = False
        self._event(child, f"{child.name} restarted (pid {child.process.pid})")

    def _event(self, child: Child, message: str) -> None:
        """Into our log (the console of `up`) and the child's own log file, beside its crash."""
        log.warning(message)
        try:
            with child.log_path.open("a") as fh:
                fh.write(f"\n--- supervisor {time.strftime('%Y-%m-%dT%H:%M:%S')}: {message} ---\n")
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
        """SIGTERM every running child's group (newest first), wait up to `grace` for the children,
        then SIGKILL each group: what a child started and left behind goes too. A child seen dead
        (backing off, or given up on) has nothing left to stop: its group was killed then."""
        running = [c for c in reversed(self.children) if not c.group_killed]
        for child in running:
            if child.process.poll() is None:
                _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in running:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(child.process, signal.SIGKILL)
            child.process.wait()
        self.children.clear()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
