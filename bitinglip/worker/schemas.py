"""The worker's internal API shapes (gateway -> worker)."""

from __future__ import annotations

from pydantic import Field

from bitinglip.engines.types import Priority
from bitinglip.schemas import EmbeddingParams, ImageParams, TextGenerationParams


class WorkerImageRequest(ImageParams):
    priority: Priority = Field(default=Priority.SYNC)


class WorkerEmbeddingRequest(EmbeddingParams):
    priority: Priority = Field(default=Priority.SYNC)


class WorkerTextRequest(TextGenerationParams):
    stream: bool = False
    priority: Priority = Field(default=Priority.SYNC)
