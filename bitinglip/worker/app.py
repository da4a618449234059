"""The model worker's internal HTTP API, its heartbeat and its async-job pump, in one process."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import StreamingResponse
from prometheus_client import make_asgi_app

from bitinglip import metrics
from bitinglip.config import Settings
from bitinglip.db.session import Database
from bitinglip.engines.pool import ModelPool
from bitinglip.engines.types import TextDelta
from bitinglip.errors import BitingLipError, NotFound
from bitinglip.http import WorkerTokenRequired, install_error_handlers, install_request_ids
from bitinglip.jobs.store import JobStore
from bitinglip.models import registry
from bitinglip.models.store import ModelStore
from bitinglip.outputs import ModelLoaded, ModelsUnloaded, TextStreamError, TextStreamEvent, TextStreamResult
from bitinglip.worker.heartbeat import Heartbeat
from bitinglip.worker.jobs import JobRunner
from bitinglip.worker.pump import JobPump
from bitinglip.worker.runtime import WorkerRuntime, set_runtime
from bitinglip.worker.schemas import (
    WorkerEmbeddingRequest,
    WorkerImageRequest,
    WorkerLoadRequest,
    WorkerTextRequest,
    WorkerUnloadRequest,
)
from bitinglip.worker.tokens import TokenLog

log = logging.getLogger(__name__)


def create_worker_app(settings: Settings, serve_jobs: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.gateway_db_url)
        jobs = JobStore(db)
        # Restarted under the same id (systemd, Kubernetes): what the last run left `running` died
        # with it, and its heartbeat-to-be keeps the reaper away, so take those jobs back first.
        if requeued := await asyncio.to_thread(jobs.requeue_worker, settings.worker_name):
            log.warning("%d job(s) left running by this worker's previous run went back to the queue", requeued)
        pool = ModelPool(settings, ModelStore(settings.store_dir))
        with suppress(Exception):  # the DB may be briefly away: the heartbeat tells the pins soon
            pool.pinned = await asyncio.to_thread(registry.pinned_ids, db)
        for model in settings.worker_models:
            try:
                await pool.get(model)
            except BitingLipError as exc:
                log.error("cannot preload %s: %s", model, exc.message)
        runner = JobRunner(settings, pool, jobs, settings.worker_name)
        from flows.webhooks import deliveries  # Prefect task runs, like the jobs themselves

        pump = JobPump(settings, pool, jobs, runner, settings.worker_name, deliveries(settings, db))
        set_runtime(WorkerRuntime(settings, pool, runner, pump))
        heartbeat = Heartbeat(settings, db, pool)
        background = [
            asyncio.create_task(heartbeat.run(), name="heartbeat"),
            asyncio.create_task(pool.run_expiry(), name="keep-alive"),
        ]
        pumping = asyncio.create_task(pump.run(), name="job-pump") if serve_jobs else None
        app.state.pool = pool
        app.state.pump = pump
        app.state.runner = runner
        app.state.heartbeat = heartbeat
        unregister = metrics.register_pool(metrics.PoolCollector(pool.snapshot, _gpu_memory))
        log.info("worker %s ready on %s (%s)", settings.worker_name, settings.worker_url, pool.device)
        try:
            yield
        finally:
            await pump.stop()
            if pumping is not None:  # its open flow run ends by itself once stopped; a cancel may hang it
                await asyncio.wait([pumping], timeout=10)
                background.append(pumping)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            with suppress(Exception):
                await asyncio.to_thread(heartbeat.deregister)
            unregister()
            set_runtime(None)
            await pool.close()
            db.dispose()

    app = FastAPI(title="BitingLip model worker", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)

    app.mount("/metrics", make_asgi_app())
    app.add_middleware(WorkerTokenRequired, token=settings.secret("worker_token"))
    install_request_ids(app)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        pool: ModelPool = request.app.state.pool
        return {
            "status": "ok",
            "worker_id": settings.worker_name,
            "device": pool.device,
            "models": pool.loaded(),
            "queue_depth": pool.queue_depth,
        }

    @app.post("/internal/v1/jobs/poke", status_code=204)
    async def poke_jobs(request: Request) -> None:
        """A gateway just queued jobs: look for them now rather than at the next idle poll."""
        request.app.state.pump.poke()

    @app.get("/internal/v1/jobs/{job_id}/tokens")
    async def job_tokens(job_id: str, request: Request, after: int = Query(default=0, ge=0)) -> StreamingResponse:
        """NDJSON: `{"n": N, "text": ...}` per piece of a running text job's text after the `after`th,
        `{}` every few seconds while none comes; ends when the job's work ends here. 404: not running
        here (finished, queued, or on another worker)."""
        runner: JobRunner = request.app.state.runner
        log = runner.tokens.get(job_id)
        if log is None:
            raise NotFound(f"job {job_id!r} is not generating text on this worker", param="job_id")
        return StreamingResponse(_token_lines(log, after), media_type="application/x-ndjson")

    @app.post("/internal/v1/models/{model_id}/load")
    async def load_model(model_id: str, body: WorkerLoadRequest, request: Request) -> dict[str, Any]:
        """Load (or keep) the model with this keep-alive; answers it as the heartbeat reports it."""
        pool: ModelPool = request.app.state.pool
        try:
            loaded = await pool.load(model_id, body.keep_alive)
            [entry] = [m for m in pool.loaded() if m["id"] == loaded.manifest.id]  # before an await: keep_alive 0
        finally:  # a refused load may have unloaded others to make room first
            await _beat_now(request.app)
        return ModelLoaded(model=entry).model_dump(mode="json")

    @app.post("/internal/v1/models/{model_id}/unload")
    async def unload_model(model_id: str, body: WorkerUnloadRequest, request: Request) -> dict[str, Any]:
        """409 while it has requests waiting or running, unless `force`."""
        pool: ModelPool = request.app.state.pool
        unloaded = await pool.unload(model_id, force=body.force)
        await _beat_now(request.app)
        return ModelsUnloaded(unloaded=unloaded).model_dump(mode="json")

    @app.post("/internal/v1/text", response_model=None)
    async def generate_text(body: WorkerTextRequest, request: Request) -> dict[str, Any] | StreamingResponse:
        pool: ModelPool = request.app.state.pool
        if not body.stream:
            result = await pool.generate_text(body, body.priority, tenant=body.tenant)
            return result.to_output().model_dump(mode="json")
        return StreamingResponse(_stream(pool, body), media_type="application/x-ndjson")

    @app.post("/internal/v1/embeddings")
    async def embed(body: WorkerEmbeddingRequest, request: Request) -> dict[str, Any]:
        pool: ModelPool = request.app.state.pool
        result = await pool.embed(body.model, body.texts(), body.priority, body.keep_alive)
        return result.to_output().model_dump(mode="json")

    @app.post("/internal/v1/images")
    async def images(body: WorkerImageRequest, request: Request) -> dict[str, Any]:
        pool: ModelPool = request.app.state.pool
        result = await pool.generate_image(body, body.priority)
        return result.to_output().model_dump(mode="json")

    return app


async def _beat_now(app: FastAPI) -> None:
    """After a load or unload, so the gateway's next read of the registry shows it."""
    heartbeat: Heartbeat = app.state.heartbeat
    try:
        await heartbeat.beat_now()
    except Exception as exc:  # the regular beat follows within BITINGLIP_WORKER_HEARTBEAT_S
        log.warning("heartbeat after a load or unload failed: %s", exc)


async def _stream(pool: ModelPool, body: WorkerTextRequest) -> AsyncIterator[bytes]:
    """NDJSON: one `{"delta": ...}` line per text piece, then `{"result": ...}` or `{"error": ...}`.
    If the client goes away, the generator is closed and the request's slot in the batch is freed.

    One `await` per piece: the generation's end is a `None` in the same queue, put there after its
    last piece (the compute thread hands both over through `call_soon_threadsafe`, in order), not a
    second awaitable raced against the queue for every token."""
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue[TextDelta | None] = asyncio.Queue()

    def sink(delta: TextDelta) -> None:  # called on the compute thread
        loop.call_soon_threadsafe(deltas.put_nowait, delta)

    generation = asyncio.create_task(pool.generate_text(body, body.priority, sink=sink, tenant=body.tenant))
    generation.add_done_callback(lambda _: deltas.put_nowait(None))
    try:
        while (delta := await deltas.get()) is not None:
            if line := _delta_line(delta):
                yield line
        try:
            yield _line(TextStreamResult(result=generation.result().to_output()))
        except BitingLipError as exc:
            yield _line(TextStreamError.of(exc))
    finally:
        if not generation.done():
            generation.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await generation


async def _token_lines(log: TokenLog, after: int) -> AsyncIterator[bytes]:
    async for piece in log.follow(after):
        yield b"{}\n" if piece is None else (json.dumps({"n": piece[0], "text": piece[1]}) + "\n").encode()


def _gpu_memory() -> int | None:
    import torch

    return int(torch.cuda.memory_allocated()) if torch.cuda.is_available() else None


def _delta_line(delta: TextDelta) -> bytes | None:
    event = delta.to_output()
    return None if event is None else _line(event)


def _line(event: TextStreamEvent) -> bytes:
    return (json.dumps(event.model_dump(mode="json")) + "\n").encode()
