"""The text of this worker's running async text jobs, piece by piece as it is generated, for whoever
watches a job (`GET /api/v1/tasks/{id}/events` on a gateway, which reads it from the worker's internal
API; docs/architecture.md §3.19). Held in memory only while the job runs: its result holds the text after.

The compute thread appends; followers read on the event loop. Nobody watching costs an append per
piece, no wake-up of the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

KEEPALIVE_S = 5.0  # a follower with nothing new hears `None` this often (the HTTP stream's keep-alive line)


class TokenLog:
    """One job's pieces of text. A row the engine restarts (preempted on transformers, or a retry of the
    job) produces its text again from the start: that much is skipped, so the pieces never repeat."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._length = 0
        self._skip = 0
        self._closed = False
        self._followers = 0
        self._changed = asyncio.Event()

    def add(self, text: str) -> None:
        """From the compute thread."""
        with self._lock:
            if self._skip:
                dropped = min(self._skip, len(text))
                text, self._skip = text[dropped:], self._skip - dropped
            if not text:
                return
            self._pieces.append(text)
            self._length += len(text)
        if self._followers:
            self._loop.call_soon_threadsafe(self._notify)

    def restart(self) -> None:
        """The text starts over: what is recorded already is not recorded again."""
        with self._lock:
            self._skip = self._length

    def close(self) -> None:
        """On the event loop: the job's work ended; followers drain what is left and stop."""
        with self._lock:
            self._closed = True
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(self, after: int = 0) -> AsyncIterator[tuple[int, str] | None]:
        """(number, piece) for every piece after the `after`th, numbered from 1, as they come, until the
        log is closed; `None` after KEEPALIVE_S without news."""
        self._followers += 1
        try:
            seen = max(after, 0)
            while True:
                changed = self._changed  # taken before reading: a piece added after the read sets it
                with self._lock:
                    new, closed = self._pieces[seen:], self._closed
                for piece in new:
                    seen += 1
                    yield seen, piece
                if new:
                    continue
                if closed:
                    return
                try:
                    await asyncio.wait_for(changed.wait(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield None
        finally:
            self._followers -= 1


class JobTokens:
    """The token logs of this worker's running text jobs, by job id."""

    def __init__(self) -> None:
        self._logs: dict[str, TokenLog] = {}

    def open(self, job_id: str) -> TokenLog:
        """The job's log; a job run again under the same claim (a retry) keeps its log and starts over."""
        log = self._logs.get(job_id)
        if log is None:
            log = self._logs[job_id] = TokenLog(asyncio.get_running_loop())
        else:
            log.restart()
        return log

    def get(self, job_id: str) -> TokenLog | None:
        return self._logs.get(job_id)

    def close(self, job_id: str) -> None:
        """The job ended here (finished, or handed back): followers stop, new ones find nothing."""
        if (log := self._logs.pop(job_id, None)) is not None:
            log.close()
