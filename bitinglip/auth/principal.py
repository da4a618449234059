"""Who is calling, with the limits that apply to them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    username: str
    role: str  # "admin" | "user"
    key_id: str | None = None  # None: a login token (or open access)
    rate_limit_per_minute: int | None = None  # per-key overrides of the settings
    tokens_per_day: int | None = None
    images_per_day: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str | None:
        """Owner filter for reads: admins see everything, users their own."""
        return None if self.is_admin else self.username

    @property
    def limit_key(self) -> str:
        """Limits count per key; login tokens count per user."""
        return f"key:{self.key_id}" if self.key_id else f"user:{self.username}"
