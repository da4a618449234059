"""Async inference jobs as Prefect background task runs, executed by model workers with warm models.

One run carries a group of queued jobs of one model (created by flows/submit.py). Job
parameters stay in the gateway DB: only job ids travel through Prefect's parameter storage."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import acreate_image_artifact

from bitinglip.signed_urls import result_link
from bitinglip.worker.runtime import current_runtime


@task(
    name="run-inference-jobs",
    retries=2,
    retry_delay_seconds=2,
    task_run_name="{model} x{count}",
    log_prints=True,
)
async def run_inference_jobs(job_ids: list[str], model: str, count: int) -> dict[str, str]:
    """Runs inside `bitinglip worker`, whose task worker serves this task. Generated images also
    show on this run in the Prefect UI, as image artifacts with signed links (no key needed to see them)."""
    runner = current_runtime().runner
    summary = await runner.run(job_ids)
    for job_id, paths in (await runner.stored_images(job_ids)).items():
        for i, path in enumerate(paths):
            await acreate_image_artifact(
                image_url=result_link(runner.settings, path, runner.settings.artifact_link_ttl_s)[0],
                description=f"job {job_id}, image {i}",
            )
    return summary
