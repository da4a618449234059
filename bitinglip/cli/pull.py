"""`models pull` through a gateway (BITINGLIP_GATEWAY_URL set): the platform runs the download as a
`download-model` flow run on its `cpu` pool, and this follows the download's job with the progress
bar a local pull draws (the flow writes its phase, overall fraction and fetched bytes into the job)."""

from __future__ import annotations

import time
from typing import Any

from bitinglip.cli import _gateway, _segment, console, fail
from bitinglip.progress import PhaseBars, install_progress

FINISHED = ("completed", "failed", "cancelled")


def pull_through_gateway(
    name: str, source: str | None, revision: str | None, backend: str, task: str | None
) -> dict[str, Any]:
    """The installed model's id, backend, size and sha256, once the job completes; one line and exit 1
    when it does not (the job's own error, as the gateway records it)."""
    body = {"name": name, "source": source, "revision": revision, "task": task, "backend": backend}
    job = _gateway("POST", "/api/v1/models/download", json={k: v for k, v in body.items() if v is not None})
    with install_progress(console) as progress:
        bars = PhaseBars(progress, name)
        waiting = progress.add_task(f"{name}: {job['status']} (job {job['id']})", total=None)
        while job["status"] not in FINISHED:
            time.sleep(0.5)
            job = _gateway("GET", f"/api/v1/tasks/{_segment(job['id'])}")
            report = job.get("progress") or {}
            if report.get("phase") == "fetch" and isinstance(report.get("bytes_total"), int):
                progress.update(waiting, visible=False)
                bars.draw("fetch", int(report.get("bytes_done") or 0), report["bytes_total"])
            elif report.get("phase") in ("convert", "install") and isinstance(report.get("fraction"), float | int):
                progress.update(waiting, visible=False)  # later phases report the install's overall share
                bars.draw(str(report["phase"]), round(1000 * float(report["fraction"])), 1000)
            else:
                progress.update(waiting, description=f"{name}: {job['status']} (job {job['id']})")
    if job["status"] != "completed":
        reason = (job.get("error") or {}).get("message") or job["status"]
        fail(f"{name} was not installed: {reason}")
    return dict(job["result"])
