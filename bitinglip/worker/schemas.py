"""The worker's internal API shapes (gateway -> worker)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from bitinglip.engines.types import Priority
from bitinglip.keep_alive import KeepAlive
from bitinglip.schemas import KEEP_ALIVE_HELP, EmbeddingParams, ImageParams, TextGenerationParams


class WorkerImageRequest(ImageParams):
    priority: Priority = Field(default=Priority.SYNC)


class WorkerEmbeddingRequest(EmbeddingParams):
    priority: Priority = Field(default=Priority.SYNC)


class WorkerTextRequest(TextGenerationParams):
    stream: bool = False
    priority: Priority = Field(default=Priority.SYNC)
    tenant: str | None = Field(default=None, max_length=256, description="The caller, set by the gateway.")


class WorkerLoadRequest(BaseModel):
    keep_alive: KeepAlive | None = Field(default=None, description=KEEP_ALIVE_HELP)


class WorkerUnloadRequest(BaseModel):
    force: bool = Field(default=False, description="Even with requests waiting or running: they fail.")
