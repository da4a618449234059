"""GET /api/v1/tasks/{id}/events: one job's live progress as server-sent events (api/jobs/watch.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from api.deps import PrincipalDep, ScopeDep, StateDep
from api.jobs.watch import JobWatch, WatchSlots, resume_after
from bitinglip.errors import Unauthorized

router = APIRouter(prefix="/api/v1", tags=["jobs"])


def _slots(request: Request) -> WatchSlots:
    """One count of open job streams per gateway app."""
    slots: WatchSlots | None = getattr(request.app.state, "job_watch_slots", None)
    if slots is None:
        slots = request.app.state.job_watch_slots = WatchSlots()
    return slots


@router.get(
    "/tasks/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events."}},
)
async def watch_job(
    job_id: str,
    request: Request,
    who: PrincipalDep,
    scope: ScopeDep,
    state: StateDep,
    last_event_id: str | None = Header(
        default=None,
        alias="Last-Event-ID",
        description="Resume a dropped stream: the id of the last `token` event received (browsers send it "
        "when they reconnect); the pieces after it follow.",
    ),
) -> EventSourceResponse:
    """A job's progress, live: `state` (the job) at each status change (queued, running, ...), for a
    text job a `token` event (`{"n": N, "text": ...}`, SSE id N) per piece of text as it is generated,
    and last `done` (the finished job, with its result or error); then the stream closes. A job
    already finished answers `state` and `done` at once. `goodbye` ends it early: the credentials
    stopped working, or the job was deleted."""
    after = resume_after(last_event_id)
    first = await state.jobs.get(job_id, scope)  # another user's job is a 404, before the stream starts
    slots = _slots(request)

    async def still_valid() -> bool:
        try:
            now = await state.auth.identify(request.headers.get("authorization"))
        except Unauthorized:
            return False
        return now.username == who.username and now.role == who.role

    watch = JobWatch(
        state.jobs, state.workers, state.worker_client, state.settings.console_events_interval_s, still_valid
    )

    release = slots.take(who.username)  # a 429 before the stream starts; the slot is held while it runs

    async def stream() -> AsyncIterator[dict[str, Any]]:
        try:
            async for event in watch.events(first, scope, after):
                yield event.sse()
        finally:
            release()

    # released by the stream's end, or after the answer when the stream never started (a client gone at once)
    return EventSourceResponse(
        stream(), ping=15, headers={"Cache-Control": "no-store"}, background=BackgroundTask(release)
    )
