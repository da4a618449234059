"""Limits of a caller: per-minute rate limits with the `limits` library (moving window; in memory, or in
Redis when gateways are replicated, so every replica counts the same), and daily quotas through the
usage ledger in the gateway DB (bitinglip/auth/usage.py), which batch flow runs and model workers share.

Limits belong to the user: every key and login token of a user counts against the user's rate limit
and quotas together; a key with narrower limits of its own is also counted against those."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from bitinglip.auth.principal import Limits, Principal, QuotaKind
from bitinglip.auth.usage import Counter, DayUse, Hold, UsageLedger, quota_exceeded
from bitinglip.config import Settings
from bitinglip.db.session import Database
from bitinglip.db.tables import UserLimits
from bitinglip.errors import RateLimited

__all__ = ["Limiter", "QuotaKind", "RateState", "effective_limits"]


def effective_limits(stored: UserLimits | None, settings: Settings) -> Limits:
    """A user's limits: what an admin set for them, else the settings' defaults."""
    if stored is None:
        return Limits(settings.rate_limit_per_minute, settings.tokens_per_day, settings.images_per_day)
    return Limits(
        rate_limit_per_minute=_or(stored.rate_limit_per_minute, settings.rate_limit_per_minute),
        tokens_per_day=_or(stored.tokens_per_day, settings.tokens_per_day),
        images_per_day=_or(stored.images_per_day, settings.images_per_day),
    )


def _or(value: int | None, default: int | None) -> int | None:
    return default if value is None else value


@dataclass(frozen=True)
class RateState:
    limit: int
    remaining: int
    reset_after: float

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(max(1, round(self.reset_after))),
        }


class Limiter:
    """`db`: the gateway DB holding the usage ledger; without it only rate limits are available."""

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        self.settings = settings
        if settings.redis_url:
            uri = settings.redis_url.replace("redis://", "async+redis://", 1)
            self.storage = storage_from_string(
                uri, key_prefix=f"{settings.redis_prefix}:limits", implementation="redispy"
            )
        else:
            self.storage = storage_from_string("async+memory://")
        self.rates = MovingWindowRateLimiter(self.storage)
        self.ledger = UsageLedger(db) if db is not None else None

    # -- rate limits

    async def hit(self, who: Principal) -> RateState:
        """Counts one request against the user's per-minute limit (and the key's, when it narrows it);
        raises RateLimited when over. The headers report the tighter of the two."""
        per_minute = who.user_limits.rate_limit_per_minute or self.settings.rate_limit_per_minute
        state = await self._hit(per_minute, who.user_subject)
        key_limit = who.key_limits.rate_limit_per_minute
        if who.key_subject is not None and key_limit is not None:
            key_state = await self._hit(key_limit, who.key_subject)
            state = min(state, key_state, key=lambda s: s.remaining)
        return state

    async def _hit(self, per_minute: int, subject: str) -> RateState:
        item = RateLimitItemPerMinute(per_minute)
        allowed = await self.rates.hit(item, "rate", subject)
        stats = await self.rates.get_window_stats(item, "rate", subject)
        reset_after = stats.reset_time - time.time()
        if not allowed:
            raise RateLimited(
                f"rate limit of {per_minute} requests per minute reached", limit=per_minute, reset_after=reset_after
            )
        return RateState(per_minute, stats.remaining, reset_after)

    async def attempt(self, scope: str, key: str, per_minute: int) -> bool:
        """Counts one attempt of something throttled per key (logins per address); False when over."""
        return await self.rates.hit(RateLimitItemPerMinute(per_minute), scope, key)

    # -- daily quotas

    def _ledger(self) -> UsageLedger:
        if self.ledger is None:
            raise RuntimeError("this limiter has no usage ledger (no gateway DB)")
        return self.ledger

    async def reserve(self, who: Principal, kind: QuotaKind, amount: int, hold_id: str | None = None) -> Hold:
        """Holds `amount` of the caller's quota for work about to start; 429 when it does not fit."""
        ledger = self._ledger()
        return await asyncio.to_thread(lambda: ledger.reserve(kind, amount, who.quota_caps(kind), hold_id=hold_id))

    async def settle(self, hold: Hold | str, actual: int) -> int | None:
        hold_id = hold if isinstance(hold, str) else hold.id
        return await asyncio.to_thread(self._ledger().settle, hold_id, actual)

    async def check_quota(self, who: Principal, kind: QuotaKind) -> None:
        """Refuses work when a quota of the caller has nothing left today (work whose cost is not known
        up front, such as a batch, which is charged as it runs)."""
        ledger = self._ledger()
        counters = await asyncio.to_thread(ledger.counters, who.quota_caps(kind), kind)
        for counter in counters:
            if counter.remaining is not None and counter.remaining <= 0:
                raise quota_exceeded(kind, counter)

    async def counters(self, who: Principal, kind: QuotaKind) -> list[Counter]:
        return await asyncio.to_thread(self._ledger().counters, who.quota_caps(kind), kind)

    async def history(self, since: str, username: str | None) -> list[DayUse]:
        """Use per user and per key per day since `since`: one user's, or (None) everyone's."""
        return await asyncio.to_thread(self._ledger().history, since, username)

    async def reset(self) -> None:
        await self.storage.reset()  # type: ignore[misc]
