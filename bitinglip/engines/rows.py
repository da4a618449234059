"""One generated sequence's bookkeeping, shared by every text backend: appending tokens, stop strings,
`max_tokens`, cancellation, streaming the stable part of the text, and the final result. Backends
differ in how they compute logits and sample; what a client sees of a row does not."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bitinglip.engines.constraint import RowMatcher
from bitinglip.engines.types import FinishReason, GenerationFailed, TextDelta, TextRequest, TextResult, TokenLogprob
from bitinglip.errors import ContextLengthExceeded, InvalidRequest

# What a logprob of -inf is reported as (OpenAI's convention): JSON has no -Infinity.
MIN_LOGPROB = -9999.0
# Sampling at T above this is as good as uniform (logits span far less than T); capping keeps the divisor
# finite (float32(1e300) is inf, and -inf / inf is NaN).
MAX_TEMPERATURE = 1e4


@dataclass
class Row:
    request: TextRequest
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    emitted_logprobs: int = 0
    finish: FinishReason | None = None
    error: GenerationFailed | None = None  # this row failed alone; the rest of the batch goes on
    eos: bool = False
    started_at: float = field(default_factory=time.perf_counter)
    first_token_at: float = 0.0
    cached: int = 0  # prompt tokens the engine took from its prefix cache
    matcher: RowMatcher | None = None  # its place in the request's grammar (a fresh row starts its own)

    def __post_init__(self) -> None:
        if self.matcher is None and self.request.constraint is not None:
            self.matcher = self.request.constraint.matcher()

    @property
    def done(self) -> bool:
        return self.finish is not None or self.error is not None

    def advance(
        self, token: int, *, eos: bool, decode: Callable[[list[int]], str], logprob: TokenLogprob | None = None
    ) -> None:
        """Take the next sampled token: end at an end-of-sequence token, a stop string (cut off, as
        OpenAI does), `max_tokens` or cancellation; then stream what is stable."""
        if not self.tokens and not self.first_token_at:
            self.first_token_at = time.perf_counter()
        params = self.request.sampling
        if logprob is not None:
            self.logprobs.append(logprob)
        if self.matcher is not None and not self.matcher.accept(token):
            raise RuntimeError(f"the grammar refused a sampled token: {self.matcher.error}")
        if eos:
            self.finish = "stop"
            self.eos = True
        else:
            self.tokens.append(token)
            self.text = decode(self.tokens)
            stop_at = min((p for s in params.stop if (p := self.text.find(s)) >= 0), default=-1)
            if stop_at >= 0:
                self.text = self.text[:stop_at]
                self.finish = "stop"
            elif self.matcher is not None and self.matcher.complete:
                self.finish = "stop"  # the grammar is done: nothing but its end could follow
            elif len(self.tokens) >= params.max_tokens:
                self.finish = "length"
        if self.finish is None and self.request.cancelled.is_set():
            self.finish = "cancelled"
        self.emit()

    def emit(self) -> None:
        """Send the new, stable part of the text: hold back a partial UTF-8 character and any tail
        that could still grow into a stop string, so streamed text always equals the final text."""
        if self.request.sink is None:
            return
        safe = len(self.text)
        if self.finish is None:
            if self.text.endswith("\ufffd"):
                safe -= 1
            for stop in self.request.sampling.stop:
                for k in range(min(len(stop) - 1, safe), 0, -1):
                    if self.text[:safe].endswith(stop[:k]):
                        safe -= k
                        break
        if safe > self.emitted or self.finish is not None:
            new_logprobs = self.logprobs[self.emitted_logprobs :]
            self.emitted_logprobs = len(self.logprobs)
            self.request.sink(TextDelta(self.text[self.emitted : safe], new_logprobs))
            self.emitted = max(self.emitted, safe)

    def result(self, batch_size: int) -> TextResult | GenerationFailed:
        """The row's result, or its failure (which fails that request only)."""
        if self.error is not None:
            return self.error
        request = self.request
        return TextResult(
            text=self.text,
            finish_reason=self.finish or "length",
            prompt_tokens=len(request.input_ids),
            completion_tokens=len(self.tokens) + (1 if self.eos else 0),
            logprobs=self.logprobs if request.sampling.logprobs is not None else None,
            queue_seconds=self.started_at - request.enqueued_at,
            first_token_seconds=self.first_token_at - request.enqueued_at,
            total_seconds=time.perf_counter() - request.enqueued_at,
            batch_size=batch_size,
            cached_tokens=self.cached,
        )


def check_context(input_ids: list[int], max_tokens: int, context_length: int) -> None:
    """Refused before queueing, in OpenAI's words, whichever backend serves the model."""
    if not input_ids:
        raise InvalidRequest("prompt is empty", param="prompt")
    if len(input_ids) + max_tokens > context_length:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_length} tokens; the prompt has "
            f"{len(input_ids)} tokens and max_tokens is {max_tokens}.",
            param="max_tokens" if len(input_ids) < context_length else "prompt",
        )


def template_refused(exc: Exception) -> InvalidRequest:
    """A chat template's own check failed (`raise_exception`, say "roles must alternate"): its message is
    written for the caller, so it is passed on as a 400, not a 500."""
    return InvalidRequest(f"the model's chat template refused these messages: {exc}", param="messages")
