"""Shapes of the console's own routes (signed result links; the event stream's events)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Topic = Literal["jobs", "workers", "dashboard"]
TOPICS: tuple[Topic, ...] = ("jobs", "workers", "dashboard")


class SignRequest(BaseModel):
    path: str = Field(min_length=1, max_length=1024, description="A stored result's path, e.g. images/USER/x.png.")
    ttl_s: int = Field(default=3600, ge=10, le=7 * 86400, description="How long the link works.")


class SignedLink(BaseModel):
    url: str = Field(description="Works without credentials until `expires_at` (Unix seconds).")
    expires_at: int


class JobEvent(BaseModel):
    """A job's status or progress changed (jobs of every kind: text, image, batch, download...)."""

    id: str
    type: str
    model: str
    status: str
    owner: str
    priority: int
    attempts: int
    cancel_requested: bool
    progress: dict[str, Any] | None
    worker: str | None


class Hello(BaseModel):
    """The first event of every stream: who it is for and what it carries."""

    username: str
    role: str
    topics: list[Topic]
    interval_s: float
