from __future__ import annotations

from fastapi import APIRouter, Query, Response

from api.deps import IdempotencyKeyDep, JobServiceDep, PrincipalDep, ScopeDep, replayed
from api.jobs.schemas import JobPageView, JobRequest, JobStatus, JobView, QueueStatus
from api.jobs.service import JobDeleted

router = APIRouter(prefix="/api/v1", tags=["jobs"])


@router.post("/tasks", status_code=202, response_model=JobView)
async def submit_job(
    body: JobRequest, jobs: JobServiceDep, who: PrincipalDep, response: Response, key: IdempotencyKeyDep
) -> JobView:
    view, replay = await jobs.submit(body, who, key)
    replayed(response, replay)
    return view


@router.get("/tasks", response_model=JobPageView)
async def list_jobs(
    jobs: JobServiceDep,
    scope: ScopeDep,
    status: JobStatus | None = None,
    type: str | None = Query(default=None, max_length=16),
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=1_000_000_000),
) -> JobPageView:
    return await jobs.list(scope, status, type, limit, offset)


@router.get("/tasks/{job_id}", response_model=JobView)
async def get_job(job_id: str, jobs: JobServiceDep, scope: ScopeDep) -> JobView:
    return await jobs.get(job_id, scope)


@router.delete("/tasks/{job_id}", response_model=JobView | JobDeleted)
async def cancel_job(
    job_id: str,
    jobs: JobServiceDep,
    scope: ScopeDep,
    purge: bool = Query(
        default=False,
        description="Delete the job and its stored outputs (images, a batch's output and error files) now, "
        "instead of cancelling it: answered with `deleted: true`. A queued job is cancelled first; a running "
        "one is a 409 until it has stopped.",
    ),
) -> JobView | JobDeleted:
    """Cancel a job: a queued one at once, a running one at its next token. With `purge=true`,
    delete it instead (see `purge`)."""
    if purge:
        return await jobs.delete(job_id, scope)
    return await jobs.cancel(job_id, scope)


@router.get("/queue/status", response_model=QueueStatus)
async def queue_status(jobs: JobServiceDep) -> QueueStatus:
    return await jobs.queue_status()
