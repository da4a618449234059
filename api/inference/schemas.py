from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from bitinglip.schemas import TextGenerationParams


class TextInferenceRequest(TextGenerationParams):
    stream: bool = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TextInferenceResponse(BaseModel):
    model: str
    worker: str
    text: str
    finish_reason: str
    usage: Usage
    logprobs: list[dict[str, Any]] | None = None
    timings: dict[str, float | int]
