"""Typed inference outputs: what a model worker answers (its JSON over HTTP, a stream's NDJSON lines,
an async job's stored result) and what the serving layer reads, online and offline.

Pydantic because they cross HTTP; torch-free so the gateway, the serving layer, the worker and the
engines all share one definition. Field order and optional fields mirror the JSON the platform has
always sent: `model_dump(mode="json")` of each is that JSON, byte for byte."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter

from bitinglip.errors import BitingLipError
from bitinglip.structured.formats import ToolCall
from bitinglip.types import FinishReason, TokenLogprob


def _unset(value: Any) -> bool:
    return value is None


# The gateway's own share of a relayed call, added to the worker's timings; absent (not null) in what a
# worker sends, in a stream's result event, in a job's stored result and offline.
GatewaySeconds = Annotated[float | None, Field(default=None, exclude_if=_unset)]


class Logprob(BaseModel):
    """One generated token's logprob and its top alternatives as `[token, logprob]` pairs."""

    token: str
    logprob: float
    top_logprobs: list[tuple[str, float]]

    @classmethod
    def of(cls, lp: TokenLogprob) -> Logprob:
        return cls(token=lp.token, logprob=lp.logprob, top_logprobs=list(lp.top))


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens whose KV came from the engine's prefix cache


class TextUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class TextTimings(BaseModel):
    queue_seconds: float
    first_token_seconds: float
    total_seconds: float
    batch_size: int
    gateway_seconds: GatewaySeconds = None


class TextGeneration(BaseModel):
    """One finished generation (the worker's `/internal/v1/text` answer, a stream's last event)."""

    text: str
    finish_reason: FinishReason
    usage: TextUsage
    logprobs: list[Logprob] | None = None
    timings: TextTimings
    # the call the reply holds when `tools` were given (then finish_reason is "tool_calls"); absent otherwise
    tool_calls: Annotated[list[ToolCall] | None, Field(default=None, exclude_if=_unset)] = None


class TextStreamDelta(BaseModel):
    delta: str
    logprobs: list[Logprob] | None = None


class TextStreamResult(BaseModel):
    result: TextGeneration


class ErrorDetail(BaseModel):
    """The inside of our error envelope (`bitinglip.errors.error_body`)."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class TextStreamError(BaseModel):
    """A failure after the stream started: it can only travel as an event."""

    error: ErrorDetail
    status_code: int = 500

    @classmethod
    def of(cls, exc: BitingLipError) -> TextStreamError:
        return cls(error=ErrorDetail.model_validate(exc.body()["error"]), status_code=exc.status_code)


# One NDJSON line of a text stream: deltas, then a result or an error. Each kind has its own required
# key, so trying them in order picks the right one.
TextStreamEvent = Annotated[TextStreamDelta | TextStreamResult | TextStreamError, Field(union_mode="left_to_right")]
STREAM_EVENT: TypeAdapter[TextStreamEvent] = TypeAdapter(TextStreamEvent)


class PromptUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingTimings(BaseModel):
    total_seconds: float
    batch_size: int
    gateway_seconds: GatewaySeconds = None


class Embeddings(BaseModel):
    """One vector per input text, in input order."""

    data: list[list[float]]
    usage: PromptUsage
    timings: EmbeddingTimings


class ImageTimings(BaseModel):
    total_seconds: float
    gateway_seconds: GatewaySeconds = None


class ImageGeneration(BaseModel):
    """The worker's images: base64 PNGs, each with the seed that reproduces it."""

    images: list[str]
    seeds: list[int]
    timings: ImageTimings


class GeneratedImage(BaseModel):
    """One image as the gateway hands it out: inline (`b64_json`) or stored (`url`)."""

    seed: int
    b64_json: str | None = None
    url: str | None = None


class ModelLoaded(BaseModel):
    """A worker's answer to a load: the model as its heartbeat reports it (bitinglip/db/workers.py)."""

    model: dict[str, Any]


class ModelsUnloaded(BaseModel):
    """A worker's answer to an unload: the ids it unloaded (none: the model was not loaded there)."""

    unloaded: list[str]
