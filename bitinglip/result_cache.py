"""Replayed results of deterministic requests (greedy or seeded text, embeddings): the same user sending
the same request to the same installed model gets the stored answer without a worker being asked.

Keyed by a sha256 of the owner, the model's id, backend and installed files' hashes, the route and every
field that shapes the output, so one user's answers are never another's, and a reinstalled model starts
afresh. In memory per gateway (a byte-bounded TTL cache), or in Redis when the gateways share one
(`BITINGLIP_REDIS_URL`).
Requests opt out with `Cache-Control: no-cache` (answer afresh, store the answer) or `no-store` (neither).
Design and figures: docs/architecture.md §3.21."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from cachetools import TTLCache
from pydantic import BaseModel

from bitinglip import metrics
from bitinglip.config import Settings
from bitinglip.db.tables import ModelRecord

log = logging.getLogger(__name__)

Outcome = Literal["hit", "miss", "bypass"]
R = TypeVar("R", bound=BaseModel)

# payload fields that do not shape the output: the queue a request waits in, how long its model stays warm
_NOT_OUTPUT = frozenset({"priority", "keep_alive"})
# part of every key: entries written by a release that stored another shape are never read by this one
KEY_VERSION = 1
# a slow or black-holed Redis costs a request at most this much per read or write
REDIS_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class CacheUse:
    """What one request allows (from its Cache-Control header) and where it reports what happened."""

    lookup: bool = True
    store: bool = True
    report: Callable[[Outcome], None] = lambda outcome: None

    @classmethod
    def from_header(cls, cache_control: str | None, report: Callable[[Outcome], None]) -> CacheUse:
        directives = {d.strip().split("=", 1)[0].lower() for d in (cache_control or "").split(",")}
        no_store = "no-store" in directives
        return cls(lookup=not (no_store or "no-cache" in directives), store=not no_store, report=report)


DEFAULT_USE = CacheUse()


def deterministic(payload: dict[str, Any]) -> bool:
    """Greedy or seeded sampling; embeddings (no sampling fields) always are."""
    temperature = payload.get("temperature")
    return temperature is None or temperature == 0 or payload.get("seed") is not None


def cache_key(
    prefix: str, route: str, owner: str, model: ModelRecord, payload: dict[str, Any], defaults: dict[str, Any]
) -> str:
    """The installed files' hashes and the backend stand for the model: a reinstall that changed them misses.
    `defaults`: settings that shape an answer when the request leaves a field out (default_max_tokens)."""
    shaping = {k: v for k, v in payload.items() if k not in _NOT_OUTPUT}
    identity = [KEY_VERSION, route, owner, model.id, model.backend, model.files, shaping, defaults]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{prefix}:result:{digest}"


class _Backend(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes) -> None: ...


class _Memory:
    def __init__(self, max_bytes: int, ttl_s: float) -> None:
        # an entry's size counts its key and bookkeeping too, so many small answers stay within the bound
        self._entries: TTLCache[str, bytes] = TTLCache(maxsize=max_bytes, ttl=ttl_s, getsizeof=lambda v: len(v) + 200)

    async def get(self, key: str) -> bytes | None:
        return self._entries.get(key)

    async def put(self, key: str, value: bytes) -> None:
        self._entries[key] = value


class _Redis:
    def __init__(self, url: str, ttl_s: float) -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        self._ttl_ms = int(ttl_s * 1000)

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._redis.get(key)
        return value

    async def put(self, key: str, value: bytes) -> None:
        await self._redis.set(key, value, px=self._ttl_ms)


class ResultCache:
    """A cache failure (Redis gone) is logged and the request computed: it may save work, never fail a request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.result_cache_ttl_s > 0
        self._backend: _Backend = (
            _Redis(settings.redis_url, settings.result_cache_ttl_s)
            if settings.redis_url
            else _Memory(settings.result_cache_max_bytes, settings.result_cache_ttl_s)
        )

    async def through(
        self,
        use: CacheUse,
        key: Callable[[], str] | None,
        answer: type[R],
        compute: Callable[[], Awaitable[R]],
    ) -> tuple[R, bool]:
        """`compute()`'s result, or a stored one; and whether it was stored. `key` None: not cacheable."""
        route = answer.__name__
        if key is None or not self.enabled or not (use.lookup or use.store):
            return await self._computed(use, route, "bypass", compute), False
        name = key()
        if use.lookup and (replayed := await self._get(name, answer)) is not None:
            use.report("hit")
            metrics.RESULT_CACHE.labels(route, "hit").inc()
            return replayed, True
        result = await self._computed(use, route, "miss" if use.lookup else "bypass", compute)
        if use.store:
            value = result.model_dump_json().encode()
            if len(value) <= self.settings.result_cache_entry_max_bytes:
                await self._put(name, value)
        return result, False

    @staticmethod
    async def _computed(use: CacheUse, route: str, outcome: Outcome, compute: Callable[[], Awaitable[R]]) -> R:
        result = await compute()
        use.report(outcome)
        metrics.RESULT_CACHE.labels(route, outcome).inc()
        return result

    async def _get(self, key: str, answer: type[R]) -> R | None:
        try:
            stored = await self._backend.get(key)
            return None if stored is None else answer.model_validate_json(stored)
        except Exception as exc:  # a backend failure or an entry that does not read: "not cached"
            log.warning("result cache read failed: %r", exc)
            return None

    async def _put(self, key: str, value: bytes) -> None:
        try:
            await self._backend.put(key, value)
        except Exception as exc:  # an answer not stored is still the answer
            log.warning("result cache write failed: %r", exc)
