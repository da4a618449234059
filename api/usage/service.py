"""Today's usage against quotas, for the caller (and, for admins, any user): what the console shows."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

from api.usage.schemas import DayUsage, KeyUsage, QuotaUsage, UsageHistory, UsageView
from bitinglip.auth.accounts import AccountStore
from bitinglip.auth.limits import Limiter, effective_limits
from bitinglip.auth.principal import Limits, Principal, QuotaKind
from bitinglip.auth.usage import Counter, seconds_to_reset, today
from bitinglip.config import Settings
from bitinglip.errors import PermissionDenied


class UsageService:
    def __init__(self, settings: Settings, accounts: AccountStore, limiter: Limiter) -> None:
        self.settings = settings
        self.accounts = accounts
        self.limiter = limiter

    async def usage(self, who: Principal, username: str | None) -> UsageView:
        if username is not None and username != who.username:
            if not who.is_admin:
                raise PermissionDenied("another user's usage is for admins only")
            user = await asyncio.to_thread(self.accounts.user, username)  # 404 when unknown
            stored = await asyncio.to_thread(self.accounts.stored_limits, username)
            who = Principal(user.username, user.role, user_limits=effective_limits(stored, self.settings))
        tokens, images = await asyncio.gather(
            self.limiter.counters(who, "tokens"), self.limiter.counters(who, "images")
        )
        return UsageView(
            username=who.username,
            day=date.fromisoformat(today()),
            resets_in_s=round(seconds_to_reset()),
            rate_limit_per_minute=who.user_limits.rate_limit_per_minute or self.settings.rate_limit_per_minute,
            tokens=QuotaUsage.from_counter(tokens[0]),
            images=QuotaUsage.from_counter(images[0]),
            key=self._key(who, {"tokens": tokens, "images": images}),
        )

    async def history(self, who: Principal, days: int, username: str | None) -> UsageHistory:
        """The last `days` UTC days, per user and per key: a user sees their own; an admin anyone's,
        by default everyone's (as the keys list)."""
        if username is not None and username != who.username:
            if not who.is_admin:
                raise PermissionDenied("another user's usage is for admins only", param="username")
            await asyncio.to_thread(self.accounts.user, username)  # 404 when unknown
        scope = username if username is not None else who.scope
        until = date.fromisoformat(today())
        since = until - timedelta(days=days - 1)
        rows = await self.limiter.history(since.isoformat(), scope)
        return UsageHistory(since=since, until=until, data=[DayUsage.model_validate(vars(r)) for r in rows])

    @staticmethod
    def _key(who: Principal, counters: dict[QuotaKind, list[Counter]]) -> KeyUsage | None:
        narrowed = who.key_limits
        if who.key_id is None or narrowed == Limits():
            return None

        def own(kind: QuotaKind) -> QuotaUsage | None:
            mine = counters[kind]
            return QuotaUsage.from_counter(mine[1]) if len(mine) > 1 and mine[1].limit is not None else None

        return KeyUsage(
            id=who.key_id,
            rate_limit_per_minute=narrowed.rate_limit_per_minute,
            tokens=own("tokens"),
            images=own("images"),
        )
