"""OpenAI Batch API shapes; a batch is a job of type `batch`, so its status maps from the job's."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.webhooks.schemas import WebhookAttemptView, WebhookRequest, WebhookView, attempt_views
from bitinglip.batches.format import ENDPOINTS
from bitinglip.db.tables import Job
from bitinglip.schemas import UnicodeRequest
from bitinglip.webhooks.store import Attempt

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
assert set(Endpoint.__args__) == set(ENDPOINTS)  # type: ignore[attr-defined]

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]


class BatchCreateRequest(UnicodeRequest, WebhookRequest):
    """OpenAI's fields, plus `webhook` and `webhook_events_filter` (the openai SDK sends them in
    `extra_body`)."""

    input_file_id: str = Field(min_length=1, max_length=40)
    endpoint: Endpoint
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(BaseModel):
    code: str | None
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None = None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None
    model: str | None = None
    prefect_run_id: str | None = None  # extension: follow the batch in the Prefect UI
    # extensions beside OpenAI's fields (never inside `metadata`, which is the caller's own)
    webhook: WebhookView | None = None
    webhook_deliveries: list[WebhookAttemptView] = Field(default_factory=list)

    @classmethod
    def from_job(cls, job: Job, attempts: list[Attempt] | None = None) -> BatchObject:
        result, progress = job.result or {}, job.progress or {}
        counts = result.get("request_counts") or {
            k: progress[k] for k in ("total", "completed", "failed") if k in progress
        }
        errors = None
        if job.status == "failed" and job.error:
            errors = BatchErrors(
                data=[
                    BatchError(
                        code=job.error.get("code") or job.error.get("type"), message=job.error.get("message", "")
                    )
                ]
            )
        return cls(
            id=job.id,
            endpoint=job.params["endpoint"],
            errors=errors,
            input_file_id=job.params["input_file_id"],
            completion_window=job.params.get("completion_window", "24h"),
            status=batch_status(job),
            output_file_id=result.get("output_file_id"),
            error_file_id=result.get("error_file_id"),
            created_at=_ts(job.created_at) or 0,
            in_progress_at=_ts(job.started_at),
            expires_at=_ts(job.created_at + timedelta(hours=24)),
            completed_at=_ts(job.finished_at) if job.status == "completed" else None,
            failed_at=_ts(job.finished_at) if job.status == "failed" else None,
            cancelled_at=_ts(job.finished_at) if job.status == "cancelled" else None,
            request_counts=RequestCounts(**counts),
            metadata=job.params.get("metadata"),
            model=job.model,
            prefect_run_id=job.prefect_run_id,
            webhook=WebhookView.of(job.webhook),
            webhook_deliveries=attempt_views(attempts),
        )


def batch_status(job: Job) -> BatchStatus:
    if job.status in ("completed", "failed", "cancelled"):
        return job.status  # type: ignore[return-value]
    if job.cancel_requested:
        return "cancelling"
    if job.status == "queued":
        return "validating"
    phase: Any = (job.progress or {}).get("phase")
    return phase if phase in ("validating", "in_progress", "finalizing") else "validating"


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
