from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field

from bitinglip.auth.usage import Counter


class QuotaUsage(BaseModel):
    limit: int | None = Field(description="The daily quota; null: none.")
    used: int = Field(description="Settled today.")
    reserved: int = Field(description="Held by work in flight (settled at its real count when it ends).")
    remaining: int | None = Field(description="What new work may still reserve today; null: no quota.")

    @classmethod
    def from_counter(cls, c: Counter) -> QuotaUsage:
        return cls(limit=c.limit, used=c.used, reserved=c.reserved, remaining=c.remaining)


class KeyUsage(BaseModel):
    """The calling key's own, narrower limits (counted for this key alone), when it has any."""

    id: str
    rate_limit_per_minute: int | None
    tokens: QuotaUsage | None
    images: QuotaUsage | None


class UsageView(BaseModel):
    username: str
    day: date = Field(description="The UTC day the quotas count.")
    resets_in_s: int = Field(description="Seconds until the quotas reset (UTC midnight).")
    rate_limit_per_minute: int
    tokens: QuotaUsage
    images: QuotaUsage
    key: KeyUsage | None = None


class DayUsage(BaseModel):
    day: date = Field(description="A UTC day.")
    username: str
    key_id: str | None = Field(description="null: the user's whole use that day, every key and sign-in together.")
    key_name: str | None = Field(description="The key's name, for a key's row.")
    tokens: int = Field(description="Tokens settled that day.")
    images: int = Field(description="Images settled that day.")


class UsageHistory(BaseModel):
    since: date = Field(description="The first UTC day counted.")
    until: date = Field(description="The last: today (UTC), in flight work not counted yet.")
    data: list[DayUsage] = Field(
        description="Newest day first; per day, each user's total row, then a row per key they used. "
        "Days and keys without use are left out."
    )
