"""How each job type becomes a Prefect run (called by the dispatcher, off the event loop)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, cast

from bitinglip.config import get_settings
from bitinglip.db.session import Database
from bitinglip.db.tables import Job
from bitinglip.jobs.store import JobStore


@lru_cache(maxsize=1)
def _store(url: str) -> JobStore:
    return JobStore(Database(url))


def _jobs(job_ids: list[str]) -> list[Job]:
    return _store(get_settings().gateway_db_url).many(job_ids)


def _inference(model: str, job_ids: list[str]) -> str:
    from flows.inference import submit_inference_run

    return submit_inference_run(model, job_ids, [job.owner for job in _jobs(job_ids)])


def _deployment(name: str, with_params: bool) -> Callable[[str, list[str]], str]:
    """One flow run of a deployment per job; the job id is its parameter (plus the job's own
    parameters where the flow takes them). Tags carry the owner so the Prefect UI stays searchable."""

    def submit(model: str, job_ids: list[str]) -> str:
        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment

        (job,) = _jobs(job_ids)
        params: dict[str, Any] = {**job.params, "job_id": job.id} if with_params else {"job_id": job.id}
        run = run_deployment(
            name, parameters=params, timeout=0, tags=["bitinglip", job.type, f"model:{model}", f"owner:{job.owner}"]
        )
        return str(cast(FlowRun, run).id)

    return submit


SUBMITTERS: dict[str, Callable[[str, list[str]], str]] = {
    "text": _inference,
    "embedding": _inference,
    "image": _inference,
    "download": _deployment("download-model/download-model", with_params=True),
    "batch": _deployment("batch-inference/batch-inference", with_params=False),
}
GROUPED = {"text", "embedding", "image"}  # job types whose queued jobs share one run; the others get one run each


def submit_run(job_type: str, model: str, job_ids: list[str]) -> str:
    return SUBMITTERS[job_type](model, job_ids)
