"""One `bitinglip up` per home: a pidfile held under an exclusive `flock` for the supervisor's whole
life. The lock, not the file, says whether a platform runs: the kernel drops it when the process
ends however it ends (kill -9 included), so a pidfile left behind is recognised as stale, never
trusted, and a recycled pid can never be mistaken for the supervisor."""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


class AlreadyRunning(RuntimeError):
    def __init__(self, path: Path, info: SupervisorInfo | None) -> None:
        self.path = path
        self.info = info
        pid = f" (pid {info.pid})" if info else ""
        super().__init__(f"a platform is already running from this home{pid}; `bitinglip down` stops it")


@dataclass(frozen=True)
class SupervisorInfo:
    pid: int
    started_at: float  # epoch seconds
    details: dict[str, Any]


def _parse(text: str) -> SupervisorInfo | None:
    try:
        data = json.loads(text)
        return SupervisorInfo(int(data["pid"]), float(data["started_at"]), dict(data.get("details") or {}))
    except (ValueError, KeyError, TypeError):
        return None


class PidFile:
    """Held from `acquire` to `release` (or the process's end); the file's descriptor is not
    inherited by children (Python opens it close-on-exec), so only the supervisor holds the lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: TextIO | None = None

    def acquire(self, details: dict[str, Any] | None = None) -> None:
        """Raises AlreadyRunning while another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fh = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _parse(fh.read())
                fh.close()
                raise AlreadyRunning(self.path, info) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            fh.close()  # its holder removed it as we opened it: lock the file now at the path
        record = {"pid": os.getpid(), "started_at": time.time(), "details": details or {}}
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(record))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: a new `up` never loses its own file
        finally:
            self._fh.close()  # drops the lock
            self._fh = None


def running(path: Path) -> SupervisorInfo | None:
    """The supervisor holding `path`, or None when none does (no file, or a stale one)."""
    try:
        fh = path.open("r")
    except FileNotFoundError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _parse(fh.read()) or SupervisorInfo(pid=0, started_at=0.0, details={})
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None


def is_stale(path: Path) -> bool:
    """A pidfile that no process holds (its supervisor was killed before it could remove it)."""
    return path.exists() and running(path) is None
