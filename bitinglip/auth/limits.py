"""Per-key rate limits (moving window per minute) and daily quotas (tokens, images) with the `limits`
library: in memory by default, in Redis when gateways are replicated, so every replica counts the same."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.storage import storage_from_string

from bitinglip.auth.principal import Principal
from bitinglip.config import Settings
from bitinglip.errors import RateLimited

QuotaKind = Literal["tokens", "images"]


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
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if settings.redis_url:
            uri = settings.redis_url.replace("redis://", "async+redis://", 1)
            self.storage = storage_from_string(
                uri, key_prefix=f"{settings.redis_prefix}:limits", implementation="redispy"
            )
        else:
            self.storage = storage_from_string("async+memory://")
        self.rates = MovingWindowRateLimiter(self.storage)
        self.quotas = FixedWindowRateLimiter(self.storage)

    async def hit(self, who: Principal) -> RateState:
        """Counts one request; raises RateLimited when over the key's per-minute limit."""
        item = RateLimitItemPerMinute(who.rate_limit_per_minute or self.settings.rate_limit_per_minute)
        allowed = await self.rates.hit(item, "rate", who.limit_key)
        stats = await self.rates.get_window_stats(item, "rate", who.limit_key)
        reset_after = stats.reset_time - time.time()
        if not allowed:
            raise RateLimited(
                f"rate limit of {item.amount} requests per minute reached",
                limit=item.amount,
                reset_after=reset_after,
            )
        return RateState(item.amount, stats.remaining, reset_after)

    async def attempt(self, scope: str, key: str, per_minute: int) -> bool:
        """Counts one attempt of something throttled per key (logins per username); False when over."""
        return await self.rates.hit(RateLimitItemPerMinute(per_minute), scope, key)

    def _quota(self, who: Principal, kind: QuotaKind) -> RateLimitItem | None:
        amount = (
            who.tokens_per_day or self.settings.tokens_per_day
            if kind == "tokens"
            else who.images_per_day or self.settings.images_per_day
        )
        return None if amount is None else RateLimitItemPerDay(amount)

    async def check_quota(self, who: Principal, kind: QuotaKind) -> None:
        """Refuses a request once the day's quota is used up (the last request may overshoot it)."""
        item = self._quota(who, kind)
        if item is None:
            return
        stats = await self.quotas.get_window_stats(item, kind, who.limit_key)
        if stats.remaining <= 0:
            raise RateLimited(
                f"daily {kind} quota of {item.amount} used up",
                limit=item.amount,
                reset_after=stats.reset_time - time.time(),
                code=f"{kind}_quota_exceeded",
            )

    async def charge(self, who: Principal, kind: QuotaKind, amount: int) -> None:
        item = self._quota(who, kind)
        if item is None or amount <= 0:
            return
        stats = await self.quotas.get_window_stats(item, kind, who.limit_key)
        if stats.remaining > 0:
            await self.quotas.hit(item, kind, who.limit_key, cost=min(amount, stats.remaining))

    async def reset(self) -> None:
        await self.storage.reset()  # type: ignore[misc]
