"""How a dispatched group of jobs becomes a Prefect run, by its kind (bitinglip/jobs/kinds.py): grouped
model-worker kinds become one background task run, flow-run kinds one flow run of their deployment per
job. The gateway injects `submit_run` into its dispatcher; this module loads no model library.

Only job ids (and, for flows that show them, the job's params) travel through Prefect's parameter
storage; tags name the kind, the model and every owner, so the Prefect UI can be searched by user."""

from __future__ import annotations

from typing import Any, cast

from bitinglip.jobs.kinds import JobKind
from bitinglip.jobs.store import Dispatched


def _tags(kind: JobKind, model: str, jobs: list[Dispatched]) -> list[str]:
    return ["bitinglip", kind.type, f"model:{model}", *(f"owner:{o}" for o in sorted({j.owner for j in jobs}))]


def submit_run(kind: JobKind, model: str, jobs: list[Dispatched]) -> str:
    """Create the Prefect run for `jobs` (blocking call); returns its run id."""
    if kind.deployment is None:
        from flows.inference import run_inference_jobs

        job_ids = [j.id for j in jobs]
        future = run_inference_jobs.with_options(tags=_tags(kind, model, jobs)).delay(
            job_ids=job_ids, model=model, count=len(job_ids)
        )
        return str(future.task_run_id)

    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    (job,) = jobs  # flow-run kinds are not grouped: one run per job
    params: dict[str, Any] = {**job.params, "job_id": job.id} if kind.flow_takes_params else {"job_id": job.id}
    run = run_deployment(kind.deployment, parameters=params, timeout=0, tags=_tags(kind, model, jobs))
    return str(cast(FlowRun, run).id)
