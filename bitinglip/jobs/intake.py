"""Group commit of accepted async jobs: one writer per gateway takes every submission waiting for it and
writes them in one transaction, so concurrent submitters share one commit (on SQLite one write lock and one
WAL sync) instead of queueing for the lock one by one. Nothing waits on purpose: the submissions that
arrive while a group is being written make the next group. A job is answered only after its group has
committed (durable on 202); a refused quota hold refuses that job alone (docs/architecture.md §3.22)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from bitinglip.db.tables import Job
from bitinglip.errors import BitingLipError, ServiceUnavailable
from bitinglip.jobs.store import JobStore, NewJob

log = logging.getLogger(__name__)

MAX_GROUP = 256  # bounds one transaction's length (and how long its first job waits for the commit)


class JobIntake:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._waiting: asyncio.Queue[tuple[NewJob, asyncio.Future[Job]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def create(self, new: NewJob) -> Job:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_groups(), name="job-intake")
        answer: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        await self._waiting.put((new, answer))
        return await answer

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _write_groups(self) -> None:
        while True:
            group = [await self._waiting.get()]
            while len(group) < MAX_GROUP and not self._waiting.empty():
                group.append(self._waiting.get_nowait())
            pending = [(new, answer) for new, answer in group if not answer.cancelled()]
            try:
                made = await asyncio.shield(asyncio.to_thread(self.store.create_many, [new for new, _ in pending]))
            except asyncio.CancelledError:  # the gateway is stopping: the group may or may not be written
                for _, answer in pending:
                    if not answer.done():
                        answer.set_exception(ServiceUnavailable("the gateway is stopping; check GET /api/v1/tasks"))
                raise
            except Exception as exc:  # the whole group failed to commit (the DB is away): each submitter hears it
                log.warning("writing %d accepted jobs failed: %r", len(pending), exc)
                for _, answer in pending:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            for (_, answer), job in zip(pending, made, strict=True):
                if answer.done():  # its submitter went away; the job is written and will run
                    continue
                if isinstance(job, BitingLipError):
                    answer.set_exception(job)
                else:
                    answer.set_result(job)
