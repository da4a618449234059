"""Offline batch inference in the OpenAI Batch format: one Prefect flow run per batch, on the `gpu`
work pool (docs/architecture.md §2.4).

The flow run loads each model once in its own process, validates every line first, splits the valid
requests into chunks and runs one cached task per chunk (cache key: owner + chunk content + model
revision + format + the settings that shape outputs), so a retried, resumed or re-submitted batch of the
same owner skips the chunks already done, and another owner's never hits them. Lines are charged to the
owner's daily token quota chunk by chunk as they run (flows/batch_quota.py). Outcome lines go to
`output.jsonl` / `errors.jsonl` on local disk or S3, each written atomically."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_progress_artifact, acreate_table_artifact, aupdate_progress_artifact
from prefect.context import TaskRunContext
from prefect.filesystems import RemoteFileSystem
from prefect.runtime import flow_run
from prefect.states import Cancelled, State

from bitinglip.batches.files import FileStore, new_file_id
from bitinglip.batches.format import (
    ENDPOINTS,
    BatchItem,
    ParsedInput,
    chunks,
    error_line,
    from_jsonl,
    output_line,
    parse_input,
    to_jsonl,
)
from bitinglip.config import Settings, get_settings
from bitinglip.db.session import Database
from bitinglip.db.tables import Job
from bitinglip.engines.pool import ModelPool
from bitinglip.errors import BitingLipError, error_record
from bitinglip.jobs.flowjob import FlowJob
from bitinglip.jobs.store import JobStore
from bitinglip.models import access
from bitinglip.models.store import ModelStore
from bitinglip.results import ResultStore
from bitinglip.serving.offline import OfflineOpenAI, check_body
from bitinglip.storage import expand, read_url, s3_filesystem, s3_options, write_url
from bitinglip.webhooks.delivery import Deliveries
from flows import batch_quota, webhooks
from flows.batch_quota import ChunkMeter

_pool: ModelPool | None = None  # one per flow-run process: models load once, not once per chunk


def _model_pool(settings: Settings) -> ModelPool:
    global _pool
    if _pool is None:
        offline = settings.model_copy(update={"text_batching": settings.batch_text_batching})
        _pool = ModelPool(offline, ModelStore(settings.store_dir))
    return _pool


def _chunk_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return f"batch-chunk-{parameters['key']}"


@task(
    name="run-batch-chunk",
    task_run_name="chunk {index}",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=batch_quota.no_retry_on_shortfall,
    cache_key_fn=_chunk_cache_key,
    persist_result=True,
)
async def run_chunk(index: int, key: str, items: list[BatchItem], meter: ChunkMeter | None = None) -> dict[str, Any]:
    """Runs the chunk's requests concurrently into the model batchers (so they run at the engine's
    batch size) and stores the outcome lines under a content-addressed key; the task's own (cached)
    result is only that pointer and the counts. `meter`: the quota the lines are charged to, reserved
    before they run (QuotaShortfall when it does not fit) and settled at their real count."""
    settings = get_settings()
    hold = await batch_quota.reserve(meter, key, items, settings)
    executor = OfflineOpenAI(_model_pool(settings))
    room = asyncio.Semaphore(settings.max_queue)

    async def one(item: BatchItem) -> dict[str, Any]:
        async with room:
            try:
                return output_line(item.custom_id, await executor.execute(item.url, item.body))
            except BitingLipError as exc:  # the request itself is wrong: an error line, not a retry
                return error_line(
                    item.custom_id, exc.code or exc.type, exc.message, status_code=exc.status_code, body=exc.body()
                )
            except Exception as exc:  # one line's surprise fails that line alone, without internal text
                get_run_logger().exception("batch line %s failed", item.custom_id)
                record = error_record(exc)
                return error_line(item.custom_id, record["code"] or record["type"], record["message"], status_code=500)

    lines = await asyncio.gather(*(one(item) for item in items))
    path = f"batches/chunks/{key}.jsonl"
    await asyncio.to_thread(ResultStore(settings).put, path, to_jsonl(lines))
    await batch_quota.settle(hold, lines)
    failed = sum(1 for line in lines if line["error"] is not None)
    return {"path": path, "completed": len(lines) - failed, "failed": failed}


@dataclass
class BatchOutcome:
    total: int = 0
    completed: int = 0
    failed: int = 0
    chunks_total: int = 0
    chunks_done: int = 0
    chunks_cached: int = 0
    stopped: str | None = None  # "cancelled" or "lost" when the run stopped early
    outputs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"total": self.total, "completed": self.completed, "failed": self.failed}

    def chunk_counts(self) -> dict[str, int]:
        return {
            "total": self.chunks_total,
            "done": self.chunks_done,
            "cached": self.chunks_cached,
            "computed": self.chunks_done - self.chunks_cached,
        }


def _resolve_models(
    settings: Settings, parsed: ParsedInput, may_use: access.ModelCheck | None = None
) -> dict[str, str]:
    """Model name -> installed NAME@REVISION; lines naming a missing or wrong-task model, or one the
    batch's owner may not use (`may_use`), become error lines here, before anything runs."""
    store = ModelStore(settings.store_dir)
    resolved: dict[str, str] = {}
    problems: dict[str, BitingLipError] = {}
    for item in parsed.items:
        if item.model in resolved or item.model in problems:
            continue
        try:
            manifest = store.resolve(item.model)
            access.require(may_use, item.model, manifest.name)  # withheld: the same error as missing
        except BitingLipError as exc:
            problems[item.model] = exc
            continue
        resolved[item.model] = manifest.id
        if manifest.task != ENDPOINTS[item.url]:
            problems[item.model] = BitingLipError(
                f"model {item.model!r} is a {manifest.task} model; {item.url} needs a {ENDPOINTS[item.url]} model",
                status_code=400,
                code="invalid_model",
            )
    keep = []
    for item in parsed.items:
        if (problem := problems.get(item.model)) is not None:
            message = f"line {item.line}: {problem.message}"
            parsed.errors.append(
                error_line(
                    item.custom_id,
                    problem.code or problem.type,
                    message,
                    status_code=problem.status_code,
                    body=problem.body(),
                )
            )
        else:
            keep.append(item)
    parsed.items = keep
    return resolved


async def _chunk_task(settings: Settings) -> Any:
    """Chunk results (the cache records) live beside the batch results: on S3 when results are, so a
    run resumed on another node finds them. Prefect keeps the storage block server-side, so the saved
    block holds the bucket and endpoint only; the credentials go straight to this process's s3fs
    filesystem behind the block (never into the block document, nor into the environment)."""
    url = settings.results_url or ""
    if not url.startswith("s3://"):
        return run_chunk
    options = {k: v for k, v in s3_options(settings).items() if k not in ("key", "secret")}
    storage = RemoteFileSystem(basepath=f"{url.rstrip('/')}/prefect", settings=options)
    digest = hashlib.sha256(storage.basepath.encode() + repr(sorted(options.items())).encode()).hexdigest()[:12]
    await storage.asave(f"bitinglip-results-{digest}", overwrite=True)
    storage._filesystem = s3_filesystem(settings)  # the block's filesystem, built with the credentials
    return run_chunk.with_options(result_storage=storage)


async def _run_batch(
    settings: Settings,
    chunk_task: Any,
    input_url: str,
    endpoint: str | None,
    job: FlowJob | None,
    may_use: access.ModelCheck | None = None,
    meter: ChunkMeter | None = None,
    owner: str | None = None,
    label: str = "input",
) -> BatchOutcome:
    """`label`: the input as people know it (the uploaded file's name), never a server path."""
    outcome = BatchOutcome()
    results = ResultStore(settings)
    pool = _model_pool(settings)
    context = _ChunkContext(
        settings, batch_quota.result_settings(settings, str(pool.device), str(pool.dtype)), owner, meter
    )

    def report(phase: str) -> None:
        if job is not None:
            job.progress({"phase": phase, **outcome.counts(), "chunks": outcome.chunk_counts()})

    report("validating")
    data = await asyncio.to_thread(read_url, settings, input_url)
    parsed = parse_input(data, endpoint, check_body)
    models = _resolve_models(settings, parsed, may_use)
    outcome.total, outcome.failed, outcome.errors = parsed.total, len(parsed.errors), list(parsed.errors)
    planned = chunks(parsed.items, settings.batch_chunk_size)
    outcome.chunks_total = len(planned)
    print(f"{outcome.total} requests: {len(parsed.items)} valid in {len(planned)} chunks, {outcome.failed} invalid")
    described = f"batch {job.job_id} · {label}" if job is not None else f"batch {label}"
    described += (
        f": {outcome.total} requests, {len(parsed.items)} valid in {len(planned)} chunks, {outcome.failed} invalid"
    )
    artifact = cast(UUID, await acreate_progress_artifact(0.0, description=described))
    report("in_progress")
    quota_out = False  # once the owner's quota runs out, the remaining lines fail without running
    for index, items in enumerate(planned):
        if job is not None and (job.cancel_requested.is_set() or job.lost.is_set()):
            outcome.stopped = "cancelled" if job.cancel_requested.is_set() else "lost"
            break
        runs, refused = ([], items) if quota_out else await _within_quota(chunk_task, index, items, models, context)
        quota_out = bool(refused)
        for _, result in runs:
            lines = from_jsonl(await asyncio.to_thread(results.get, result["path"]))
            outcome.outputs.extend(line for line in lines if line["error"] is None)
            outcome.errors.extend(line for line in lines if line["error"] is not None)
            outcome.completed += result["completed"]
            outcome.failed += result["failed"]
        outcome.chunks_cached += bool(runs) and all(state.name == "Cached" for state, _ in runs)
        outcome.errors.extend(batch_quota.quota_error_line(item) for item in refused)
        outcome.failed += len(refused)
        outcome.chunks_done += 1
        done = outcome.completed + outcome.failed
        await aupdate_progress_artifact(artifact, 100.0 * done / max(outcome.total, 1))
        report("in_progress")
    report("finalizing")
    return outcome


@dataclass(frozen=True)
class _ChunkContext:
    """What every chunk of one batch run shares: the settings shaping outputs, the owner, the meter."""

    settings: Settings
    shaping: str
    owner: str | None
    meter: ChunkMeter | None


async def _chunk(
    chunk_task: Any, index: int, items: list[BatchItem], models: dict[str, str], context: _ChunkContext
) -> tuple[Any, dict[str, Any]] | None:
    """One chunk task: its state and result, or None when the owner's quota could not hold it."""
    key = batch_quota.owned_chunk_key(items, models, context.owner, context.shaping)
    state = await chunk_task(index, key, items, context.meter, return_state=True)
    if state.is_failed():
        failure = await state.result(raise_on_failure=False)
        if isinstance(failure, batch_quota.QuotaShortfall):
            return None
        await batch_quota.release(context.meter, key)
    return state, await state.result()


async def _within_quota(
    chunk_task: Any, index: int, items: list[BatchItem], models: dict[str, str], context: _ChunkContext
) -> tuple[list[tuple[Any, dict[str, Any]]], list[BatchItem]]:
    """Runs the chunk; when the owner's quota cannot hold all of it, runs the lines that still fit (again,
    as settling frees what a run reserved beyond its real count) until none does. The runs, and the
    lines refused for quota."""
    ran = await _chunk(chunk_task, index, items, models, context)
    if ran is not None:
        return [ran], []
    assert context.meter is not None  # only a metered chunk can fall short of quota
    runs, pending = [], items
    while pending and (fit := await batch_quota.fitting(context.meter, pending, context.settings)):
        ran = await _chunk(chunk_task, index, pending[:fit], models, context)
        if ran is None:
            break
        runs.append(ran)
        pending = pending[fit:]
    return runs, pending


def summary_rows(outcome: BatchOutcome, heading: dict[str, str], where: dict[str, str | None]) -> list[dict[str, str]]:
    """The summary table: one labelled row per figure, two columns, so it fits the Prefect UI's page."""
    chunks_done = outcome.chunk_counts()
    figures = {
        **heading,
        "requests": str(outcome.total),
        "completed": str(outcome.completed),
        "failed": str(outcome.failed),
        "chunks": f"{chunks_done['done']} of {chunks_done['total']} ({chunks_done['cached']} from cache)",
        **{name: str(value or "-") for name, value in where.items()},
    }
    if outcome.stopped is not None:
        figures["stopped"] = outcome.stopped
    return [{"item": name, "value": value} for name, value in figures.items()]


async def _summary(outcome: BatchOutcome, heading: dict[str, str], where: dict[str, str | None]) -> None:
    await acreate_table_artifact(summary_rows(outcome, heading, where), description="batch summary")


def file_label(name: str, limit: int = 60) -> str:
    """A file name as a run name or artifact shows it: its last path part, printable characters only
    (no markup, no control characters), at most `limit` long; `input` when nothing is left."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^\w.\-* ]+", "_", base, flags=re.UNICODE).strip(" ._")
    cleaned = re.sub(r"\s+", " ", cleaned)
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned or "input"


async def _name_run(name: str) -> None:
    """The flow run takes the batch's name once its input is known; a Prefect hiccup leaves the first one."""
    from prefect import get_client

    try:
        async with get_client() as client:
            await client.update_flow_run(flow_run_id=UUID(str(flow_run.get_id())), name=name)
    except Exception as exc:
        get_run_logger().warning("could not rename the run to %r: %s", name, exc)


def _input_name(db: Database, params: dict[str, Any]) -> str:
    """The uploaded input file's name (its id when the file is gone)."""
    try:
        return FileStore(db).get(str(params["input_file_id"])).filename
    except (BitingLipError, KeyError):
        return str(params.get("input_file_id") or "input")


async def _run_job(settings: Settings, job_id: str) -> dict[str, Any] | State[Any]:
    """An API batch: the job row carries the input; outputs become files the owner can download."""
    db = Database(settings.gateway_db_url)
    jobs = JobStore(db)
    hooks = webhooks.deliveries(settings, db)  # its webhook's events: task runs of this flow run
    try:
        with FlowJob(jobs, job_id, str(flow_run.get_id()), settings.worker_heartbeat_s) as job:
            record = await asyncio.to_thread(job.claim, settings.job_max_attempts)
            if record is None:
                return {"skipped": job.skipped}
            hooks.send(record, "start")
            with _failed_event(hooks, record), job.failing():
                params = record.params
                label = file_label(await asyncio.to_thread(_input_name, db, params))
                await _name_run(f"batch {label} · {record.owner}")
                may_use = await asyncio.to_thread(access.job_access, db, record.owner, params.get("key_id"))
                meter = await asyncio.to_thread(
                    batch_quota.meter_for, db, settings, job_id, record.owner, params.get("key_id")
                )
                batch_quota.bind_ledger(db)
                outcome = await _run_batch(
                    settings,
                    await _chunk_task(settings),
                    params["input_url"],
                    params["endpoint"],
                    job,
                    may_use,
                    meter,
                    record.owner,
                    label,
                )
                if outcome.stopped == "lost" or job.lost.is_set():  # another run owns the outputs now
                    return {"stopped": "another run holds this batch now"}
                files = await asyncio.to_thread(_store_outputs, settings, db, record.owner, job_id, outcome)
            result = {**files, "request_counts": outcome.counts(), "chunks": outcome.chunk_counts()}
            status = "cancelled" if outcome.stopped == "cancelled" else "completed"
            await asyncio.to_thread(job.finish, status, result=result, progress={"phase": status, **outcome.counts()})
            hooks.send(record, status)
        await _summary(outcome, {"batch": job_id, "input": label, "owner": record.owner}, files)
        if status == "cancelled":  # the run says so too, not Completed (its outputs so far are kept)
            return Cancelled(message=f"batch {job_id} was cancelled by its owner", data=result)
        return result
    finally:
        batch_quota.bind_ledger(None)
        await _close_pool()
        await hooks.wait()  # the batch is recorded already; its webhook's retries end before the run does
        await hooks.close()
        db.dispose()


@contextmanager
def _failed_event(hooks: Deliveries, record: Job) -> Iterator[None]:
    """A batch that fails (recorded by `FlowJob.failing` inside) sends its `failed` event."""
    try:
        yield
    except Exception:
        hooks.send(record, "failed")
        raise


def _store_outputs(
    settings: Settings, db: Database, owner: str, job_id: str, outcome: BatchOutcome
) -> dict[str, str | None]:
    results, files = ResultStore(settings), FileStore(db)
    ids: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
    for field_name, kind, lines in (
        ("output_file_id", "output", outcome.outputs),
        ("error_file_id", "errors", outcome.errors),
    ):
        if not lines and kind == "errors":
            continue
        data = to_jsonl(lines)
        key = results.put(f"batches/{job_id}/{kind}.jsonl", data)
        file_id = new_file_id()
        files.create(
            file_id=file_id,
            owner=owner,
            purpose="batch_output",
            filename=f"batch_{job_id}_{kind}.jsonl",
            size=len(data),
            key=key,
            line_count=len(lines),
        )
        ids[field_name] = file_id
    return ids


async def _close_pool() -> None:
    global _pool
    if _pool is not None:
        await _pool.close()
        _pool = None


def _dated(template: str) -> str:
    """`{date}` in an output path becomes the run's scheduled date (today when run by hand)."""
    scheduled = flow_run.scheduled_start_time
    day = scheduled.date() if scheduled is not None else dt.date.today()
    return template.replace("{date}", day.isoformat())


def _first_run_name() -> str:
    """An API batch is renamed after its input file once the run has read its job (`_run_job`); a
    scheduled one is named after its input pattern's file name."""
    parameters = flow_run.parameters
    if parameters.get("job_id"):
        return f"batch job {parameters['job_id']}"
    return f"batch {file_label(str(parameters.get('input_path') or 'input'))}"


@flow(name="batch-inference", flow_run_name=_first_run_name, log_prints=True)
async def batch_inference(
    job_id: str | None = None,
    input_path: str | None = None,
    output_path: str | None = None,
    endpoint: str | None = None,
) -> dict[str, Any] | State[Any]:
    """With `job_id`: the API batch it names. Otherwise every file matching `input_path` (a path,
    URL or glob; local or s3://) is run into `output_path/<file stem>/` (`{date}` is filled in):
    that is how scheduled deployments run."""
    settings = get_settings()
    if job_id is not None:
        return await _run_job(settings, job_id)
    if input_path is None or output_path is None:
        raise ValueError("give job_id, or both input_path and output_path")
    summary: dict[str, Any] = {}
    try:
        chunk_task = await _chunk_task(settings)
        for url in await asyncio.to_thread(expand, settings, input_path):
            started = time.perf_counter()
            stem = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".jsonl")
            outcome = await _run_batch(settings, chunk_task, url, endpoint, None, label=file_label(stem))
            folder = f"{_dated(output_path).rstrip('/')}/{stem}"
            where: dict[str, str | None] = {"output": f"{folder}/output.jsonl", "errors": f"{folder}/errors.jsonl"}
            await asyncio.to_thread(write_url, settings, f"{folder}/output.jsonl", to_jsonl(outcome.outputs))
            await asyncio.to_thread(write_url, settings, f"{folder}/errors.jsonl", to_jsonl(outcome.errors))
            await _summary(outcome, {"input": file_label(stem)}, where)
            summary[url] = {
                **where,
                "request_counts": outcome.counts(),
                "chunks": outcome.chunk_counts(),
                "seconds": round(time.perf_counter() - started, 2),
            }
        if not summary:
            print(f"no input matches {input_path}")
    finally:
        await _close_pool()
    return summary
