"""Verified credentials, kept briefly in each gateway so that a request with a known API key or login
token costs no database round trip (the lookup was the largest single cost of an authenticated request:
an ORM session on a thread, every time).

What keeps it safe:
- An entry is keyed by the whole credential (a key's id *and* the SHA-256 of its secret; a token's
  user), and only credentials the database accepted are kept: a wrong secret for a known key id, a
  revoked key or an unknown user is looked up, and refused, every time.
- Every change that can withdraw or narrow a credential raises the database's credential epoch in the
  same transaction (`AccountStore`). Each gateway reads the epoch at most every `recheck_s` seconds,
  only while requests come, and drops everything when it moved: a key revoked on one replica stops
  working on every replica within `recheck_s`. The replica that made the change drops its entries at
  once (`clear`).
- Nothing lives longer than `ttl_s` (60 s, the interval at which a key's `last_used_at` is written),
  whatever the epoch says: a change made straight in the database, past `AccountStore`, holds within it.
- A lookup that started before a drop does not refill the cache with what it read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache

T = TypeVar("T")

ENTRY_TTL_S = 60.0
MAX_ENTRIES = 10_000


class CredentialCache(Generic[T]):
    """`read_epoch`: the database's credential epoch. `recheck_s` 0: no cache (every request reads)."""

    def __init__(
        self,
        read_epoch: Callable[[], Awaitable[int]],
        recheck_s: float,
        ttl_s: float = ENTRY_TTL_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_epoch = read_epoch
        self.recheck_s = recheck_s
        self._clock = clock
        self._entries: TTLCache[Hashable, T] = TTLCache(maxsize=max_entries, ttl=ttl_s, timer=clock)
        self._epoch: int | None = None
        self._fresh_until = float("-inf")
        self._checking: asyncio.Task[None] | None = None
        self._generation = 0  # raised by every drop: a lookup begun before one must not refill

    async def get(self, key: Hashable, load: Callable[[], Awaitable[T | None]]) -> T | None:
        """The credential's value from the cache, else from `load` (kept only when not None)."""
        if self.recheck_s <= 0:
            return await load()
        await self._current()
        found = self._entries.get(key)
        if found is not None:
            return found
        generation = self._generation
        value = await load()
        if value is not None and generation == self._generation:
            self._entries[key] = value
        return value

    def clear(self) -> None:
        """Drops everything, and whatever lookups in flight would have put back."""
        self._entries.clear()
        self._generation += 1

    async def _current(self) -> None:
        """Reads the epoch when the last read is older than `recheck_s`; concurrent requests share one read."""
        if self._clock() < self._fresh_until:
            return
        if self._checking is None:
            self._checking = asyncio.get_running_loop().create_task(self._check())
            # its failure is every waiter's; if all of them left, it is still taken here, not logged as lost
            self._checking.add_done_callback(lambda task: task.cancelled() or task.exception())
        await asyncio.shield(self._checking)

    async def _check(self) -> None:
        try:
            started = self._clock()
            epoch = await self._read_epoch()
            if epoch != self._epoch:
                self._epoch = epoch
                self.clear()
            self._fresh_until = started + self.recheck_s
        finally:
            self._checking = None
