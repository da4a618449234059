"""Async job shapes. `type` discriminates `params`, so image/embedding/batch jobs slot in later."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag

from api.webhooks.schemas import WebhookAttemptView, WebhookRequest, WebhookView, attempt_views
from bitinglip.db.tables import Job
from bitinglip.jobs.kinds import job_kind
from bitinglip.schemas import EmbeddingParams, ImageParams, TextGenerationParams
from bitinglip.types import Priority
from bitinglip.webhooks.store import Attempt

PriorityName = Literal["high", "normal", "low"]
Link = Callable[[str], tuple[str, int]]  # a stored result's path -> (signed URL, expiry)
JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]


class TextJobRequest(WebhookRequest):
    type: Literal["text"] = "text"
    priority: PriorityName = "normal"
    params: TextGenerationParams


class EmbeddingJobRequest(WebhookRequest):
    type: Literal["embedding"]
    priority: PriorityName = "normal"
    params: EmbeddingParams


class ImageJobRequest(WebhookRequest):
    type: Literal["image"]
    priority: PriorityName = "normal"
    params: ImageParams


def _job_type(value: Any) -> str:
    """`type` picks the params' shape; a job without one is a text job."""
    found = value.get("type", "text") if isinstance(value, dict) else getattr(value, "type", "text")
    return str(found)


JobRequest = Annotated[
    Annotated[TextJobRequest, Tag("text")]
    | Annotated[EmbeddingJobRequest, Tag("embedding")]
    | Annotated[ImageJobRequest, Tag("image")],
    Discriminator(
        _job_type,
        custom_error_type="invalid_job_type",
        custom_error_message="`type` should be 'text', 'embedding' or 'image'",
    ),
]


class JobTimings(BaseModel):
    queue_seconds: float | None = None
    run_seconds: float | None = None
    engine_seconds: float | None = None


class JobView(BaseModel):
    id: str
    type: str
    model: str
    status: str
    priority: PriorityName
    owner: str
    request_id: str | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    progress: dict[str, Any] | None = Field(
        description="How far a long job is, pushed live by GET /api/v1/events. A download: `phase` (fetch, "
        "convert, install, completed), `fraction` (0-1 of the whole install) and what the fetch moved: "
        "`bytes_done`/`bytes_total`, `files_done`/`files_total` (a total of 0: not known). A batch: its "
        "`phase`, `total`/`completed`/`failed` lines and `chunks`."
    )
    attempts: int
    cancel_requested: bool
    prefect_run_id: str | None
    prefect_url: str | None
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timings: JobTimings
    webhook: WebhookView | None = Field(default=None, description="Where the job's events are POSTed, if anywhere.")
    webhook_deliveries: list[WebhookAttemptView] = Field(
        default_factory=list, description="Every attempt to deliver an event to the webhook, oldest first."
    )

    @classmethod
    def from_job(
        cls, job: Job, prefect_ui: str, link: Link | None = None, attempts: list[Attempt] | None = None
    ) -> JobView:
        def seconds(a: datetime | None, b: datetime | None) -> float | None:
            return None if a is None or b is None else round((b - a).total_seconds(), 4)

        return cls(
            id=job.id,
            type=job.type,
            model=job.model,
            status=job.status,
            priority=_PRIORITY_NAMES.get(job.priority, "normal"),
            owner=job.owner,
            request_id=job.request_id,
            params=job.params,
            result=_with_links(job.result, link),
            error=job.error,
            progress=job.progress,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            prefect_run_id=job.prefect_run_id,
            prefect_url=(
                f"{prefect_ui}/runs/{job_kind(job.type).prefect_run_kind}/{job.prefect_run_id}"
                if job.prefect_run_id
                else None
            ),
            worker=job.worker_id,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            timings=JobTimings(
                queue_seconds=seconds(job.created_at, job.started_at),
                run_seconds=seconds(job.started_at, job.finished_at),
                engine_seconds=job.engine_seconds,
            ),
            webhook=WebhookView.of(job.webhook),
            webhook_deliveries=attempt_views(attempts),
        )


def _with_links(result: dict[str, Any] | None, link: Link | None) -> dict[str, Any] | None:
    """Stored outputs (image jobs) are listed by path (GET /api/v1/files/{path}, with credentials);
    beside each, a signed link that opens without any until `url_expires_at` (an <img> tag, a chat)."""
    if not result or "images" not in result or link is None:
        return result
    images = []
    for img in result["images"]:
        url, expires = link(img["path"])
        images.append({**img, "url": url, "url_expires_at": expires})
    return {**result, "images": images}


_PRIORITY_NAMES: dict[int, PriorityName] = {
    Priority.HIGH: "high",
    Priority.NORMAL: "normal",
    Priority.LOW: "low",
}


class JobPageView(BaseModel):
    items: list[JobView]
    total: int
    limit: int
    offset: int


class QueueStatus(BaseModel):
    by_status: dict[str, int]
    queued_by_priority: dict[PriorityName, int]
    dispatcher_healthy: bool
