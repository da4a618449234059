"""Typed requests and results that flow between the batcher and the engines (TGI-style). The torch-free
vocabulary they share with the gateway (priorities, sampling parameters) lives in `bitinglip.types`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bitinglip.errors import BitingLipError
from bitinglip.outputs import Logprob, PromptTokensDetails, TextGeneration, TextStreamDelta, TextTimings, TextUsage
from bitinglip.types import MIN_TEMPERATURE as MIN_TEMPERATURE  # re-exported for engine code
from bitinglip.types import FinishReason as FinishReason
from bitinglip.types import Priority as Priority
from bitinglip.types import SamplingParams as SamplingParams
from bitinglip.types import TokenLogprob as TokenLogprob

if TYPE_CHECKING:
    from bitinglip.engines.constraint import Constraint
    from bitinglip.structured.formats import ToolCall


class GenerationFailed(BitingLipError):
    """One request failed inside an engine on its own (its logits went non-finite, or it raised when
    run alone) while the rest of its batch went on. The detail is logged on the worker; the client
    gets only this message, never internal exception text."""

    code = "generation_failed"

    def __init__(self, message: str = "generation failed for this request") -> None:
        super().__init__(message)


@dataclass
class TextDelta:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def to_output(self) -> TextStreamDelta | None:
        """The stream event for this piece; None when there is nothing to send."""
        if not self.text and not self.logprobs:
            return None
        return TextStreamDelta(delta=self.text, logprobs=[Logprob.of(lp) for lp in self.logprobs] or None)


@dataclass
class TextRequest:
    """One prompt, already tokenized; `sink` receives text deltas from the compute thread."""

    input_ids: list[int]
    sampling: SamplingParams
    sink: Callable[[TextDelta], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    tenant: str | None = None  # whose prompts it may share cached work with (the prefix cache)
    enqueued_at: float = field(default_factory=time.perf_counter)
    constraint: Constraint | None = None  # the grammar the reply follows (response_format, tools)
    on_restart: Callable[[], None] | None = None
    """Set when `sink` can take the text again from the start (told by this call first): an engine may
    then restart the row from its prompt although it streamed (an async job's watched text)."""


@dataclass
class TextResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    queue_seconds: float = 0.0
    first_token_seconds: float = 0.0
    total_seconds: float = 0.0
    batch_size: int = 1
    cached_tokens: int = 0  # of the prompt, reused from a cached prefix rather than computed
    tool_calls: list[ToolCall] | None = None  # the call the reply made (finish_reason "tool_calls")

    def to_output(self) -> TextGeneration:
        """The result as it leaves the worker (timings rounded to 10 µs)."""
        return TextGeneration(
            text=self.text,
            finish_reason=self.finish_reason,
            usage=TextUsage(
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                total_tokens=self.prompt_tokens + self.completion_tokens,
                prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_tokens),
            ),
            logprobs=None if self.logprobs is None else [Logprob.of(lp) for lp in self.logprobs],
            tool_calls=self.tool_calls,
            timings=TextTimings(
                queue_seconds=round(self.queue_seconds, 5),
                first_token_seconds=round(self.first_token_seconds, 5),
                total_seconds=round(self.total_seconds, 5),
                batch_size=self.batch_size,
            ),
        )
