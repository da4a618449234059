from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel

from bitinglip.outputs import (
    Embeddings,
    EmbeddingTimings,
    GeneratedImage,
    ImageGeneration,
    PromptUsage,
    TextGeneration,
)
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
    usage: PromptUsage
    timings: EmbeddingTimings


class ImageInferenceRequest(ImageParams):
    response_format: Literal["b64_json", "url"] = "b64_json"


class ImageInferenceResponse(BaseModel):
    model: str
    worker: str
    data: list[GeneratedImage]
    timings: dict[str, float | int]


class Routed(BaseModel):
    """Which model and worker served a worker's answer: the gateway adds them when it relays it."""

    model: str
    worker: str

    @classmethod
    def of(cls, model: str, worker: str, result: BaseModel) -> Self:
        """`result`'s fields (the worker's answer, already validated) under the routing."""
        return cls(model=model, worker=worker, **dict(result))


# Routed last among the bases, so `model` and `worker` come first in the JSON, as they always have.
class TextInferenceResponse(TextGeneration, Routed):
    pass


class RoutedEmbeddings(Embeddings, Routed):
    pass


class RoutedImages(ImageGeneration, Routed):
    pass
