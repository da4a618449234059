"""The typed outputs keep the wire format: an engine's result, turned into its model and dumped, is the
JSON the worker always sent (the `legacy_*` functions below are the dict builders the models replaced),
and that JSON validated at the gateway and dumped again is the same bytes, for every shape. The
gateway's own additions (model, worker, gateway_seconds) land where they always did."""

from __future__ import annotations

import base64
import json
from typing import Any

from pydantic import BaseModel

from api.inference.schemas import RoutedEmbeddings, RoutedImages, TextInferenceResponse
from api.inference.service import stream_error
from bitinglip.engines.embeddings import EmbeddingResult
from bitinglip.engines.image import ImageResult
from bitinglip.engines.types import TextDelta, TextResult, TokenLogprob
from bitinglip.errors import ContextLengthExceeded, InvalidRequest
from bitinglip.outputs import (
    STREAM_EVENT,
    Embeddings,
    ImageGeneration,
    TextGeneration,
    TextStreamDelta,
    TextStreamError,
    TextStreamResult,
)

LOGPROBS = [TokenLogprob("é", -0.5, (("é", -0.5), ("e", -1.25))), TokenLogprob(" x", -2e-05)]


def legacy_text(r: TextResult) -> dict[str, Any]:
    return {
        "text": r.text,
        "finish_reason": r.finish_reason,
        "usage": {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens},  # added since: OpenAI's field
        },
        "logprobs": None
        if r.logprobs is None
        else [
            {"token": lp.token, "logprob": lp.logprob, "top_logprobs": [list(t) for t in lp.top]} for lp in r.logprobs
        ],
        "timings": {
            "queue_seconds": round(r.queue_seconds, 5),
            "first_token_seconds": round(r.first_token_seconds, 5),
            "total_seconds": round(r.total_seconds, 5),
            "batch_size": r.batch_size,
        },
    }


def legacy_delta(delta: TextDelta) -> dict[str, Any] | None:
    if not delta.text and not delta.logprobs:
        return None
    logprobs = [{"token": lp.token, "logprob": lp.logprob, "top_logprobs": lp.top} for lp in delta.logprobs]
    return {"delta": delta.text, "logprobs": logprobs or None}


def wire(model: BaseModel) -> str:
    """What the worker sends (worker/app.py: json.dumps of the JSON-mode dump)."""
    return json.dumps(model.model_dump(mode="json"))


def same_bytes(ours: BaseModel, legacy: dict[str, Any], received: type[BaseModel]) -> None:
    """The worker's JSON is today's, and survives the gateway's validation unchanged."""
    sent = wire(ours)
    assert sent == json.dumps(legacy)
    assert wire(received.model_validate_json(sent)) == sent


def routed(legacy: dict[str, Any], gateway_seconds: float) -> str:
    """The gateway's answer as it was built: routing first, its own time appended to the timings."""
    return json.dumps(
        {"model": "m@1", "worker": "w1", **legacy, "timings": {**legacy["timings"], "gateway_seconds": gateway_seconds}}
    )


def test_text_result_round_trips() -> None:
    for logprobs in (None, LOGPROBS):
        result = TextResult("Paris", "length", 7, 3, logprobs, 1.234567, 2.4e-05, 3.0, 4)
        legacy = legacy_text(result)
        same_bytes(result.to_output(), legacy, TextGeneration)
        assert result.to_output().model_dump(mode="json") == legacy  # an async job's stored result

        answer = TextInferenceResponse.of("m@1", "w1", TextGeneration.model_validate_json(wire(result.to_output())))
        answer.timings.gateway_seconds = 0.01234
        assert json.dumps(answer.model_dump(mode="json")) == routed(legacy, 0.01234)


def test_stream_events_round_trip() -> None:
    deltas = [TextDelta("Pa"), TextDelta("", LOGPROBS), TextDelta("")]
    for delta in deltas:
        event, legacy = delta.to_output(), legacy_delta(delta)
        if legacy is None:
            assert event is None  # nothing to send
            continue
        assert event is not None
        same_bytes(event, legacy, TextStreamDelta)
        assert STREAM_EVENT.validate_json(wire(event)) == event

    result = TextResult("Paris", "stop", 2, 1, None, 0.1, 0.2, 0.3, 1)
    last = TextStreamResult(result=result.to_output())
    same_bytes(last, {"result": legacy_text(result)}, TextStreamResult)
    assert STREAM_EVENT.validate_json(wire(last)) == last

    for exc in (ContextLengthExceeded("too long", param="prompt"), InvalidRequest("bad")):
        failed = TextStreamError.of(exc)
        same_bytes(failed, {**exc.body(), "status_code": exc.status_code}, TextStreamError)
        assert STREAM_EVENT.validate_json(wire(failed)) == failed
        assert stream_error(exc) == {**exc.body(), "status_code": exc.status_code}


def test_embedding_result_round_trips() -> None:
    result = EmbeddingResult([[0.5, -1.0], [1e-07, 2.0]], 9, 0.0123456, 2)
    legacy = {
        "data": result.vectors,
        "usage": {"prompt_tokens": 9, "total_tokens": 9},
        "timings": {"total_seconds": 0.01235, "batch_size": 2},
    }
    same_bytes(result.to_output(), legacy, Embeddings)
    answer = RoutedEmbeddings.of("m@1", "w1", Embeddings.model_validate_json(wire(result.to_output())))
    answer.timings.gateway_seconds = 0.5
    assert json.dumps(answer.model_dump(mode="json")) == routed(legacy, 0.5)


def test_image_result_round_trips() -> None:
    result = ImageResult([b"\x89PNG one", b"\x89PNG two"], [7, 8], 64, 32, 1.000004)
    legacy = {
        "images": [base64.b64encode(png).decode() for png in result.pngs],
        "seeds": [7, 8],
        "timings": {"total_seconds": 1.0},
    }
    same_bytes(result.to_output(), legacy, ImageGeneration)
    answer = RoutedImages.of("m@1", "w1", ImageGeneration.model_validate_json(wire(result.to_output())))
    answer.timings.gateway_seconds = 0.25
    assert json.dumps(answer.model_dump(mode="json")) == routed(legacy, 0.25)
