"""Streaming responses as server-sent events, framed as the OpenAI SDK reads them: one `data: {json}`
event per chunk, `\\n` line ends, then `data: [DONE]`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus

# sse-starlette would cut every stream the moment uvicorn gets SIGTERM; leave streams to uvicorn's
# bounded graceful shutdown (bitinglip.cli._serve), like every other response.
AppStatus.disable_automatic_graceful_drain()


def sse_response(chunks: AsyncIterator[dict[str, Any]]) -> EventSourceResponse:
    """`[DONE]` follows the last chunk only if `chunks` ends normally. A `: ping` comment every 15 s
    keeps a quiet stream (a long queue wait) open through proxies; SSE parsers skip comments. A client
    that disconnects cancels the iteration, and so the generation it waits on."""

    async def events() -> AsyncIterator[str]:
        async for chunk in chunks:
            yield json.dumps(chunk)
        yield "[DONE]"

    return EventSourceResponse(events(), sep="\n")
