"""Every engine satisfies the `Engine` protocol the pool relies on, on the real installed models (the
session's model store): its batcher strategy, its memory and its unload. And the pool reports that
memory and unloads what it evicts. In-process: no HTTP, no Prefect."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from bitinglip.config import Settings
from bitinglip.db.workers import loaded_model
from bitinglip.engines.batcher import BatchKnobs, ContinuousBatcher, DynamicBatcher
from bitinglip.engines.device import weights_bytes
from bitinglip.engines.embeddings import EmbeddingEngine
from bitinglip.engines.image import ImageEngine
from bitinglip.engines.pool import ENGINES, ModelPool
from bitinglip.engines.protocol import Engine, EngineLoader, Placement, TextGenerator
from bitinglip.engines.text import TextEngine
from bitinglip.engines.types import Priority
from bitinglip.errors import NoRoomToLoad
from bitinglip.models.store import ModelStore
from tests.conftest import EMBEDDING_MODEL, IMAGE_MODEL, TEXT_MODEL_FP32

CPU = Placement("cpu", torch.float32)
KNOBS = BatchKnobs(max_batch_size=4, max_wait_ms=5, max_queue=8)


def load(store: ModelStore, name: str) -> Engine:
    manifest = store.resolve(name)
    loader: EngineLoader = ENGINES[(manifest.task, manifest.backend)]
    return loader(manifest.id, store.path(manifest), CPU)


@pytest.fixture(scope="module")
def engines(model_store: ModelStore) -> dict[str, Engine]:
    return {name: load(model_store, name) for name in (TEXT_MODEL_FP32, EMBEDDING_MODEL, IMAGE_MODEL)}


@pytest.fixture()
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def test_the_table_loads_each_task_with_its_engine(engines: dict[str, Engine]) -> None:
    assert isinstance(engines[TEXT_MODEL_FP32], TextEngine)
    assert isinstance(engines[EMBEDDING_MODEL], EmbeddingEngine)
    assert isinstance(engines[IMAGE_MODEL], ImageEngine)
    assert all(isinstance(e, Engine) for e in engines.values())
    assert all(e.name.startswith(f"{n}@") for n, e in engines.items())  # the model id it serves


def test_only_the_text_engine_generates_text(engines: dict[str, Engine]) -> None:
    assert isinstance(engines[TEXT_MODEL_FP32], TextGenerator)
    assert not isinstance(engines[EMBEDDING_MODEL], TextGenerator)
    assert not isinstance(engines[IMAGE_MODEL], TextGenerator)


def test_memory_is_the_weights_and_buffers_held(engines: dict[str, Engine]) -> None:
    text = engines[TEXT_MODEL_FP32]
    assert isinstance(text, TextEngine)
    params = sum(p.numel() for p in text.model.parameters())
    assert text.memory_bytes() >= params * 4  # float32 weights, plus buffers (rotary tables)
    image = engines[IMAGE_MODEL]
    assert isinstance(image, ImageEngine)
    unet = sum(p.numel() * p.element_size() for p in image.pipeline.unet.parameters())
    assert image.memory_bytes() > unet > 0  # every torch component of the pipeline counts
    assert engines[EMBEDDING_MODEL].memory_bytes() > 0


def test_each_engine_picks_its_batching_strategy(engines: dict[str, Engine], executor: ThreadPoolExecutor) -> None:
    text = engines[TEXT_MODEL_FP32]
    continuous = text.make_batcher(executor, BatchKnobs(4, 5, 8, continuous=True), None)
    static = text.make_batcher(executor, KNOBS, None)
    assert isinstance(continuous, ContinuousBatcher)
    assert isinstance(static, DynamicBatcher) and not static.isolate  # a text batch has streamed already
    for name in (EMBEDDING_MODEL, IMAGE_MODEL):
        batcher = engines[name].make_batcher(executor, KNOBS, None)
        assert isinstance(batcher, DynamicBatcher) and batcher.isolate  # rerun alone: only the culprit fails
        assert (batcher.max_batch_size, batcher.max_wait, batcher.max_queue) == (4, 0.005, 8)


def test_unload_lets_go_of_the_model(model_store: ModelStore) -> None:
    engine = load(model_store, EMBEDDING_MODEL)
    assert engine.memory_bytes() > 0
    engine.unload()
    assert engine.memory_bytes() == 0


async def test_pool_reports_memory_and_unloads_what_it_evicts(model_store: ModelStore, tmp_path: Path) -> None:
    pool = ModelPool(Settings(home=tmp_path), model_store, max_loaded=1)
    try:
        first = await pool.get(EMBEDDING_MODEL)
        [entry] = pool.loaded()
        assert entry["memory_bytes"] == first.engine.memory_bytes() > 0
        assert loaded_model(entry)["memory_bytes"] == entry["memory_bytes"]  # as the heartbeat stores it
        result = await pool.embed(EMBEDDING_MODEL, ["hello"], Priority.SYNC)
        assert len(result.vectors) == 1
        await pool.get(TEXT_MODEL_FP32)  # no room: the embedding model goes
        assert first.engine.memory_bytes() == 0
        assert [m["task"] for m in pool.loaded()] == ["text"]
    finally:
        await pool.close()


# -- the estimate before a first load


async def test_a_first_load_is_counted_at_the_dtype_it_loads_in(tmp_path: Path, model_store: ModelStore) -> None:
    """fp32 files loaded in bf16 (a GPU's default dtype) take half their size: the budget counts the
    weights in the dtype they load in, read from the safetensors headers, not the files (the real
    MiniLM files and engine, on the CPU in bf16)."""
    manifest = model_store.resolve(EMBEDDING_MODEL)
    budget = int(manifest.size_bytes * 0.7)  # the bf16 weights fit, the fp32 files would not

    def pool(dtype: str) -> ModelPool:
        config = Settings(home=tmp_path, device="cpu", dtype=dtype, worker_memory_budget_bytes=budget, worker_models=[])
        return ModelPool(config, model_store)

    half = pool("bfloat16")
    try:
        loaded = await half.load(manifest.id)
        estimate = weights_bytes(model_store.path(manifest), torch.bfloat16)
        assert estimate is not None and abs(loaded.memory_bytes - estimate) < 0.01 * estimate  # buffers aside
        assert loaded.memory_bytes <= budget < manifest.size_bytes
        result = await half.embed(manifest.id, ["a cat"], Priority.SYNC)
        assert len(result.vectors[0]) == 384
    finally:
        await half.close()
    full = pool("float32")
    try:
        with pytest.raises(NoRoomToLoad, match="more than the whole budget"):
            await full.load(manifest.id)
    finally:
        await full.close()
