"""Typed requests and results that flow between the batcher and the engines (TGI-style)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

from bitinglip.errors import BitingLipError, InvalidRequest

# Below this temperature sampling is greedy decoding: the softmax of logits / T is one-hot for any
# logit gap above ~1e-3, and smaller divisors only overflow float32 logits into inf and NaN.
MIN_TEMPERATURE = 1e-5


class Priority(IntEnum):
    """Lower runs first: interactive requests, then async jobs by their priority, then batches."""

    SYNC = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BATCH = 4

    @classmethod
    def for_job(cls, name: str) -> Priority:
        return {"high": cls.HIGH, "normal": cls.NORMAL, "low": cls.LOW}[name]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: off; 0: chosen token only; k: plus k alternatives

    def __post_init__(self) -> None:
        """The engine's own guard, whoever built the params (the HTTP schemas already bound them):
        a NaN or infinite temperature or top_p cannot be sampled from and is refused."""
        if not (math.isfinite(self.temperature) and self.temperature >= 0.0):
            raise InvalidRequest("temperature must be a finite number >= 0", param="temperature")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise InvalidRequest("top_p must be in (0, 1]", param="top_p")

    @property
    def greedy(self) -> bool:
        """Temperature 0 and any tiny temperature (e.g. 1e-300) decode greedily (see MIN_TEMPERATURE)."""
        return self.temperature < MIN_TEMPERATURE


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


FinishReason = Literal["stop", "length", "cancelled"]


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


@dataclass
class TextRequest:
    """One prompt, already tokenized; `sink` receives text deltas from the compute thread."""

    input_ids: list[int]
    sampling: SamplingParams
    sink: Callable[[TextDelta], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.perf_counter)


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            },
            "logprobs": None
            if self.logprobs is None
            else [
                {"token": lp.token, "logprob": lp.logprob, "top_logprobs": [list(t) for t in lp.top]}
                for lp in self.logprobs
            ],
            "timings": {
                "queue_seconds": round(self.queue_seconds, 5),
                "first_token_seconds": round(self.first_token_seconds, 5),
                "total_seconds": round(self.total_seconds, 5),
                "batch_size": self.batch_size,
            },
        }
