"""The one source of the console's live events in a gateway: a single loop, running only while
someone listens, looks at the shared DB (jobs change in other processes: workers, flow runs, other
gateway replicas) and the worker registry, and hands each listener only what it may see: a user their
own jobs, an admin everything. Browsers are pushed to; only this loop polls, once for all of them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select

from api.console.schemas import JobEvent, Topic
from api.state import GatewayState
from api.workers.service import worker_view
from bitinglip.auth.principal import Principal
from bitinglip.db.tables import Job
from bitinglip.db.workers import WorkerInfo

log = logging.getLogger(__name__)
QUEUE_SIZE = 1000  # events a slow listener may fall behind by before it is told to reload instead
WATCHED = 5000  # newest active jobs looked at per tick: a huge backlog costs one bounded query a tick
_COLUMNS = (Job.id, Job.type, Job.model, Job.status, Job.owner, Job.priority, Job.attempts, Job.cancel_requested)


@dataclass(eq=False)
class Listener:
    who: Principal
    topics: frozenset[Topic]
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def send(self, event: str, data: Any) -> None:
        try:
            self.queue.put_nowait((event, data))
        except asyncio.QueueFull:  # it fell behind: drop what it has, tell it to read afresh
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(("resync", {"reason": "too many events; reload what you show"}))


class EventHub:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.listeners: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None
        self._seen: dict[str, tuple[Any, ...]] = {}
        self._seeded = False
        self._ready = asyncio.Event()  # set once a starting loop has learnt what is there

    @asynccontextmanager
    async def listen(self, state: GatewayState, who: Principal, topics: frozenset[Topic]) -> AsyncIterator[Listener]:
        listener = Listener(who, topics)
        self.listeners.add(listener)
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._task = asyncio.create_task(self._run(state), name="console-events")
        try:
            # a listener hears of every change after it is told hello: wait for the first look
            with suppress(TimeoutError):  # a slow first look (DB away) must not refuse the stream
                await asyncio.wait_for(self._ready.wait(), timeout=max(5.0, 5 * self.interval_s))
            yield listener
        finally:
            self.listeners.discard(listener)

    async def _run(self, state: GatewayState) -> None:
        """Ticks while anyone listens; no await between the last check and the end, so a listener
        arriving meanwhile always finds a running loop or starts a new one."""
        self._seen.clear()
        self._seeded = False
        while self.listeners:
            try:
                await self.tick(state)
            except Exception as exc:  # the DB or registry briefly away: the next tick tries again
                log.warning("console events: %s: %s", type(exc).__name__, exc)
            self._ready.set()
            await asyncio.sleep(self.interval_s)

    def _wanting(self, topic: Topic) -> list[Listener]:
        return [listener for listener in self.listeners if topic in listener.topics]

    async def tick(self, state: GatewayState) -> None:
        if jobs_listeners := self._wanting("jobs"):
            for job in await asyncio.to_thread(self._changed_jobs, state):
                for listener in jobs_listeners:
                    if listener.who.is_admin or listener.who.username == job.owner:
                        listener.send("job", job.model_dump())
        workers_listeners = [li for li in self._wanting("workers") if li.who.is_admin]
        dashboard_listeners = self._wanting("dashboard")
        if not workers_listeners and not dashboard_listeners:
            return
        workers = [_worker(w) for w in await state.workers.workers(fresh=True)]
        for listener in workers_listeners:
            listener.send("workers", workers)
        if dashboard_listeners:
            figures = await self._dashboard(state, workers)
            public = {k: figures[k] for k in ("queue", "at")}
            for listener in dashboard_listeners:
                listener.send("dashboard", figures if listener.who.is_admin else public)

    def _changed_jobs(self, state: GatewayState) -> list[JobEvent]:
        """Jobs queued or running, or finished lately, whose status or progress differs from the last
        look. The first look only learns what is there: the console reads its lists over REST."""
        since = datetime.now(UTC) - timedelta(seconds=max(10.0, 3 * self.interval_s))
        query = select(*_COLUMNS, Job.progress, Job.worker_id).where(
            or_(Job.status.in_(("queued", "running")), Job.finished_at >= since)
        )
        query = query.order_by(Job.created_at.desc()).limit(WATCHED)
        with state.db.session() as session:
            rows = session.execute(query).all()
        changed, seen = [], {}
        for row in rows:
            job = JobEvent(
                id=row.id,
                type=row.type,
                model=row.model,
                status=row.status,
                owner=row.owner,
                priority=row.priority,
                attempts=row.attempts,
                cancel_requested=row.cancel_requested,
                progress=row.progress,
                worker=row.worker_id,
            )
            seen[job.id] = mark = (job.status, job.attempts, job.cancel_requested, repr(job.progress), job.worker)
            if self._seeded and self._seen.get(job.id) != mark:
                changed.append(job)
        self._seen, self._seeded = seen, True
        return changed

    async def _dashboard(self, state: GatewayState, workers: list[dict[str, Any]]) -> dict[str, Any]:
        queue = await state.jobs.queue_status()
        tokens_per_s = sum(float(m.get("tokens_per_s") or 0) for w in workers for m in w["models"])
        return {
            "at": datetime.now(UTC).isoformat(),
            "queue": queue.model_dump(),
            "requests_per_s": round(state.metrics.latencies.rate(), 3),
            "tokens_per_s": round(tokens_per_s, 2),
            "workers": workers,
        }


def _worker(w: WorkerInfo) -> dict[str, Any]:
    """The workers view, each model with what the dashboard draws."""
    keys = ("id", "name", "memory_bytes", "waiting", "running", "tokens_per_s", "pinned")
    return {**worker_view(w), "models": [{k: m.get(k) for k in keys} for m in w.models]}
