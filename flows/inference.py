"""Async inference jobs as Prefect runs, executed inside a model worker next to its warm models.

A worker's job pump (bitinglip/worker/pump.py) claims queued jobs from the job table and opens one
`inference-jobs` flow run per busy spell; each job is its own `inference-job` task run in it, named and
tagged so the Prefect UI finds it by job id, type, model, owner and priority. Job parameters stay in the
gateway DB (sealed when encryption is on): only ids and labels travel to Prefect."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import acreate_image_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run
from prefect.states import Cancelled, Completed, Failed, State

from bitinglip.types import Priority
from bitinglip.worker.jobs import TransientJobError
from bitinglip.worker.runtime import current_runtime

JOB_RETRIES = 2


def _run_name(parameters: dict[str, Any]) -> str:
    priority = Priority(parameters["priority"]).name.lower()
    return f"{parameters['type']} job {parameters['job_id']} · {parameters['owner']} · {priority}"


async def _transient(task: object, task_run: object, state: State[Any]) -> bool:
    """Only a transient failure is worth another try; a bad request failed for good. Async: in Prefect's
    async task engine a sync `state.result()` returns a coroutine instead of raising, so nothing was ever
    retried."""
    return isinstance(await state.aresult(raise_on_failure=False), TransientJobError)


@task(
    name="inference-job",
    retries=JOB_RETRIES,
    retry_delay_seconds=2,
    retry_condition_fn=_transient,
    task_run_name=_run_name,  # type: ignore[arg-type]
    persist_result=False,
    cache_policy=NO_CACHE,  # a job runs once per claim: its outcome lives in the job row
)
async def run_inference_job(job_id: str, type: str, model: str, owner: str, priority: int) -> State[Any]:
    """One claimed job. A transient failure raises while retries remain (Prefect retries it here, the
    claim kept); the last one, or a bad request, ends the job `failed`. Its images show on the run as
    artifacts with signed links (no key needed to see them)."""
    runtime = current_runtime()
    run_id = str(task_run.id)
    final_try = task_run.run_count > JOB_RETRIES
    pump = runtime.pump
    job, cancelled, work = pump.claimed[job_id], pump.cancelled[job_id], pump.started.pop(job_id, None)
    status = await runtime.runner.execute(job, cancelled, run_id, final_try, work)
    for i, path in enumerate(await runtime.runner.stored_images(job, status)):
        await acreate_image_artifact(image_url=runtime.runner.image_url(path), description=f"job {job_id}, image {i}")
    if status == "cancelled":
        return Cancelled(message=f"job {job_id} was cancelled by its owner")
    if status == "failed":
        return Failed(message=f"job {job_id} failed: see its error in the job (GET /api/v1/tasks/{job_id})")
    return Completed(message=f"job {job_id} completed")


@flow(name="inference-jobs", flow_run_name="jobs on {worker}", persist_result=False, log_prints=False)
async def serve_inference_jobs(worker: str) -> dict[str, int]:
    """Lasts while the worker has jobs (and `job_flow_idle_s` after): a steady trickle of jobs shares
    one flow run instead of paying a run's start per job."""
    return await current_runtime().pump.drain()
