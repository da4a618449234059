"""Data lifecycle as Prefect flows on the `cpu` pool.

`purge-expired` (scheduled hourly in prefect.yaml) removes what outlived its retention setting, one
task per kind (bitinglip/retention.py), each retried on its own, and reports what it removed as a
table artifact on the run. `reencrypt-results` (run by hand after a key rotation) rewrites every
stored result and job payload under the newest key, so the old key can then be dropped."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from bitinglip import retention
from bitinglip.batches.files import FileStore
from bitinglip.config import Settings, get_settings
from bitinglip.crypto import Cipher
from bitinglip.db.session import Database
from bitinglip.idempotency import IdempotencyStore
from bitinglip.jobs.store import JobStore
from bitinglip.results import OWN_PREFIXES, ResultStore
from bitinglip.webhooks.store import WebhookStore

KINDS = ("jobs", "results", "files", "batches", "idempotency_keys")


def _days(settings: Settings, kind: str) -> float | None:
    return {
        "jobs": settings.retention_jobs_days,
        "results": settings.retention_jobs_days,  # results without a job expire with the jobs
        "files": settings.retention_files_days,
        "batches": settings.retention_batches_days,
        "idempotency_keys": settings.idempotency_ttl_s / 86400,  # lapsed keys are of no use
    }[kind]


def _purge(kind: str, settings: Settings, db: Database, before: datetime) -> retention.Removed:
    cipher = Cipher.from_settings(settings)
    jobs, results, files = JobStore(db, cipher), ResultStore(settings, cipher), FileStore(db)
    purges: dict[str, Callable[[], retention.Removed]] = {
        "jobs": lambda: retention.purge_jobs(jobs, results, files, before),
        "results": lambda: retention.purge_results(results, before),
        "files": lambda: retention.purge_files(jobs, results, files, before),
        "batches": lambda: retention.purge_batches(jobs, results, files, before),
        "idempotency_keys": lambda: retention.Removed(rows=IdempotencyStore(db, 0).purge(before)),
    }
    return purges[kind]()


@task(task_run_name="purge {kind}", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def purge_kind(kind: str, now: datetime) -> dict[str, Any]:
    """One kind: rows and stored objects older than its retention; nothing when it is unset."""
    settings = get_settings()
    days = _days(settings, kind)
    before = retention.cutoff(days, now)
    row: dict[str, Any] = {"kind": kind, "retention_days": "kept" if days is None else days, "cutoff": "-"}
    removed = retention.Removed()
    if before is not None:
        row["cutoff"] = before.isoformat(timespec="seconds")
        db = Database(settings.gateway_db_url)
        try:
            removed = _purge(kind, settings, db, before)
        finally:
            db.dispose()
    print(f"{kind}: {removed.rows} rows, {removed.objects} objects, {removed.files} files removed")
    return {**row, "rows": removed.rows, "objects": removed.objects, "files": removed.files}


@flow(name="purge-expired", flow_run_name="purge expired", log_prints=True)
def purge_expired(now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Every kind is tried even when another fails; the run fails afterwards if any did. `now` (for
    previews and tests) moves the clock: everything older than now minus a retention goes."""
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    states = {kind: purge_kind(kind, moment, return_state=True) for kind in KINDS}
    report: dict[str, dict[str, Any]] = {}
    failed = []
    for kind, state in states.items():
        if state.is_completed():
            report[kind] = state.result()
        else:
            failed.append(kind)
            report[kind] = {"kind": kind, "error": str(state.message or state.name)}
    rows = [{k: str(v) for k, v in row.items()} for row in report.values()]
    create_table_artifact(rows, key="purge-expired", description=f"removed by the purge at {moment.isoformat()}")
    if failed:
        raise RuntimeError(f"purging {', '.join(failed)} failed; the other kinds were purged")
    return report


@task(task_run_name="reseal results", cache_policy=NO_CACHE)
def reseal_results() -> int:
    results = ResultStore(get_settings())
    return sum(results.reseal(obj.key) for prefix in OWN_PREFIXES for obj in results.objects(prefix))


@task(task_run_name="reseal job payloads", cache_policy=NO_CACHE)
def reseal_jobs() -> int:
    settings = get_settings()
    db = Database(settings.gateway_db_url)
    try:
        cipher = Cipher.from_settings(settings)
        return JobStore(db, cipher).reseal_all() + WebhookStore(db, cipher).reseal_all()
    finally:
        db.dispose()


@flow(name="reencrypt-results", flow_run_name="re-encrypt under the newest key", log_prints=True)
def reencrypt_results() -> dict[str, int]:
    """After prepending a new key to BITINGLIP_RESULTS_ENCRYPTION_KEYS (and restarting): seal every
    stored result and job payload under it, including plaintext written before keys were set."""
    if not Cipher.from_settings(get_settings()).enabled:
        raise ValueError("BITINGLIP_RESULTS_ENCRYPTION_KEYS is empty: nothing to encrypt with")
    counts = {"objects": reseal_results(), "job_rows": reseal_jobs()}
    rows = [{"what": k, "rewritten": str(v)} for k, v in counts.items()]
    create_table_artifact(rows, key="reencrypt-results", description="re-encrypted under the newest key")
    return counts
