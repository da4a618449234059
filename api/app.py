"""`create_app(settings)`: the gateway. Services are built in the lifespan, never at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
from fastapi import Depends, FastAPI

from api import console, health, observability
from api.auth import router as auth_router
from api.auth.service import AuthService
from api.batches import router as batches_router
from api.batches.service import BatchService
from api.deps import authenticated
from api.files import router as files_router
from api.files.service import FileService
from api.inference import router as inference_router
from api.inference.service import InferenceService
from api.jobs import events as job_events
from api.jobs import router as jobs_router
from api.jobs.service import JobService
from api.models import router as models_router
from api.models.service import ModelService
from api.openai import router as openai_router
from api.state import GatewayState
from api.telemetry import GatewayMetrics, InFlight, RequestMetrics
from api.usage import router as usage_router
from api.webhooks import router as webhooks_router
from api.workers import router as workers_router
from api.workers.client import WorkerClient
from api.workers.poke import JobPoker
from api.workers.service import WorkerDirectory
from bitinglip.auth.accounts import AccountStore
from bitinglip.auth.limits import Limiter
from bitinglip.batches.files import FileStore
from bitinglip.config import Settings, get_settings
from bitinglip.db.session import STARTUP_LOCK, Database
from bitinglip.http import ERROR_RESPONSES, BodySizeLimit, install_error_handlers, install_request_ids
from bitinglip.idempotency import IdempotencyStore
from bitinglip.jobs.dispatcher import Dispatcher
from bitinglip.jobs.reaper import Reaper
from bitinglip.jobs.store import JobStore
from bitinglip.models import registry
from bitinglip.models.store import ModelStore
from bitinglip.result_cache import ResultCache
from bitinglip.results import ResultStore
from bitinglip.serving.serving import OpenAIServing
from bitinglip.webhooks.store import WebhookStore
from flows.submit import submit_run

log = logging.getLogger(__name__)


def build_state(settings: Settings, window: GatewayMetrics) -> GatewayState:
    db = Database(settings.gateway_db_url)
    workers = WorkerDirectory(settings, db)
    client = WorkerClient(settings.worker_request_timeout_s, settings.secret("worker_token"))
    store = JobStore(db)
    models = ModelService(settings, db, workers, store)
    dispatcher = Dispatcher(
        store,
        submit_run,  # how a flow-run job becomes a Prefect flow run lives with the flows
        interval_s=settings.dispatch_interval_s,
        redispatch_after=timedelta(seconds=settings.job_redispatch_after_s),
    )
    results = ResultStore(settings)
    inference = InferenceService(settings, models, workers, client, results, ResultCache(settings))
    idempotency = IdempotencyStore(db, settings.idempotency_ttl_s)
    webhooks = WebhookStore(db)
    files = FileService(settings, FileStore(db), results, idempotency)
    limiter = Limiter(settings, db)  # rate limits in memory or Redis; quotas in the DB's usage ledger
    return GatewayState(
        settings=settings,
        db=db,
        workers=workers,
        worker_client=client,
        models=models,
        inference=inference,
        openai=OpenAIServing(inference, models),
        results=results,
        files=files,
        auth=AuthService(settings, AccountStore(db), limiter),
        limiter=limiter,
        batches=BatchService(store, files, dispatcher, limiter, webhooks, idempotency),
        metrics=window,
        jobs=JobService(settings, store, models, dispatcher, JobPoker(workers, client), limiter, webhooks, idempotency),
        dispatcher=dispatcher,
        http=httpx.AsyncClient(),
        webhooks=webhooks,
        idempotency=idempotency,
    )


async def _live_worker_ids(workers: WorkerDirectory) -> list[str]:
    return [w.id for w in await workers.workers(fresh=True) if w.healthy]


class InsecureSettings(RuntimeError):
    """No environment starts with missing or placeholder secrets; production refuses open access too."""


def _check_security(settings: Settings) -> None:
    problems = settings.insecure_settings()
    if problems:
        raise InsecureSettings("refusing to start: " + "; ".join(problems))
    if settings.open_access:
        log.warning("!!! OPEN ACCESS: no credentials are checked; every caller is admin. Development only. !!!")


def _bootstrap(state: GatewayState) -> None:
    """The first admin and the model registry; replicas starting together take turns."""
    with state.db.exclusive(STARTUP_LOCK):
        state.auth.bootstrap()
        registry.sync_from_store(state.db, ModelStore(state.settings.store_dir))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    _check_security(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings, window)
        await asyncio.to_thread(_bootstrap, state)
        state.dispatcher.start()
        reaper = Reaper(
            state.jobs.store,
            lambda: _live_worker_ids(state.workers),
            state.jobs.requeued,
            orphan_after_s=settings.job_orphan_after_s,
            interval_s=settings.reaper_interval_s,
        )
        reaper.start()
        app.state.gateway = state
        log.info("gateway ready on %s (Prefect %s)", settings.gateway_url, settings.prefect_api)
        try:
            yield
        finally:
            await reaper.stop()
            await state.dispatcher.stop()
            await state.jobs.intake.stop()
            await state.worker_client.close()
            await state.http.aclose()
            state.db.dispose()

    app = FastAPI(
        title="BitingLip gateway",
        version="0.1.0",
        description="AI inference as tracked jobs: sync, streaming, async and batch text, embeddings and images.",
        lifespan=lifespan,
        docs_url=None,  # api/console serves /docs with Swagger UI's files from the console build (offline)
        redoc_url=None,
    )
    install_error_handlers(app)
    window = GatewayMetrics()
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_request_bytes, by_path={"/v1/files": settings.max_file_bytes + 64_000}
    )
    app.add_middleware(InFlight)
    install_request_ids(app, observe=RequestMetrics(window))
    app.include_router(health.router, responses=ERROR_RESPONSES)  # open, as are the docs and login
    app.include_router(auth_router.login_router, responses=ERROR_RESPONSES)
    for router in (
        auth_router.router,
        inference_router.router,
        jobs_router.router,
        job_events.router,
        models_router.router,
        workers_router.router,
        openai_router.router,
        files_router.router,
        files_router.results_router,
        batches_router.router,
        usage_router.router,
        webhooks_router.router,
        observability.router,
    ):
        app.include_router(router, dependencies=[Depends(authenticated)], responses=ERROR_RESPONSES)
    console.install(app, settings)  # /ui, /docs, /api/v1/events, signed result links
    return app
