"""The model pool of one worker process: engines loaded once, one batcher each, one compute thread.

All torch work runs on a single dedicated thread: on a CPU box several handler threads fighting over
torch's threads is what made a naive server 30% slower than one request at a time (docs/architecture.md §3.8).

Memory, as Ollama users expect it: a model is loaded on first use (or by hand, `load`), stays loaded for
its keep-alive after its last request (`expire`, run every second by the worker), and is unloaded
least-recently-used first when another needs room within the worker's budget of bytes and models
(`room.plan_room`). Pinned and busy models are never unloaded on the pool's own initiative."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitinglip import keep_alive, metrics
from bitinglip.config import Settings
from bitinglip.engines.batcher import Batcher, BatchKnobs
from bitinglip.engines.device import resolve_device, resolve_dtype, weights_bytes
from bitinglip.engines.embeddings import EmbeddingEngine, EmbeddingRequest, EmbeddingResult
from bitinglip.engines.image import ImageEngine, ImageRequest, ImageResult
from bitinglip.engines.protocol import Engine, EngineLoader, Placement, TextGenerator
from bitinglip.engines.room import Resident, megabytes, plan_room
from bitinglip.engines.text import TextEngine
from bitinglip.engines.types import Priority, TextDelta, TextRequest, TextResult
from bitinglip.errors import Conflict, InvalidRequest, NoRoomToLoad
from bitinglip.metrics import RollingWindow
from bitinglip.models.backends import Backend
from bitinglip.models.names import split_model_id
from bitinglip.models.store import Manifest, ModelStore
from bitinglip.schemas import ImageParams, TextGenerationParams
from bitinglip.structured.tools import parse_call

KeepAliveValue = str | int | float | None  # a request's keep_alive, as it came (bitinglip/keep_alive.py)

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
    last_used: float  # pool clock: when a request last took or gave back the model
    memory_bytes: int  # measured once, at load
    keep_alive_s: float = keep_alive.FOREVER  # stays loaded this long after its last request
    active: int = 0  # requests between taking it from the pool and their answer

    @property
    def busy(self) -> bool:
        stats = self.batcher.stats
        return bool(self.active or stats.waiting or stats.running)

    def expires_in(self, now: float, pinned: bool) -> float | None:
        """Seconds until its keep-alive runs out (counted from when it went idle); None: never."""
        if pinned or self.keep_alive_s == keep_alive.FOREVER:
            return None
        if self.busy:
            return self.keep_alive_s
        return max(0.0, self.last_used + self.keep_alive_s - now)


class ModelPool:
    """`max_loaded` (default `BITINGLIP_MAX_LOADED_MODELS`) and `budget_bytes`
    (`BITINGLIP_WORKER_MEMORY_BUDGET_BYTES`) bound what is loaded; `pinned` holds the registry's pinned
    model ids (the worker's heartbeat refreshes it). `engines` and `clock` are the loader table and the
    monotonic clock, passed in by tests that drive the pool with their own engines and time."""

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        max_loaded: int | None = None,
        *,
        engines: Mapping[tuple[str, Backend], EngineLoader] = ENGINES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.max_loaded = max_loaded or settings.max_loaded_models
        self.budget_bytes = settings.worker_memory_budget_bytes
        self.pinned: frozenset[str] = frozenset()
        self.engines = engines
        self._clock = clock
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.placement = Placement(
            self.device,
            self.dtype,
            settings.device_map,
            settings.torch_threads,
            settings.llama_kv_tokens,
            settings.llama_kv_type,
        )
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._lock = asyncio.Lock()  # loads and unloads, one at a time: the budget is counted under it
        self._measured: dict[str, int] = {}  # bytes a model held when last loaded: the next estimate
        self._expire_now = asyncio.Event()
        self.on_batch: Callable[[str, int], None] | None = None
        self._token_rates: dict[str, RollingWindow] = {}
        if settings.torch_threads:
            self.executor.submit(_set_threads, settings.torch_threads).result()

    def loaded_ids(self) -> list[str]:
        return list(self._models)

    def loaded(self) -> list[dict[str, Any]]:
        """What the heartbeat reports and `ps` shows, per loaded model."""
        now, wall = self._clock(), time.time()
        return [
            {
                "id": m.manifest.id,
                "name": m.manifest.name,
                "task": m.manifest.task,
                "backend": m.manifest.backend,
                "waiting": m.batcher.stats.waiting,
                "running": m.batcher.stats.running,
                "load_seconds": round(m.load_seconds, 3),
                "tokens_per_s": round(self._token_rates.get(m.manifest.id, RollingWindow()).total_rate(), 2),
                "memory_bytes": m.memory_bytes,
                "pinned": m.manifest.id in self.pinned,
                "keep_alive_s": m.keep_alive_s,
                "expires_in_s": _rounded(m.expires_in(now, m.manifest.id in self.pinned)),
                "idle_s": 0.0 if m.busy else round(now - m.last_used, 1),
                "last_used": datetime.fromtimestamp(wall - (now - m.last_used), UTC).isoformat(timespec="seconds"),
            }
            for m in self._models.values()
        ]

    @property
    def used_bytes(self) -> int:
        return sum(m.memory_bytes for m in self._models.values())

    @property
    def queue_depth(self) -> int:
        return sum(m.batcher.stats.waiting + m.batcher.stats.running for m in self._models.values())

    async def get(self, model_id: str, keep_alive_s: float | None = None, exact: bool = False) -> LoadedModel:
        """The model, loaded first if it is not; marks it used now. Its keep-alive (the given seconds,
        else the model's default: `Settings.keep_alive_for`) is set on a fresh load or with `exact`
        (the admin's load route); a request to a loaded model may only lengthen it, so one tenant's
        `keep_alive: 0` cannot unload a model others use, and a request without one does not undo
        what an admin set."""
        manifest = self.store.resolve(model_id)
        key = manifest.id
        loaded = self._models.get(key)
        fresh = False
        if loaded is None:
            async with self._lock:
                loaded = self._models.get(key)
                if loaded is None:
                    loaded, fresh = await self._load(manifest), True
        # no await from here to the caller taking it: the expiry sweep cannot slip in between
        self._models.move_to_end(key)
        loaded.last_used = self._clock()
        wanted = self.settings.keep_alive_for(manifest.name, key) if keep_alive_s is None else keep_alive_s
        loaded.keep_alive_s = wanted if fresh or exact else keep_alive.longer(loaded.keep_alive_s, wanted)
        return loaded

    async def load(self, model_id: str, keep_alive_value: KeepAliveValue = None) -> LoadedModel:
        """`get` by hand (the load route): the keep-alive is set as given, and its clock starts now."""
        return await self.get(model_id, keep_alive.checked(keep_alive_value), exact=True)

    async def _load(self, manifest: Manifest) -> LoadedModel:
        """Under the lock: make room for its estimated bytes, load, then hold it to what it really
        takes (an engine may allocate past its files, say llama.cpp's KV cache)."""
        loader = self.engines.get((manifest.task, manifest.backend))
        if loader is None:
            raise InvalidRequest(f"no engine serves {manifest.task} models on {manifest.backend}", param="model")
        loop = asyncio.get_running_loop()
        estimate = self._measured.get(manifest.id) or self._estimate(manifest)
        await self._unload_all(self._plan(manifest.id, estimate), "to make room")
        started = time.perf_counter()
        path = self.store.path(manifest)

        engine = await loop.run_in_executor(self.executor, loader, manifest.id, path, self.placement)
        size, wait_ms, queue = self.settings.batching_for(manifest.name)
        knobs = BatchKnobs(
            size,
            wait_ms,
            queue,
            continuous=self.settings.text_batching == "continuous",
            aging_s=self.settings.priority_aging_s,
            background_beside_interactive=self._background_beside_interactive(),
        )
        try:
            # on the compute thread: an engine may allocate its working memory here (llama.cpp's KV
            # cache), measured after it
            batcher = await loop.run_in_executor(
                self.executor, engine.make_batcher, self.executor, knobs, partial(self._batch_done, manifest.id)
            )
            memory = await loop.run_in_executor(self.executor, engine.memory_bytes)
        except BaseException:
            await loop.run_in_executor(self.executor, engine.unload)  # a half-made model gives its memory back
            raise
        self._measured[manifest.id] = memory
        if memory > estimate:
            try:
                victims = self._plan(manifest.id, memory)
            except NoRoomToLoad:
                await batcher.stop()
                await loop.run_in_executor(self.executor, engine.unload)
                raise
            await self._unload_all(victims, "to make room")
        elapsed = time.perf_counter() - started
        metrics.MODEL_LOAD.labels(manifest.id).set(elapsed)
        loaded = LoadedModel(manifest, engine, batcher, elapsed, self._clock(), memory)
        self._models[manifest.id] = loaded
        log.info("loaded %s on %s in %.2fs (%s)", manifest.id, self.device, elapsed, megabytes(memory))
        return loaded

    def _estimate(self, manifest: Manifest) -> int:
        """Bytes a first load will take: a transformers model's weights at the dtype it loads in (fp32
        files on a bf16 GPU take half their size, docs/architecture.md §3.24), else its files' size."""
        if manifest.backend == "transformers":
            loaded = weights_bytes(self.store.path(manifest), self.dtype)
            if loaded is not None:
                return loaded
        return manifest.size_bytes

    def _background_beside_interactive(self) -> int | None:
        """The setting, else 0 on a CPU and no limit on a GPU (docs/architecture.md §3.14)."""
        configured = self.settings.background_rows_beside_interactive
        if configured is not None:
            return configured
        return 0 if self.device == "cpu" else None

    def _plan(self, model_id: str, need: int) -> list[LoadedModel]:
        resident = [
            Resident(m.manifest.id, m.memory_bytes, m.manifest.id in self.pinned, m.busy) for m in self._models.values()
        ]
        return [self._models[i] for i in plan_room(resident, model_id, need, self.budget_bytes, self.max_loaded)]

    async def _unload_all(self, models: list[LoadedModel], why: str) -> None:
        """Out of the table first (no request takes them any more), then stopped and unloaded on the
        compute thread, after a batch it may still run: the memory is back before the next load there."""
        for m in models:
            self._models.pop(m.manifest.id, None)
        loop = asyncio.get_running_loop()
        for m in models:
            await m.batcher.stop()
            await loop.run_in_executor(self.executor, m.engine.unload)
            log.info("unloaded %s %s (%s)", m.manifest.id, why, megabytes(m.memory_bytes))

    async def unload(self, model_id: str, force: bool = False) -> list[str]:
        """Unload NAME (every loaded revision) or NAME@REVISION; the ids unloaded (none: not loaded).
        A model with requests waiting or running is a Conflict unless `force`, which fails them."""
        name, revision = split_model_id(model_id)
        async with self._lock:
            matching = [
                m for m in self._models.values() if m.manifest.name == name and revision in (None, m.manifest.revision)
            ]
            busy = [m for m in matching if m.busy]
            if busy and not force:
                stats = busy[0].batcher.stats
                raise Conflict(
                    f"model {busy[0].manifest.id} has {stats.waiting} request(s) waiting and {stats.running} running; "
                    "wait for them, or unload with force=true (they fail)",
                    param="model",
                )
            await self._unload_all(matching, "on request" + (" (forced)" if busy else ""))
        return [m.manifest.id for m in matching]

    async def expire(self) -> list[str]:
        """Unload the idle models whose keep-alive has run out; their ids."""

        def due() -> list[LoadedModel]:
            now = self._clock()
            pinned = self.pinned
            return [m for m in self._models.values() if not m.busy and m.expires_in(now, m.manifest.id in pinned) == 0]

        if not due():
            return []
        async with self._lock:
            expired = due()  # again: a request may have taken one while we waited for the lock
            await self._unload_all(expired, "(keep-alive expired)")
        return [m.manifest.id for m in expired]

    async def run_expiry(self, every_s: float = 1.0) -> None:
        """The worker's background task: `expire` every `every_s`, and at once after a request with
        keep_alive 0. Cheap: a look at a handful of models, the lock only when one is due."""
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._expire_now.wait(), every_s)
            self._expire_now.clear()
            try:
                await self.expire()
            except Exception:  # an engine that fails to unload must not stop the sweep
                log.exception("keep-alive sweep failed")

    @asynccontextmanager
    async def _serving(self, model_id: str, task: str, keep_alive_value: KeepAliveValue) -> AsyncIterator[LoadedModel]:
        """The model for one request, counted as busy until the request is answered."""
        seconds = keep_alive.checked(keep_alive_value)  # a bad value is refused before anything loads
        loaded = await self.get(model_id, seconds)
        loaded.active += 1
        try:
            if loaded.manifest.task != task:
                raise InvalidRequest(
                    f"model {loaded.manifest.id!r} is a {loaded.manifest.task} model, not a {task} model",
                    param="model",
                )
            yield loaded
        finally:
            loaded.active -= 1
            loaded.last_used = self._clock()
            if loaded.keep_alive_s == 0:
                self._expire_now.set()

    async def embed(
        self, model_id: str | None, texts: list[str], priority: Priority, keep_alive_value: KeepAliveValue = None
    ) -> EmbeddingResult:
        if not texts:
            raise InvalidRequest("input must not be empty", param="input")
        if len(texts) > self.settings.max_embedding_inputs:
            raise InvalidRequest(f"at most {self.settings.max_embedding_inputs} inputs per request", param="input")
        if any(len(t) > self.settings.max_prompt_chars for t in texts):
            raise InvalidRequest(f"an input is longer than {self.settings.max_prompt_chars} characters", param="input")
        model = model_id or self.settings.default_embedding_model
        async with self._serving(model, "embedding", keep_alive_value) as loaded:
            result: EmbeddingResult = await loaded.batcher.submit(EmbeddingRequest(texts), int(priority))
        metrics.EMBEDDINGS.labels(loaded.manifest.id).inc(len(texts))
        metrics.PROMPT_TOKENS.labels(loaded.manifest.id).inc(result.prompt_tokens)
        metrics.E2E.labels(loaded.manifest.id, "embedding").observe(result.total_seconds)
        return result

    async def generate_image(self, params: ImageParams, priority: Priority) -> ImageResult:
        params.check_limits(self.settings)
        async with self._serving(params.model or self.settings.default_image_model, "image", None) as loaded:
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
        tenant: str | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> TextResult:
        """Tokenize, check the context, queue for the next batch and wait for the result. `tenant`:
        the user it runs for; engines share cached prompt work only between requests of one tenant.
        `on_restart`: `sink` takes the text again from the start after this call (TextRequest)."""
        if params.prompt_chars() > self.settings.max_prompt_chars:
            raise InvalidRequest(f"prompt is longer than {self.settings.max_prompt_chars} characters", param="prompt")
        sampling = params.sampling(self.settings.default_max_tokens)
        if sampling.max_tokens > self.settings.max_tokens_cap:
            raise InvalidRequest(f"max_tokens must be <= {self.settings.max_tokens_cap}", param="max_tokens")
        model = params.model or self.settings.default_text_model
        async with self._serving(model, "text", params.keep_alive) as loaded:
            engine = loaded.engine
            if not isinstance(engine, TextGenerator):  # a text model is served by a text engine
                raise TypeError(f"the engine of {loaded.manifest.id!r} does not generate text")
            input_ids = engine.encode(
                params.prompt, params.template_messages(engine.has_chat_template), params.template_tools()
            )
            engine.check_length(input_ids, sampling.max_tokens)
            grammar = params.grammar()
            # compiled off the compute thread (and off the loop: a first use builds the vocabulary)
            constraint = None if grammar is None else await asyncio.to_thread(engine.constraint, grammar)
            item = TextRequest(input_ids, sampling, sink, tenant=tenant, constraint=constraint, on_restart=on_restart)
            if cancelled is not None:
                item.cancelled = cancelled
            try:
                result: TextResult = await loaded.batcher.submit(item, int(priority))
            except asyncio.CancelledError:
                item.cancelled.set()  # the caller went away: free the slot in the running batch
                raise
        if params.calls_tools and (call := parse_call(result.text)) is not None:
            result.tool_calls, result.finish_reason = [call], "tool_calls"
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

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop every batcher (their waiters are told), then unload every engine on the compute thread,
        after the step it may still be running there: freeing llama.cpp's memory under a running
        `llama_decode` would crash the process. A step that outlasts `grace_s` is left to the exit."""
        loop = asyncio.get_running_loop()
        for loaded in self._models.values():
            await loaded.batcher.stop()
        unloads = [loop.run_in_executor(self.executor, m.engine.unload) for m in self._models.values()]
        self._models.clear()
        if unloads:
            await asyncio.wait(unloads, timeout=grace_s)
        self.executor.shutdown(wait=False, cancel_futures=True)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
