"""Sync and streaming generation: resolve the model, pick a worker, relay. No Prefect on this path
(a flow run costs 120-170 ms; docs/architecture.md §3.1)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from api.inference.schemas import RoutedEmbeddings, RoutedImages, TextInferenceResponse
from api.models.service import ModelService
from api.workers.client import WorkerClient
from api.workers.service import WorkerDirectory
from bitinglip.config import Settings
from bitinglip.db.workers import WorkerInfo
from bitinglip.errors import BitingLipError, RemoteError, ServiceUnavailable
from bitinglip.outputs import (
    Embeddings,
    GeneratedImage,
    ImageGeneration,
    TextGeneration,
    TextStreamError,
    TextStreamEvent,
)
from bitinglip.results import ResultStore
from bitinglip.schemas import EmbeddingParams, ImageParams, TextGenerationParams
from bitinglip.types import Priority

log = logging.getLogger(__name__)

# What a worker answers; each carries timings the gateway completes.
A = TypeVar("A", TextGeneration, Embeddings, ImageGeneration)


class InferenceService:
    def __init__(
        self,
        settings: Settings,
        models: ModelService,
        workers: WorkerDirectory,
        client: WorkerClient,
        results: ResultStore,
    ) -> None:
        self.settings = settings
        self.results = results
        self.models = models
        self.workers = workers
        self.client = client

    async def _target(self, params: TextGenerationParams) -> tuple[str, dict[str, Any]]:
        params.check_limits(self.settings)
        record = await self.models.resolve(params.model or self.settings.default_text_model, "text")
        payload = params.model_dump(exclude_none=True, mode="json")
        payload.update(model=record.id, priority=int(Priority.SYNC))
        return record.id, payload

    async def generate_text(self, params: TextGenerationParams) -> TextInferenceResponse:
        model_id, payload = await self._target(params)
        result, worker = await self._call(model_id, "/internal/v1/text", payload, TextGeneration)
        return TextInferenceResponse.of(model_id, worker, result)

    async def embed(self, params: EmbeddingParams) -> RoutedEmbeddings:
        record = await self.models.resolve(params.model or self.settings.default_embedding_model, "embedding")
        params.check_limits(self.settings)
        payload = {"model": record.id, "input": params.texts(), "priority": int(Priority.SYNC)}
        if params.keep_alive is not None:
            payload["keep_alive"] = params.keep_alive
        result, worker = await self._call(record.id, "/internal/v1/embeddings", payload, Embeddings)
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
        """(model, worker, images): `url` stores the PNGs under the owner's folder and links
        /api/v1/files, which serves a user only their own folder."""
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
            data = [GeneratedImage(seed=s, url=self.file_url(k)) for s, k in zip(seeds, keys, strict=True)]
        else:
            data = [GeneratedImage(seed=s, b64_json=b) for s, b in zip(seeds, pngs, strict=True)]
        return result.model, result.worker, data

    def file_url(self, key: str) -> str:
        return f"{self.settings.gateway_url}/api/v1/files/{key}"

    async def _call(self, model_id: str, path: str, payload: dict[str, Any], answer: type[A]) -> tuple[A, str]:
        """The worker's answer, its timings completed with the gateway's own, and the worker's id."""
        started = time.perf_counter()
        result, worker = await self._with_failover(model_id, path, payload, answer)
        result.timings.gateway_seconds = round(time.perf_counter() - started, 5)
        return result, worker.id

    async def _with_failover(
        self, model_id: str, path: str, payload: dict[str, Any], answer: type[A]
    ) -> tuple[A, WorkerInfo]:
        """One retry on another worker when the first cannot be reached (nothing ran there)."""
        tried: frozenset[str] = frozenset()
        while True:
            worker = await self.workers.pick(model_id, exclude=tried)
            try:
                return await self.client.call(worker, path, payload, answer), worker
            except ServiceUnavailable as exc:
                log.warning("worker %s failed: %s (%r)", worker.id, exc, exc.__cause__)
                tried = tried | {worker.id}
                if len(tried) >= 2:
                    raise

    async def stream_text(self, params: TextGenerationParams) -> tuple[str, AsyncIterator[TextStreamEvent]]:
        """Resolves and connects before returning, so errors up to the first token are real HTTP
        errors; the iterator then yields the worker's events."""
        model_id, payload = await self._target(params)
        worker = await self.workers.pick(model_id)
        events = self.client.stream_text(worker, payload)
        first = await anext(events)
        if isinstance(first, TextStreamError):
            raise RemoteError(first.status_code, first.model_dump())

        async def chain() -> AsyncIterator[TextStreamEvent]:
            yield first
            async for event in events:
                yield event

        return model_id, chain()


def stream_error(exc: BitingLipError) -> dict[str, Any]:
    """The SSE event for a failure after the stream started."""
    return TextStreamError.of(exc).model_dump(mode="json")
