"""One job's life as it happens, for `GET /api/v1/tasks/{id}/events` (docs/architecture.md §3.19).

State changes come from the job's row (read every `poll_s`: the job changes in other processes); a
running text job's text comes from the model worker that runs it, which keeps it piece by piece while
the job runs (bitinglip/worker/tokens.py). Each piece is numbered; the number is the event's SSE id,
so a client that reconnects with `Last-Event-ID` gets the pieces after it. The last event is always
`done` with the finished job, sent to every stream that finds the job finished, so no reconnect can
miss it."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from api.jobs.schemas import JobView
from api.jobs.service import JobService
from api.workers.client import WorkerClient
from api.workers.service import WorkerDirectory
from bitinglip.errors import InvalidRequest, NotFound, RateLimited

FINISHED = ("completed", "failed", "cancelled")
RECHECK_S = 10.0  # how often a waiting stream checks its credentials again
MAX_WATCHES_PER_USER = 32  # open job streams of one user on one gateway
_EVENT_ID = re.compile(r"[0-9]{1,9}")

WatchEventName = Literal["state", "token", "done", "goodbye"]


@dataclass(frozen=True)
class WatchEvent:
    event: WatchEventName
    data: str
    id: int | None = None

    def sse(self) -> dict[str, Any]:
        """As sse-starlette sends it: only token events carry an id (what a reconnect resumes from)."""
        return {"event": self.event, "data": self.data} | ({} if self.id is None else {"id": str(self.id)})


def resume_after(last_event_id: str | None) -> int:
    """The number of pieces of text the client has (0 without the header): the id it last saw."""
    if last_event_id is None or not last_event_id.strip():
        return 0
    if _EVENT_ID.fullmatch(last_event_id.strip()) is None:
        raise InvalidRequest(
            "Last-Event-ID must be the id of an event this stream sent (a number of at most 9 digits)",
            param="Last-Event-ID",
        )
    return int(last_event_id.strip())


LAPSED = WatchEvent("goodbye", json.dumps({"reason": "the credentials are no longer valid"}))


class WatchSlots:
    """Open job streams per user on this gateway: each holds a connection and polls a row."""

    def __init__(self, limit: int = MAX_WATCHES_PER_USER) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()

    def take(self, username: str) -> Callable[[], None]:
        """Before a stream starts: a 429 when the user has all their streams open already, else the slot,
        taken now (so a burst of requests cannot all pass a check first); the answer releases it, once."""
        if self.open[username] >= self.limit:
            raise RateLimited(
                f"{self.limit} job event streams are open for this user; close one first",
                limit=self.limit,
                reset_after=RECHECK_S,
            )
        self.open[username] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open[username] -= 1

        return release


class JobWatch:
    def __init__(
        self,
        jobs: JobService,
        workers: WorkerDirectory,
        client: WorkerClient,
        poll_s: float,
        still_valid: Callable[[], Awaitable[bool]],
    ) -> None:
        self.jobs = jobs
        self.workers = workers
        self.client = client
        self.poll_s = poll_s
        self.still_valid = still_valid

    async def events(self, job: JobView, scope: str | None, after: int = 0) -> AsyncIterator[WatchEvent]:
        """`job` as the caller may see it (read before the response starts, so a job that is not theirs
        is a plain 404); `after`: the pieces of text the caller has already."""
        shown: tuple[str, int] | None = None
        pieces = after
        checked = time.monotonic()
        while True:
            if (job.status, job.attempts) != shown:
                shown = (job.status, job.attempts)
                yield WatchEvent("state", job.model_dump_json())
            if job.status in FINISHED:
                yield WatchEvent("done", job.model_dump_json())
                return
            if job.type == "text" and job.status == "running" and job.worker is not None:
                async for number, text in self._pieces(job.worker, job.id, pieces):
                    pieces = number
                    yield WatchEvent("token", json.dumps({"n": number, "text": text}), id=number)
                    if (held := await self._recheck(checked)) is None:  # a long reply: revoked mid-way
                        yield LAPSED
                        return
                    checked = held
                job = await self.jobs.get(job.id, scope)  # its work ended there: the row says how
                if job.status in FINISHED:
                    continue
            await asyncio.sleep(self.poll_s)
            if (held := await self._recheck(checked)) is None:
                yield LAPSED
                return
            checked = held
            try:
                job = await self.jobs.get(job.id, scope)
            except NotFound:
                yield WatchEvent("goodbye", json.dumps({"reason": "the job was deleted"}))
                return

    async def _recheck(self, checked: float) -> float | None:
        """When the credentials were last known to hold (asked again once RECHECK_S has passed since
        `checked`); None when they no longer do."""
        if time.monotonic() - checked < RECHECK_S:
            return checked
        return time.monotonic() if await self.still_valid() else None

    async def _pieces(self, worker_id: str, job_id: str, after: int) -> AsyncIterator[tuple[int, str]]:
        """The job's text from the worker running it; nothing when that worker is not known here."""
        workers = {w.id: w for w in await self.workers.workers()}
        if (worker := workers.get(worker_id)) is None:
            return
        async for number, text in self.client.follow_tokens(worker, job_id, after):
            if number > after:
                yield number, text
