"""Calls an ASGI app directly, so a test can send bytes no HTTP client would (a newline in a header)
and choose when the client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message

Received = Callable[[list[Message]], Awaitable[Message]]


async def _never(sent: list[Message]) -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def call(
    app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]] | None = None, after_body: Received = _never
) -> tuple[int, dict[str, str], bytes, list[Message]]:
    """Status, headers, body and the raw messages of one POST with an empty body; once that body is
    read, `receive` answers what `after_body` returns (by default it waits, as a client that stays)."""
    sent: list[Message] = []
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await after_body(sent)

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers or [],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    start = next(m for m in sent if m["type"] == "http.response.start")
    response_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(start["status"]), response_headers, body, sent
