"""The result cache without HTTP: keys, what counts as deterministic, Cache-Control, both backends (the
Redis one against the real Redis, under a prefix of this test's own) and a backend that is down."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from typing import Any

import redis

from bitinglip.config import Settings
from bitinglip.db.tables import ModelRecord
from bitinglip.outputs import PromptUsage
from bitinglip.result_cache import CacheUse, ResultCache, cache_key, deterministic

MODEL = ModelRecord(id="m@1", backend="llama.cpp", files={"w.gguf": {"sha256": "a" * 64, "size": 3}})


def _key(owner: str = "ann", model: ModelRecord = MODEL, **payload: Any) -> str:
    return cache_key("p", "/internal/v1/text", owner, model, {"prompt": "hi", **payload}, {"max_tokens": 512})


def test_the_key_names_the_owner_the_installed_files_and_what_shapes_the_answer() -> None:
    assert _key() == _key(priority=0, keep_alive="5m") == _key(priority=3)  # queue and warmth: not the answer
    reinstalled = ModelRecord(id="m@1", backend="llama.cpp", files={"w.gguf": {"sha256": "b" * 64, "size": 3}})
    other_backend = ModelRecord(id="m@1", backend="transformers", files=MODEL.files)
    distinct = {_key(), _key(owner="bob"), _key(model=reinstalled), _key(model=other_backend), _key(max_tokens=2)}
    assert len(distinct) == 5
    other_default = cache_key("p", "/internal/v1/text", "ann", MODEL, {"prompt": "hi"}, {"max_tokens": 64})
    assert other_default != _key()  # a request without max_tokens gets the setting's: part of what it asked
    assert _key().startswith("p:result:") and "hi" not in _key() and "ann" not in _key()  # a digest, no text


def test_greedy_seeded_and_sampling_free_requests_are_deterministic() -> None:
    assert deterministic({"temperature": 0}) and deterministic({"temperature": 0.8, "seed": 1})
    assert deterministic({"input": ["a"]})  # embeddings
    assert not deterministic({"temperature": 0.8}) and not deterministic({"temperature": 1.0, "seed": None})


def test_cache_control_directives() -> None:
    def use(header: str | None) -> tuple[bool, bool]:
        parsed = CacheUse.from_header(header, lambda outcome: None)
        return parsed.lookup, parsed.store

    assert use(None) == use("") == use("max-age=60, private") == (True, True)
    assert use("no-cache") == use("NO-CACHE, max-age=0") == use("no-cache=foo") == (False, True)
    assert use("no-store") == use("no-cache, no-store") == (False, False)


def _usage(n: int) -> PromptUsage:
    return PromptUsage(prompt_tokens=n, total_tokens=n)


def _through(cache: ResultCache, key: str | None, n: int, use: CacheUse | None = None) -> tuple[int, bool, list[str]]:
    """(the answer's count, replayed?, outcomes reported) for a computation that answers `n`."""
    outcomes: list[str] = []
    use = use or CacheUse(report=outcomes.append)

    async def compute() -> PromptUsage:
        return _usage(n)

    answer, replayed = asyncio.run(cache.through(use, (lambda: key) if key else None, PromptUsage, compute))
    return answer.total_tokens, replayed, outcomes


def test_memory_cache_replays_expires_and_stays_within_its_bytes() -> None:
    cache = ResultCache(Settings(result_cache_ttl_s=0.3, result_cache_max_bytes=2000))
    assert _through(cache, "k", 1) == (1, False, ["miss"])
    assert _through(cache, "k", 2) == (1, True, ["hit"])  # the stored answer, not the new computation
    assert _through(cache, None, 3) == (3, False, ["bypass"])  # not cacheable
    time.sleep(0.35)
    assert _through(cache, "k", 4) == (4, False, ["miss"])
    for i in range(20):  # ~240 bytes each as counted: the oldest leave, the bound holds
        _through(cache, f"fill-{i}", i)
    assert _through(cache, "fill-19", 0)[1] and not _through(cache, "fill-0", 0)[1]


def test_entries_over_the_entry_limit_are_not_stored_and_ttl_zero_turns_it_off() -> None:
    small = ResultCache(Settings(result_cache_entry_max_bytes=10))
    assert [_through(small, "big", 5)[1] for _ in range(2)] == [False, False]
    off = ResultCache(Settings(result_cache_ttl_s=0))
    assert [_through(off, "k", 5)[2] for _ in range(2)] == [["bypass"], ["bypass"]]


def test_no_store_neither_reads_nor_writes() -> None:
    cache, outcomes = ResultCache(Settings()), []
    no_store = CacheUse(lookup=False, store=False, report=outcomes.append)
    assert _through(cache, "k", 1, no_store)[:2] == (1, False)
    assert _through(cache, "k", 2) == (2, False, ["miss"])  # nothing was written by the no-store request


def test_redis_cache_is_shared_between_gateways_and_expires() -> None:
    prefix = f"bl-test-{uuid.uuid4().hex}"
    settings = Settings(redis_url="redis://127.0.0.1:6379/0", redis_prefix=prefix, result_cache_ttl_s=1)
    key = cache_key(prefix, "/internal/v1/embeddings", "ann", MODEL, {"input": ["x"]}, {})
    one, two = ResultCache(settings), ResultCache(settings)  # two gateways
    try:
        assert _through(one, key, 7) == (7, False, ["miss"])
        assert _through(two, key, 8) == (7, True, ["hit"])
        ttl_ms = redis.Redis.from_url("redis://127.0.0.1:6379/0").pttl(key)
        assert 0 < ttl_ms <= 1000  # it expires with the setting
    finally:
        redis.Redis.from_url("redis://127.0.0.1:6379/0").delete(key)


def test_an_entry_that_does_not_read_is_a_miss() -> None:
    """An entry another release wrote in another shape (a shared Redis in a rolling upgrade)."""
    cache = ResultCache(Settings())
    asyncio.run(cache._backend.put("k", b'{"prompt_tokens": "not a number"}'))
    assert _through(cache, "k", 4) == (4, False, ["miss"])


def test_a_cache_that_is_down_costs_no_request() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = ResultCache(Settings(redis_url=f"redis://127.0.0.1:{port}/0"))
    assert _through(cache, "k", 1) == (1, False, ["miss"])
    assert _through(cache, "k", 2) == (2, False, ["miss"])
