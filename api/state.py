"""Everything the gateway builds at start-up, in one typed object (never at import time)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from api.auth.service import AuthService
from api.batches.service import BatchService
from api.files.service import FileService
from api.inference.service import InferenceService
from api.jobs.service import JobService
from api.models.service import ModelService
from api.telemetry import GatewayMetrics
from api.workers.client import WorkerClient
from api.workers.service import WorkerDirectory
from bitinglip.auth.limits import Limiter
from bitinglip.config import Settings
from bitinglip.db.session import Database
from bitinglip.idempotency import IdempotencyStore
from bitinglip.jobs.dispatcher import Dispatcher
from bitinglip.results import ResultStore
from bitinglip.serving.serving import OpenAIServing
from bitinglip.webhooks.store import WebhookStore


@dataclass
class GatewayState:
    settings: Settings
    db: Database
    workers: WorkerDirectory
    worker_client: WorkerClient
    models: ModelService
    inference: InferenceService
    jobs: JobService
    openai: OpenAIServing
    results: ResultStore
    auth: AuthService
    limiter: Limiter
    files: FileService
    batches: BatchService
    metrics: GatewayMetrics
    dispatcher: Dispatcher
    http: httpx.AsyncClient
    webhooks: WebhookStore
    idempotency: IdempotencyStore
