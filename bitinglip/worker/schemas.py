"""The worker's internal API shapes (gateway -> worker)."""

from __future__ import annotations

from pydantic import Field

from bitinglip.engines.types import Priority
from bitinglip.schemas import TextGenerationParams


class WorkerTextRequest(TextGenerationParams):
    stream: bool = False
    priority: Priority = Field(default=Priority.SYNC)
