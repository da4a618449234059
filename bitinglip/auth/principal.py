"""Who is calling, with the limits that apply to them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

QuotaKind = Literal["tokens", "images"]
Cap = tuple[str, int | None]  # (ledger subject, daily limit or None for none)


@dataclass(frozen=True)
class Limits:
    """A rate limit and daily quotas; None: no limit of that kind (at this level)."""

    rate_limit_per_minute: int | None = None
    tokens_per_day: int | None = None
    images_per_day: int | None = None

    def quota(self, kind: QuotaKind) -> int | None:
        return self.tokens_per_day if kind == "tokens" else self.images_per_day


@dataclass(frozen=True)
class Principal:
    username: str
    role: str  # "admin" | "user"
    key_id: str | None = None  # None: a login token (or open access)
    # the user's own limits (set by an admin, else the settings' defaults): every key and login token
    # of the user counts against them together
    user_limits: Limits = field(default_factory=Limits)
    # a key's narrower limits, counted for that key alone on top of the user's: a key can only narrow
    key_limits: Limits = field(default_factory=Limits)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str | None:
        """Owner filter for reads: admins see everything, users their own."""
        return None if self.is_admin else self.username

    @property
    def user_subject(self) -> str:
        return f"user:{self.username}"

    @property
    def key_subject(self) -> str | None:
        return f"key:{self.key_id}" if self.key_id else None

    def quota_caps(self, kind: QuotaKind) -> list[Cap]:
        """The ledger counters a request of this caller counts against: always the user's, and the
        key's own when it came with a key (limited when the key narrows that quota, else only counted,
        so usage per key per day is known). The user's comes first (the lock order)."""
        caps: list[Cap] = [(self.user_subject, self.user_limits.quota(kind))]
        if self.key_subject is not None:
            caps.append((self.key_subject, self.key_limits.quota(kind)))
        return caps
