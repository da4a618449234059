"""The torch-free vocabulary shared by the gateway, the engines and the flows: priorities and
sampling parameters. Importing it loads no model library, so the gateway stays light
(docs/architecture.md §5)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from bitinglip.errors import InvalidRequest

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
    min_tokens: int = 0  # vLLM's extension: no end-of-sequence token before this many tokens
    ignore_eos: bool = False  # vLLM's extension: never an end-of-sequence token (replies of max_tokens)

    def __post_init__(self) -> None:
        """The engine's own guard, whoever built the params (the HTTP schemas already bound them):
        a NaN or infinite temperature or top_p cannot be sampled from and is refused."""
        if not (math.isfinite(self.temperature) and self.temperature >= 0.0):
            raise InvalidRequest("temperature must be a finite number >= 0", param="temperature")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise InvalidRequest("top_p must be in (0, 1]", param="top_p")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise InvalidRequest("min_tokens must be between 0 and max_tokens", param="min_tokens")

    def holds_eos(self, generated: int) -> bool:
        """Whether the end-of-sequence tokens are masked for the next token (`generated` so far): the
        engines take them out of the distribution, so the reply goes on with real text."""
        return self.ignore_eos or generated < self.min_tokens

    @property
    def greedy(self) -> bool:
        """Temperature 0 and any tiny temperature (e.g. 1e-300) decode greedily (see MIN_TEMPERATURE)."""
        return self.temperature < MIN_TEMPERATURE


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]
