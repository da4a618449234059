"""How a dispatched flow-run job (batch, download) becomes a flow run of its deployment
(bitinglip/jobs/kinds.py). The gateway injects `submit_run` into its dispatcher; this module loads no
model library. Model-worker jobs never come here: workers pull them (bitinglip/worker/pump.py).

Only the job id (and, for flows that show them, the job's params) travel through Prefect's parameter
storage; tags name the kind, the model and the owner, so the Prefect UI can be searched by user."""

from __future__ import annotations

from typing import Any, cast

from bitinglip.jobs.kinds import JobKind
from bitinglip.jobs.store import Dispatched


def submit_run(kind: JobKind, job: Dispatched) -> str:
    """Create the flow run for `job` (blocking call); returns its run id."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    assert kind.deployment is not None, f"{kind.type} jobs are pulled by model workers, not dispatched"
    tags = ["bitinglip", kind.type, f"model:{job.model}", f"owner:{job.owner}"]
    params: dict[str, Any] = {**job.params, "job_id": job.id} if kind.flow_takes_params else {"job_id": job.id}
    run = run_deployment(kind.deployment, parameters=params, timeout=0, tags=tags)
    return str(cast(FlowRun, run).id)
