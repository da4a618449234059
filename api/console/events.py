"""GET /api/v1/events: the console's live updates as server-sent events. Browsers' EventSource cannot
send an Authorization header, so the console reads it with fetch (the same credentials as every
route); events: `hello` first, then `job`, `workers` (admins), `dashboard`, `resync`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse

from api.console.hub import EventHub
from api.console.schemas import TOPICS, Hello, Topic
from api.deps import PrincipalDep, StateDep
from bitinglip.errors import PermissionDenied, RateLimited, Unauthorized

RECHECK_S = 10.0
MAX_STREAMS_PER_USER = 8  # tabs of one user; each holds a connection and a queue

router = APIRouter(prefix="/api/v1", tags=["events"])


@router.get(
    "/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events."}},
)
async def events(
    request: Request,
    who: PrincipalDep,
    state: StateDep,
    topics: list[Topic] | None = Query(
        default=None, max_length=len(TOPICS), description="What to receive; default: all the caller may see."
    ),
) -> EventSourceResponse:
    """Job status and progress changes (a user: their own jobs; an admin: all), worker heartbeats
    (admins), dashboard figures. A comment line every 15 s keeps quiet streams open through proxies."""
    if topics is not None and "workers" in topics and not who.is_admin:
        raise PermissionDenied("the workers topic is for admins only", param="topics")
    wanted = frozenset(topics) if topics is not None else frozenset(t for t in TOPICS if who.is_admin or t != "workers")
    hub: EventHub = request.app.state.console_hub
    if sum(1 for listener in hub.listeners if listener.who.username == who.username) >= MAX_STREAMS_PER_USER:
        raise RateLimited(
            f"{MAX_STREAMS_PER_USER} event streams are open for this user; close one first",
            limit=MAX_STREAMS_PER_USER,
            reset_after=RECHECK_S,
        )

    async def still_valid() -> bool:
        """The same user with the same role: a revoked key, a disabled user, an expired token or a
        changed role ends the stream (the caller opens a new one with what it may see now)."""
        try:
            now = await state.auth.identify(request.headers.get("authorization"))
        except Unauthorized:
            return False
        return now.username == who.username and now.role == who.role

    async def stream() -> AsyncIterator[dict[str, Any]]:
        async with hub.listen(state, who, wanted) as listener:
            hello = Hello(username=who.username, role=who.role, topics=sorted(wanted), interval_s=hub.interval_s)
            yield {"event": "hello", "data": hello.model_dump_json()}
            checked = time.monotonic()
            while True:
                try:
                    event, data = await asyncio.wait_for(listener.queue.get(), timeout=RECHECK_S)
                    yield {"event": event, "data": json.dumps(data, default=str)}
                except TimeoutError:
                    pass
                if time.monotonic() - checked >= RECHECK_S:
                    if not await still_valid():
                        yield {
                            "event": "goodbye",
                            "data": json.dumps({"reason": "the credentials are no longer valid"}),
                        }
                        return
                    checked = time.monotonic()

    return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})
