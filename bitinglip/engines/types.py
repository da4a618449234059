"""Typed requests and results that flow between the batcher and the engines (TGI-style)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal


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

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


FinishReason = Literal["stop", "length", "cancelled"]


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
