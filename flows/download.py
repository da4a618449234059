"""Install a model into the store as a tracked Prefect flow run (deployed on the `cpu` pool)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run

from bitinglip.config import Settings, get_settings
from bitinglip.db.session import Database
from bitinglip.errors import BitingLipError, error_record
from bitinglip.jobs.flowjob import FlowJob
from bitinglip.jobs.store import JobStore
from bitinglip.models import installer, registry
from bitinglip.models.backends import RequestedBackend
from bitinglip.models.budget import evict_for
from bitinglip.models.catalog import Task
from bitinglip.models.install_spec import resolve_install
from bitinglip.models.sources import parse_source
from bitinglip.models.store import Manifest, ModelStore


def _transient(task: object, task_run: object, state: State) -> bool:
    """Retry network hiccups, not answers: a missing source or a bad checksum stays that way."""
    return not isinstance(state.result(raise_on_failure=False), BitingLipError)


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_transient, task_run_name="fetch {source}")
def fetch_files(source: str, dest: Path) -> None:
    installer.fetch(get_settings(), parse_source(source), dest)


@task(task_run_name="convert for {backend}")
def convert_files(fetched: Path, out: Path, backend: str, task_type: Task) -> installer.Prepared:
    return installer.convert(fetched, out, backend, task_type)


@task(task_run_name="install {name}@{revision}")
def install_files(
    staged: Path, name: str, revision: str, task_type: Task, source: str, prepared: installer.Prepared
) -> Manifest:
    store = ModelStore(get_settings().store_dir)
    return installer.install(
        store,
        staged,
        name=name,
        revision=revision,
        task=task_type,
        source=source,
        converted_from=prepared.converted_from,
        backend=prepared.backend,
    )


def _throttled(report: installer.ProgressListener, every_s: float = 0.5) -> installer.ProgressListener:
    """`report` at most every `every_s` while a phase runs, and at the end of each."""
    last = [0.0]

    def listener(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < every_s and done < total:
            return
        last[0] = now
        report(phase, done, total)

    return listener


def _progress_to_artifact() -> installer.ProgressListener:
    artifact_id = cast(UUID, create_progress_artifact(0.0, key=None, description="model download progress"))
    weights = {"fetch": (0.0, 60.0), "convert": (60.0, 35.0), "install": (95.0, 5.0)}

    def listener(phase: str, done: int, total: int) -> None:
        start, span = weights.get(phase, (0.0, 100.0))
        update_progress_artifact(artifact_id, start + span * (done / total if total else 1.0))

    return _throttled(listener)


def _progress_to_job(job: FlowJob) -> installer.ProgressListener:
    """The job row carries the phase and its bytes, so `bitinglip models pull` against a remote
    gateway (and anyone reading the job) can draw the same progress bar as a local pull."""
    return _throttled(lambda phase, done, total: job.progress({"phase": phase, "done": done, "total": total}))


@flow(name="download-model", flow_run_name="download {name}", log_prints=True)
def download_model(
    name: str,
    source: str | None = None,
    revision: str | None = None,
    task_type: Task | None = None,
    job_id: str | None = None,
    backend: RequestedBackend = "auto",
) -> dict[str, object]:
    """Fetch, convert, verify and install one model; the store is unchanged unless it all succeeds.
    `backend`: auto (llama.cpp for a GGUF when installed, else transformers), transformers or llama.cpp.
    With `job_id` (API downloads) the job record follows the run: running, then completed/failed."""
    settings = get_settings()
    db = Database(settings.gateway_db_url)
    try:
        if job_id is None:
            return _install(settings, db, name, source, revision, task_type, backend)
        with FlowJob(JobStore(db), job_id, str(flow_run.get_id()), settings.worker_heartbeat_s) as job:
            if job.claim(settings.job_max_attempts) is None:
                return {"skipped": job.skipped}
            with job.failing():
                outcome = _install(settings, db, name, source, revision, task_type, backend, job)
            job.finish("completed", result=outcome)
            return outcome
    finally:
        db.dispose()


def _install(
    settings: Settings,
    db: Database,
    name: str,
    source: str | None,
    revision: str | None,
    task_type: Task | None,
    backend: str,
    job: FlowJob | None = None,
) -> dict[str, object]:
    # the same rule as the API (a run started by hand gets what the API would have given); the fetch
    # task checks the source again file by file where it reads (sources.py)
    spec = resolve_install(settings, name, source, revision, task_type, backend)
    name, source, revision, task_type = spec.name, spec.source, spec.revision, spec.task
    store = ModelStore(settings.store_dir)
    registry.mark_downloading(db, name, revision, task_type, source)
    removers = [installer.add_progress_listener(_progress_to_artifact())]
    if job is not None:
        removers.append(installer.add_progress_listener(_progress_to_job(job)))
    try:
        with store.staging() as staging:
            fetch_files(source, staging / "fetched")
            prepared = convert_files(staging / "fetched", staging / "model", spec.backend, task_type)
            make_room(settings, db, store, staging / "model", f"{name}@{revision}")
            manifest = install_files(staging / "model", name, revision, task_type, source, prepared)
        registry.mark_ready(db, manifest, store)
    except Exception as exc:
        registry.mark_failed(db, f"{name}@{revision}", error_record(exc)["message"])
        raise
    finally:
        for remove in removers:
            remove()
    create_markdown_artifact(
        f"## Installed `{manifest.id}`\n\n| | |\n|---|---|\n| task | {manifest.task} |\n"
        f"| backend | {manifest.backend} |\n"
        f"| source | `{manifest.source}` |\n| files | {len(manifest.files)} |\n"
        f"| size | {manifest.size_bytes / 1e6:.1f} MB |\n| sha256 | `{manifest.sha256[:16]}...` |\n"
        f"| converted from | {manifest.converted_from or '-'} |\n",
        description=f"install {manifest.id}",
    )
    return {
        "id": manifest.id,
        "backend": manifest.backend,
        "size_bytes": manifest.size_bytes,
        "sha256": manifest.sha256,
    }


def make_room(settings: Settings, db: Database, store: ModelStore, staged: Path, model_id: str) -> None:
    if settings.store_budget_bytes is None:
        return
    needed = sum(p.stat().st_size for p in staged.rglob("*") if p.is_file())
    evicted = evict_for(store, db, needed, settings.store_budget_bytes, keep={model_id})
    if evicted:
        print(f"evicted to make room: {', '.join(evicted)}")
