"""Group commit of accepted async jobs: one writer per gateway takes every submission waiting for it and
writes them in one transaction, so concurrent submitters share one commit (on SQLite one write lock and one
WAL sync) instead of queueing for the lock one by one. Nothing waits on purpose: the submissions that
arrive while a group is being written make the next group. A job is answered only after its group has
committed (durable on 202); a refused quota hold refuses that job alone, and a group whose transaction
fails (a PostgreSQL deadlock victim, one bad row) is written again one job per transaction, so one job's
failure is never another's (docs/architecture.md §3.22)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging

from bitinglip.db.tables import Job
from bitinglip.errors import ServiceUnavailable
from bitinglip.jobs.store import JobStore, NewJob

log = logging.getLogger(__name__)

MAX_GROUP = 256  # bounds one transaction's length (and how long its first job waits for the commit)
Waiting = tuple[NewJob, "asyncio.Future[Job]"]


class JobIntake:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._waiting: asyncio.Queue[Waiting] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._stopping = False

    async def create(self, new: NewJob) -> Job:
        if self._stopping:
            raise ServiceUnavailable("the gateway is stopping; send the job again")
        loop = asyncio.get_running_loop()
        if self._writer is None or self._writer.done():
            # a context of its own: not the first submitter's request id and caller, which it would keep
            self._writer = loop.create_task(self._write_groups(), name="job-intake", context=contextvars.Context())
        answer: asyncio.Future[Job] = loop.create_future()
        self._waiting.put_nowait((new, answer))
        return await answer

    async def stop(self) -> None:
        """New submissions are refused; the group being written finishes (its submitters hear how it
        went); those still waiting are told the gateway stopped, with nothing of theirs written."""
        self._stopping = True
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        while not self._waiting.empty():
            _, answer = self._waiting.get_nowait()
            if not answer.done():
                answer.set_exception(
                    ServiceUnavailable("the gateway stopped before the job was written; send it again")
                )

    async def _write_groups(self) -> None:
        while True:
            group = [await self._waiting.get()]
            while len(group) < MAX_GROUP and not self._waiting.empty():
                group.append(self._waiting.get_nowait())
            pending = [(new, answer) for new, answer in group if not answer.cancelled()]
            writing = asyncio.get_running_loop().create_task(asyncio.to_thread(self._write, [n for n, _ in pending]))
            try:
                await asyncio.shield(writing)
            except asyncio.CancelledError:  # stopping: the write in flight ends first, its submitters hear it
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(writing), timeout=10)
                self._answer(pending, writing)
                raise
            except Exception:  # `_write` turns every DB failure into an answer; this is the thread failing
                log.exception("the job intake's writer thread failed")
            self._answer(pending, writing)

    def _write(self, jobs: list[NewJob]) -> list[Job | BaseException]:
        try:
            return list(self.store.create_many(jobs))
        except Exception as exc:
            if len(jobs) == 1:
                return [exc]
            log.warning("writing %d accepted jobs together failed (%r); one transaction each", len(jobs), exc)
        outcomes: list[Job | BaseException] = []
        for new in jobs:
            try:
                outcomes.extend(self.store.create_many([new]))
            except Exception as exc:  # the DB is away: this job (and likely the rest) hears it
                outcomes.append(exc)
        return outcomes

    @staticmethod
    def _answer(pending: list[Waiting], writing: asyncio.Future[list[Job | BaseException]]) -> None:
        if not writing.done():  # still writing after the bound: whether it lands is unknown
            outcomes: list[Job | BaseException] = [
                ServiceUnavailable("the gateway stopped while writing the job; check GET /api/v1/tasks")
            ] * len(pending)
        elif (failure := writing.exception()) is not None:
            outcomes = [failure] * len(pending)
        else:
            outcomes = writing.result()
        for (_, answer), outcome in zip(pending, outcomes, strict=True):
            if answer.done():  # its submitter went away; a written job stays and will run
                continue
            if isinstance(outcome, BaseException):
                answer.set_exception(outcome)
            else:
                answer.set_result(outcome)
