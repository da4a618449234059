"""The model pool of one worker process: engines loaded once, one batcher each, one compute thread.

All torch work runs on a single dedicated thread: on a CPU box several handler threads fighting over
torch's threads is what made a naive server 30% slower than one request at a time (docs/architecture.md §3.8)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitinglip import metrics
from bitinglip.config import Settings
from bitinglip.engines.batcher import Batcher, BatchKnobs
from bitinglip.engines.device import resolve_device, resolve_dtype
from bitinglip.engines.embeddings import EmbeddingEngine, EmbeddingRequest, EmbeddingResult
from bitinglip.engines.image import ImageEngine, ImageRequest, ImageResult
from bitinglip.engines.protocol import Engine, EngineLoader, Placement, TextGenerator
from bitinglip.engines.text import TextEngine
from bitinglip.engines.types import Priority, TextDelta, TextRequest, TextResult
from bitinglip.errors import InvalidRequest
from bitinglip.metrics import RollingWindow
from bitinglip.models.backends import Backend
from bitinglip.models.store import Manifest, ModelStore
from bitinglip.schemas import ImageParams, TextGenerationParams

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def placed(load: Callable[[str, Path, str, torch.dtype, str | None], Engine]) -> EngineLoader:
    """An engine class's `load(name, path, device, dtype, device_map)` as a loader."""
    return lambda model_id, path, at: load(model_id, path, at.device, at.dtype, at.device_map)


def lazy_llama(model_id: str, path: Path, at: Placement) -> Engine:
    """Imported here, so a machine without llama-cpp-python still runs every other engine."""
    from bitinglip.engines.llama import load_llama

    return load_llama(model_id, path, at)


ENGINES: dict[tuple[str, Backend], EngineLoader] = {
    ("text", "transformers"): placed(TextEngine.load),
    ("embedding", "transformers"): placed(EmbeddingEngine.load),
    ("image", "transformers"): placed(ImageEngine.load),
    ("text", "llama.cpp"): lazy_llama,
}  # (task, backend) -> how to load a model of that task installed for that backend


@dataclass
class LoadedModel:
    manifest: Manifest
    engine: Engine
    batcher: Batcher[Any, Any]  # items and results by manifest.task
    load_seconds: float
    last_used: float
    memory_bytes: int  # measured once, at load


class ModelPool:
    def __init__(self, settings: Settings, store: ModelStore, max_loaded: int = 4) -> None:
        self.settings = settings
        self.store = store
        self.max_loaded = max_loaded
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.placement = Placement(
            self.device, self.dtype, settings.device_map, settings.torch_threads, settings.llama_kv_tokens
        )
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self.on_batch: Callable[[str, int], None] | None = None
        self._token_rates: dict[str, RollingWindow] = {}
        if settings.torch_threads:
            self.executor.submit(_set_threads, settings.torch_threads).result()

    def loaded(self) -> list[dict[str, Any]]:
        return [
            {
                "id": m.manifest.id,
                "name": m.manifest.name,
                "task": m.manifest.task,
                "waiting": m.batcher.stats.waiting,
                "running": m.batcher.stats.running,
                "load_seconds": round(m.load_seconds, 3),
                "tokens_per_s": round(self._token_rates.get(m.manifest.id, RollingWindow()).total_rate(), 2),
                "memory_bytes": m.memory_bytes,
            }
            for m in self._models.values()
        ]

    @property
    def queue_depth(self) -> int:
        return sum(m.batcher.stats.waiting + m.batcher.stats.running for m in self._models.values())

    async def get(self, model_id: str) -> LoadedModel:
        manifest = self.store.resolve(model_id)
        key = manifest.id
        if key in self._models:
            self._models.move_to_end(key)
            loaded = self._models[key]
            loaded.last_used = time.monotonic()
            return loaded
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key not in self._models:
                await self._load(manifest)
        return self._models[key]

    async def _load(self, manifest: Manifest) -> None:
        loader = ENGINES.get((manifest.task, manifest.backend))
        if loader is None:
            raise InvalidRequest(f"no engine serves {manifest.task} models on {manifest.backend}", param="model")
        loop = asyncio.get_running_loop()
        while len(self._models) >= self.max_loaded:
            _, evicted = self._models.popitem(last=False)
            await evicted.batcher.stop()
            # On the compute thread, after the batch it may still be running: the load below waits
            # there anyway, and the memory is given back before the next model takes its own.
            await loop.run_in_executor(self.executor, evicted.engine.unload)
            log.info("unloaded %s to make room", evicted.manifest.id)
        started = time.perf_counter()
        path = self.store.path(manifest)

        engine = await loop.run_in_executor(self.executor, loader, manifest.id, path, self.placement)
        size, wait_ms, queue = self.settings.batching_for(manifest.name)
        knobs = BatchKnobs(size, wait_ms, queue, continuous=self.settings.text_batching == "continuous")
        batcher = engine.make_batcher(self.executor, knobs, partial(self._batch_done, manifest.id))
        # after the batcher: an engine may allocate its working memory there (llama.cpp's KV cache)
        memory = await loop.run_in_executor(self.executor, engine.memory_bytes)
        elapsed = time.perf_counter() - started
        metrics.MODEL_LOAD.labels(manifest.id).set(elapsed)
        self._models[manifest.id] = LoadedModel(manifest, engine, batcher, elapsed, time.monotonic(), memory)
        log.info("loaded %s on %s in %.2fs (%.1f MB)", manifest.id, self.device, elapsed, memory / 1e6)

    async def _get_for(self, model_id: str, task: str) -> LoadedModel:
        loaded = await self.get(model_id)
        if loaded.manifest.task != task:
            raise InvalidRequest(
                f"model {loaded.manifest.id!r} is a {loaded.manifest.task} model, not a {task} model", param="model"
            )
        return loaded

    async def embed(self, model_id: str | None, texts: list[str], priority: Priority) -> EmbeddingResult:
        if not texts:
            raise InvalidRequest("input must not be empty", param="input")
        if len(texts) > self.settings.max_embedding_inputs:
            raise InvalidRequest(f"at most {self.settings.max_embedding_inputs} inputs per request", param="input")
        if any(len(t) > self.settings.max_prompt_chars for t in texts):
            raise InvalidRequest(f"an input is longer than {self.settings.max_prompt_chars} characters", param="input")
        loaded = await self._get_for(model_id or self.settings.default_embedding_model, "embedding")
        result: EmbeddingResult = await loaded.batcher.submit(EmbeddingRequest(texts), int(priority))
        metrics.EMBEDDINGS.labels(loaded.manifest.id).inc(len(texts))
        metrics.PROMPT_TOKENS.labels(loaded.manifest.id).inc(result.prompt_tokens)
        metrics.E2E.labels(loaded.manifest.id, "embedding").observe(result.total_seconds)
        return result

    async def generate_image(self, params: ImageParams, priority: Priority) -> ImageResult:
        params.check_limits(self.settings)
        loaded = await self._get_for(params.model or self.settings.default_image_model, "image")
        result: ImageResult = await loaded.batcher.submit(ImageRequest(params), int(priority))
        metrics.IMAGES.labels(loaded.manifest.id).inc(len(result.pngs))
        metrics.E2E.labels(loaded.manifest.id, "image").observe(result.total_seconds)
        return result

    def snapshot(self) -> list[metrics.ModelLoad]:
        return [
            metrics.ModelLoad(m.manifest.id, m.batcher.stats.waiting, m.batcher.stats.running)
            for m in self._models.values()
        ]

    def _batch_done(self, model_id: str, size: int) -> None:
        metrics.BATCH_SIZE.labels(model_id).observe(size)
        if self.on_batch is not None:
            self.on_batch(model_id, size)

    async def generate_text(
        self,
        params: TextGenerationParams,
        priority: Priority,
        sink: Callable[[TextDelta], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> TextResult:
        """Tokenize, check the context, queue for the next batch and wait for the result."""
        loaded = await self._get_for(params.model or self.settings.default_text_model, "text")
        if params.prompt_chars() > self.settings.max_prompt_chars:
            raise InvalidRequest(f"prompt is longer than {self.settings.max_prompt_chars} characters", param="prompt")
        sampling = params.sampling(self.settings.default_max_tokens)
        if sampling.max_tokens > self.settings.max_tokens_cap:
            raise InvalidRequest(f"max_tokens must be <= {self.settings.max_tokens_cap}", param="max_tokens")
        engine = loaded.engine
        if not isinstance(engine, TextGenerator):  # a text model is served by a text engine
            raise TypeError(f"the engine of {loaded.manifest.id!r} does not generate text")
        input_ids = engine.encode(params.prompt, params.template_messages())
        engine.check_length(input_ids, sampling.max_tokens)
        item = TextRequest(input_ids, sampling, sink)
        if cancelled is not None:
            item.cancelled = cancelled
        try:
            result: TextResult = await loaded.batcher.submit(item, int(priority))
        except asyncio.CancelledError:
            item.cancelled.set()  # the caller went away: free the slot in the running batch
            raise
        self._observe_text(loaded.manifest.id, result)
        return result

    def _observe_text(self, model_id: str, r: TextResult) -> None:
        metrics.TTFT.labels(model_id).observe(r.first_token_seconds)
        if r.completion_tokens > 1:
            gap = (r.total_seconds - r.first_token_seconds) / (r.completion_tokens - 1)
            metrics.INTER_TOKEN.labels(model_id).observe(gap)
        metrics.E2E.labels(model_id, "text").observe(r.total_seconds)
        metrics.QUEUE_TIME.labels(model_id).observe(r.queue_seconds)
        metrics.COMPUTE_TIME.labels(model_id, "text").observe(r.total_seconds - r.queue_seconds)
        metrics.PROMPT_TOKENS.labels(model_id).inc(r.prompt_tokens)
        metrics.GENERATION_TOKENS.labels(model_id).inc(r.completion_tokens)
        self._token_rates.setdefault(model_id, metrics.RollingWindow()).add(r.completion_tokens)

    async def close(self) -> None:
        """Stop every batcher (their waiters are told) and unload every engine, without waiting for a
        batch still on the compute thread: nobody waits for it, and it fails at its next model call."""
        for loaded in self._models.values():
            await loaded.batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        for loaded in self._models.values():
            loaded.engine.unload()
        self._models.clear()


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
