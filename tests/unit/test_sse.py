"""The streaming wire format (api/sse.py): the bytes OpenAI's SDK parses, errors as events, and a
client that goes away cancels the stream it was reading."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Message

from api.inference.router import _chunks
from api.sse import sse_response
from bitinglip.errors import Overloaded
from bitinglip.outputs import TextStreamDelta, TextStreamEvent
from tests.unit.asgi import call


async def test_events_are_data_lines_then_done_with_plain_newlines() -> None:
    async def chunks() -> AsyncIterator[dict[str, Any]]:
        yield {"text": "Pa"}
        yield {"text": "ris", "finish": None}

    status, headers, body, _ = await call(sse_response(chunks()), "/")
    assert status == 200
    assert body == b'data: {"text": "Pa"}\n\ndata: {"text": "ris", "finish": null}\n\ndata: [DONE]\n\n'
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["x-accel-buffering"] == "no" and headers["cache-control"] == "no-store"


async def test_an_error_mid_stream_is_an_event_and_the_stream_still_ends() -> None:
    async def events() -> AsyncIterator[TextStreamEvent]:
        yield TextStreamDelta(delta="Hi")
        raise Overloaded("the model's queue is full", retry_after=2)

    _, _, body, _ = await call(sse_response(_chunks("m@1", events())), "/")
    frames = body.decode().split("\n\n")
    assert frames[0] == 'data: {"model": "m@1", "delta": "Hi", "logprobs": null}'
    assert frames[1].startswith('data: {"error": {"message": "the model\'s queue is full", "type": ')
    assert frames[1].endswith('"status_code": 503}')
    assert frames[2:] == ["data: [DONE]", ""]


async def test_a_client_that_disconnects_cancels_the_stream() -> None:
    """The gateway's generator is closed at once, which closes its call to the worker, which then
    cancels generation and frees the batch slot (tests/test_backpressure.py, end to end)."""
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[dict[str, Any]]:
        try:
            yield {"delta": "Once"}
            await asyncio.Event().wait()  # a generation that would go on
            yield {"delta": "never"}
        finally:
            closed.set()

    async def gone_after_first_event(sent: list[Message]) -> Message:
        while not any(m.get("body") for m in sent):
            await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    _, _, body, _ = await call(sse_response(endless()), "/", after_body=gone_after_first_event)
    assert closed.is_set()
    assert body == b'data: {"delta": "Once"}\n\n'  # no [DONE]: the stream did not end normally
