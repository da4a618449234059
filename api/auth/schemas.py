from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from bitinglip.auth.principal import Limits
from bitinglip.db.tables import ApiKey, User, UserLimits

USERNAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
INT32 = 2**31 - 1  # the DB columns are 32-bit on PostgreSQL


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class Me(BaseModel):
    username: str
    role: str
    key_id: str | None


class KeyCreateRequest(BaseModel):
    name: str = Field(default="default", min_length=1, max_length=100)
    username: str | None = Field(default=None, pattern=USERNAME, description="Admins: create it for this user.")
    rate_limit_per_minute: int | None = Field(
        default=None, ge=1, le=INT32, description="Admins only. Narrows the user's own limit for this key."
    )
    tokens_per_day: int | None = Field(
        default=None, ge=1, le=INT32, description="Admins only. Narrows the user's own quota for this key."
    )
    images_per_day: int | None = Field(
        default=None, ge=1, le=INT32, description="Admins only. Narrows the user's own quota for this key."
    )


class KeyView(BaseModel):
    id: str
    name: str
    username: str
    rate_limit_per_minute: int | None
    tokens_per_day: int | None
    images_per_day: int | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_record(cls, r: ApiKey) -> KeyView:
        return cls(
            id=r.id,
            name=r.name,
            username=r.username,
            rate_limit_per_minute=r.rate_limit_per_minute,
            tokens_per_day=r.tokens_per_day,
            images_per_day=r.images_per_day,
            created_at=r.created_at,
            last_used_at=r.last_used_at,
            revoked_at=r.revoked_at,
        )


class CreatedKey(KeyView):
    key: str = Field(description="The key itself: shown this once, stored only as a hash.")


class UserCreateRequest(BaseModel):
    username: str = Field(pattern=USERNAME)
    password: str | None = Field(default=None, min_length=12, max_length=1024)
    role: Literal["admin", "user"] = "user"


class UserLimitsBody(BaseModel):
    """A user's own limits, shared by all their keys and login tokens; null: the settings' default."""

    rate_limit_per_minute: int | None = Field(default=None, ge=1, le=INT32)
    tokens_per_day: int | None = Field(default=None, ge=1, le=INT32)
    images_per_day: int | None = Field(default=None, ge=1, le=INT32)

    @classmethod
    def from_record(cls, r: UserLimits | None) -> UserLimitsBody:
        if r is None:
            return cls()
        return cls(
            rate_limit_per_minute=r.rate_limit_per_minute,
            tokens_per_day=r.tokens_per_day,
            images_per_day=r.images_per_day,
        )

    def as_limits(self) -> Limits:
        return Limits(self.rate_limit_per_minute, self.tokens_per_day, self.images_per_day)


class UserUpdateRequest(BaseModel):
    disabled: bool | None = Field(
        default=None, description="Disable (or enable) the user; the last enabled admin cannot be disabled (409)."
    )
    role: Literal["admin", "user"] | None = Field(
        default=None, description="Change the user's role; the last enabled admin cannot be demoted (409)."
    )
    limits: UserLimitsBody | None = Field(
        default=None, description="Replace the user's limits (every field; a null field is the settings' default)."
    )


class UserView(BaseModel):
    username: str
    role: str
    disabled: bool
    created_at: datetime
    limits: UserLimitsBody = Field(description="Set by an admin; null fields follow the settings' defaults.")

    @classmethod
    def from_record(cls, u: User, limits: UserLimits | None = None) -> UserView:
        return cls(
            username=u.username,
            role=u.role,
            disabled=u.disabled,
            created_at=u.created_at,
            limits=UserLimitsBody.from_record(limits),
        )
