"""Today's usage against quotas, for the caller (and, for admins, any user): what the console shows."""

from __future__ import annotations

import asyncio
from datetime import date

from api.usage.schemas import KeyUsage, QuotaUsage, UsageView
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

    @staticmethod
    def _key(who: Principal, counters: dict[QuotaKind, list[Counter]]) -> KeyUsage | None:
        narrowed = who.key_limits
        if who.key_id is None or narrowed == Limits():
            return None

        def own(kind: QuotaKind) -> QuotaUsage | None:
            mine = counters[kind]
            return QuotaUsage.from_counter(mine[1]) if len(mine) > 1 else None

        return KeyUsage(
            id=who.key_id,
            rate_limit_per_minute=narrowed.rate_limit_per_minute,
            tokens=own("tokens"),
            images=own("images"),
        )
