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

REPORT_EVERY_S = 0.5


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


class _Progress:
    """Install progress to the run's progress artifact (the Prefect UI) and, for an API pull, to its
    job row, which the console's event stream pushes to the Models page. Written at most every
    REPORT_EVERY_S, and at each phase's start and end, so a fast phase is still seen."""

    def __init__(self, job: FlowJob | None) -> None:
        self.job = job
        self.artifact: UUID | None = None  # made at the first report: a refused request leaves none
        self.last = 0.0
        self.phase = ""
        self.fetched: dict[str, int] = {}  # the fetch's last counts, shown through the later phases

    def __call__(self, step: installer.Step) -> None:
        now = time.monotonic()
        edge = step.phase != self.phase or step.done in (0, step.total)
        if not edge and now - self.last < REPORT_EVERY_S:
            return
        self.last, self.phase = now, step.phase
        fraction = installer.overall(step)
        if step.phase == "fetch":
            self.fetched = {
                "bytes_done": step.done,
                "bytes_total": step.total,
                "files_done": step.files_done or 0,
                "files_total": step.files_total or 0,
            }
        if self.artifact is None:
            self.artifact = cast(UUID, create_progress_artifact(0.0, description="model download progress"))
        update_progress_artifact(self.artifact, round(100 * fraction, 1))
        if self.job is not None:
            self.job.progress(self.record(step.phase, fraction))

    def record(self, phase: str, fraction: float) -> dict[str, object]:
        """The job's `progress`, as GET /api/v1/tasks/{id} and the event stream show it."""
        return {"phase": phase, "fraction": round(fraction, 4), **self.fetched}


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
            return _install(settings, db, _Progress(None), name, source, revision, task_type, backend)
        with FlowJob(JobStore(db), job_id, str(flow_run.get_id()), settings.worker_heartbeat_s) as job:
            if job.claim(settings.job_max_attempts) is None:
                return {"skipped": job.skipped}
            with job.failing():
                progress = _Progress(job)
                outcome = _install(settings, db, progress, name, source, revision, task_type, backend)
            job.finish("completed", result=outcome, progress=progress.record("completed", 1.0))
            return outcome
    finally:
        db.dispose()


def _install(
    settings: Settings,
    db: Database,
    progress: _Progress,
    name: str,
    source: str | None,
    revision: str | None,
    task_type: Task | None,
    backend: str,
) -> dict[str, object]:
    # the same rule as the API (a run started by hand gets what the API would have given); the fetch
    # task checks the source again file by file where it reads (sources.py)
    spec = resolve_install(settings, name, source, revision, task_type, backend)
    name, source, revision, task_type = spec.name, spec.source, spec.revision, spec.task
    store = ModelStore(settings.store_dir)
    registry.mark_downloading(db, name, revision, task_type, source)
    remove_listener = installer.add_progress_listener(progress)
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
        remove_listener()
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
