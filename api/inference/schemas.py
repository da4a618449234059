from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from bitinglip.schemas import EmbeddingParams, ImageParams, TextGenerationParams


class TextInferenceRequest(TextGenerationParams):
    stream: bool = False


class EmbeddingInferenceRequest(EmbeddingParams):
    pass


class Embedding(BaseModel):
    index: int
    embedding: list[float]


class EmbeddingInferenceResponse(BaseModel):
    model: str
    worker: str
    data: list[Embedding]
    dimensions: int
    usage: dict[str, int]
    timings: dict[str, float | int]


class ImageInferenceRequest(ImageParams):
    response_format: Literal["b64_json", "url"] = "b64_json"


class GeneratedImage(BaseModel):
    seed: int
    b64_json: str | None = None
    url: str | None = None


class ImageInferenceResponse(BaseModel):
    model: str
    worker: str
    data: list[GeneratedImage]
    timings: dict[str, float | int]


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
