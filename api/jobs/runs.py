"""How each job type becomes a Prefect run (called by the dispatcher, off the event loop)."""

from __future__ import annotations

from collections.abc import Callable


def _inference(model: str, job_ids: list[str]) -> str:
    from flows.inference import submit_inference_run

    return submit_inference_run(model, job_ids)


def _download(model: str, job_ids: list[str]) -> str:
    from flows.download import submit_download_run

    (job_id,) = job_ids  # one flow run per download
    return submit_download_run(job_id)


SUBMITTERS: dict[str, Callable[[str, list[str]], str]] = {
    "text": _inference,
    "embedding": _inference,
    "image": _inference,
    "download": _download,
}
GROUPED = {"text", "embedding", "image"}  # job types whose queued jobs share one run; the others get one run each


def submit_run(job_type: str, model: str, job_ids: list[str]) -> str:
    return SUBMITTERS[job_type](model, job_ids)
