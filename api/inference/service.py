"""Sync and streaming generation: resolve the model, pick a worker, relay. No Prefect on this path
(a flow run costs 120-170 ms; docs/architecture.md §3.1)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx

from api.inference.schemas import RoutedEmbeddings, RoutedImages, TextInferenceResponse
from api.models.service import ModelService
from api.workers.client import WorkerClient
from api.workers.service import WorkerDirectory
from bitinglip import signed_urls
from bitinglip.config import Settings
from bitinglip.db.tables import ModelRecord
from bitinglip.db.workers import WorkerInfo
from bitinglip.errors import BitingLipError, NoRoomToLoad, RemoteError, ServiceUnavailable
from bitinglip.models import access
from bitinglip.outputs import (
    Embeddings,
    GeneratedImage,
    ImageGeneration,
    TextGeneration,
    TextStreamError,
    TextStreamEvent,
)
from bitinglip.result_cache import DEFAULT_USE, CacheUse, ResultCache, cache_key, deterministic
from bitinglip.results import ResultStore
from bitinglip.schemas import EmbeddingParams, ImageParams, TextGenerationParams
from bitinglip.structured.tools import new_call_id
from bitinglip.types import Priority

log = logging.getLogger(__name__)

# What a worker answers; each carries timings the gateway completes.
A = TypeVar("A", TextGeneration, Embeddings, ImageGeneration)
T = TypeVar("T")

CACHE_WORKER = "cache"  # the `worker` of an answer replayed from the result cache
WORKERS_TRIED = 3  # per request, at most: a failover bounds latency, it does not scan a large cluster


# The worker never got the request: it could not be connected to (a timeout or a broken connection
# after sending may mean it is running there, so those are not retried elsewhere).
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _nothing_ran(exc: BitingLipError) -> bool:
    """Failures another worker may not have: this one could not be reached, or could not load the
    model within its memory budget. Either way no work started, so trying elsewhere cannot run it twice."""
    if isinstance(exc, ServiceUnavailable):
        return isinstance(exc.__cause__, NOT_SENT)
    return isinstance(exc, RemoteError) and exc.status_code == 503 and exc.code == NoRoomToLoad.code


class InferenceService:
    def __init__(
        self,
        settings: Settings,
        models: ModelService,
        workers: WorkerDirectory,
        client: WorkerClient,
        results: ResultStore,
        cache: ResultCache,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.results = results
        self.models = models
        self.workers = workers
        self.client = client

    async def _target(self, params: TextGenerationParams) -> tuple[ModelRecord, dict[str, Any]]:
        params.check_limits(self.settings)
        record = await self.models.resolve(params.model or self.settings.default_text_model, "text")
        payload = params.model_dump(exclude_none=True, mode="json")
        # the tenant scopes the worker's prompt-prefix cache: another user's prompt is never reused,
        # so its timing or `cached_tokens` cannot tell one user what another just sent
        payload.update(model=record.id, priority=int(Priority.SYNC), tenant=access.current_caller().username)
        return record, payload

    async def generate_text(self, params: TextGenerationParams, use: CacheUse = DEFAULT_USE) -> TextInferenceResponse:
        record, payload = await self._target(params)
        result, worker = await self._cached_call(use, record, "/internal/v1/text", payload, TextGeneration)
        return TextInferenceResponse.of(record.id, worker, result)

    async def embed(self, params: EmbeddingParams, use: CacheUse = DEFAULT_USE) -> RoutedEmbeddings:
        record = await self.models.resolve(params.model or self.settings.default_embedding_model, "embedding")
        params.check_limits(self.settings)
        payload = {"model": record.id, "input": params.texts(), "priority": int(Priority.SYNC)}
        if params.keep_alive is not None:
            payload["keep_alive"] = params.keep_alive
        result, worker = await self._cached_call(use, record, "/internal/v1/embeddings", payload, Embeddings)
        return RoutedEmbeddings.of(record.id, worker, result)

    async def generate_image(self, params: ImageParams) -> RoutedImages:
        """PNGs as base64, each with its seed; the caller decides whether to store them."""
        params.check_limits(self.settings)  # the engine checks too; here an oversize request costs no hop
        record = await self.models.resolve(params.model or self.settings.default_image_model, "image")
        payload = {
            **params.model_dump(exclude_none=True, mode="json"),
            "model": record.id,
            "priority": int(Priority.SYNC),
        }
        result, worker = await self._call(record.id, "/internal/v1/images", payload, ImageGeneration)
        return RoutedImages.of(record.id, worker, result)

    async def images(
        self, params: ImageParams, response_format: str, owner: str = "shared"
    ) -> tuple[str, str, list[GeneratedImage]]:
        """(model, worker, images): `url` stores the PNGs under the owner's folder and answers signed
        links to them, which open without credentials until they expire (as OpenAI's do); with
        credentials, GET /api/v1/files/images/OWNER/... serves a user their own folder for longer."""
        result = await self.generate_image(params)
        pngs, seeds = result.images, result.seeds
        if response_format == "url":
            folder = f"images/{owner}/{uuid.uuid4().hex}"
            keys = await asyncio.gather(
                *(
                    asyncio.to_thread(self.results.put, f"{folder}/{i}.png", base64.b64decode(b))
                    for i, b in enumerate(pngs)
                )
            )
            data = [GeneratedImage(seed=s, url=self.image_link(k)) for s, k in zip(seeds, keys, strict=True)]
        else:
            data = [GeneratedImage(seed=s, b64_json=b) for s, b in zip(seeds, pngs, strict=True)]
        return result.model, result.worker, data

    def image_link(self, key: str) -> str:
        return signed_urls.result_link(self.settings, key, self.settings.result_link_ttl_s)[0]

    async def _call(self, model_id: str, path: str, payload: dict[str, Any], answer: type[A]) -> tuple[A, str]:
        """The worker's answer, its timings completed with the gateway's own, and the worker's id."""
        started = time.perf_counter()
        result, worker = await self._with_failover(model_id, path, payload, answer)
        result.timings.gateway_seconds = round(time.perf_counter() - started, 5)
        return result, worker.id

    async def _cached_call(
        self, use: CacheUse, record: ModelRecord, path: str, payload: dict[str, Any], answer: type[A]
    ) -> tuple[A, str]:
        """`_call` through the result cache when the request is deterministic. A replayed answer has zero
        engine timings and `worker` "cache": no engine worked for it."""
        started = time.perf_counter()
        served_by = CACHE_WORKER

        async def on_a_worker() -> A:
            nonlocal served_by
            result, worker = await self._with_failover(record.id, path, payload, answer)
            served_by = worker.id
            return result

        def key() -> str:
            owner, defaults = access.current_caller().username, {"max_tokens": self.settings.default_max_tokens}
            return cache_key(self.settings.redis_prefix, path, owner, record, payload, defaults)

        result, replayed = await self.cache.through(use, key if deterministic(payload) else None, answer, on_a_worker)
        if replayed:
            engine_side = {name: 0 for name in type(result.timings).model_fields if name != "gateway_seconds"}
            result.timings = result.timings.model_copy(update=engine_side)
            if isinstance(result, TextGeneration) and result.tool_calls:  # a call id names one reply, not two
                result.tool_calls = [call.model_copy(update={"id": new_call_id()}) for call in result.tool_calls]
        result.timings.gateway_seconds = round(time.perf_counter() - started, 5)
        return result, served_by

    async def _with_failover(
        self, model_id: str, path: str, payload: dict[str, Any], answer: type[A]
    ) -> tuple[A, WorkerInfo]:
        return await self._on_some_worker(model_id, lambda worker: self.client.call(worker, path, payload, answer))

    async def _on_some_worker(
        self, model_id: str, attempt: Callable[[WorkerInfo], Awaitable[T]]
    ) -> tuple[T, WorkerInfo]:
        """`attempt` on the worker routing picks; on a failure where nothing ran, on another one, up
        to WORKERS_TRIED. When no other worker is left, the last failure is the answer."""
        tried: frozenset[str] = frozenset()
        failure: BitingLipError | None = None
        while len(tried) < WORKERS_TRIED:
            try:
                worker = await self.workers.pick(model_id, exclude=tried)
            except ServiceUnavailable:
                if failure is None:
                    raise
                break
            try:
                return await attempt(worker), worker
            except BitingLipError as exc:
                if not _nothing_ran(exc):
                    raise
                log.warning("worker %s could not take %s: %s (%r)", worker.id, model_id, exc, exc.__cause__)
                tried, failure = tried | {worker.id}, exc
        assert failure is not None
        raise failure

    async def stream_text(self, params: TextGenerationParams) -> tuple[str, AsyncIterator[TextStreamEvent]]:
        """Resolves and connects before returning, so errors up to the first token are real HTTP
        errors; the iterator then yields the worker's events."""
        record, payload = await self._target(params)
        model_id = record.id

        async def connect(worker: WorkerInfo) -> tuple[AsyncGenerator[TextStreamEvent, None], TextStreamEvent]:
            events = self.client.stream_text(worker, payload)
            first = await anext(events)
            if isinstance(first, TextStreamError):
                await events.aclose()
                raise RemoteError(first.status_code, first.model_dump())
            return events, first

        (events, first), _ = await self._on_some_worker(model_id, connect)

        async def chain() -> AsyncIterator[TextStreamEvent]:
            yield first
            async for event in events:
                yield event

        return model_id, chain()


def stream_error(exc: BitingLipError) -> dict[str, Any]:
    """The SSE event for a failure after the stream started."""
    return TextStreamError.of(exc).model_dump(mode="json")
