"""Authentication and account management. Every credential check and account change is audited."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from api.auth.schemas import (
    CreatedKey,
    KeyCreateRequest,
    KeyView,
    Me,
    TokenResponse,
    UserCreateRequest,
    UserUpdateRequest,
    UserView,
)
from bitinglip.auth.accounts import AccountStore
from bitinglip.auth.audit import audit
from bitinglip.auth.credential_cache import CredentialCache
from bitinglip.auth.credentials import ParsedKey, issue_token, parse_api_key, read_token, secret_hash
from bitinglip.auth.limits import Limiter, RateState, effective_limits
from bitinglip.auth.principal import Limits, Principal
from bitinglip.config import Settings
from bitinglip.errors import BitingLipError, PermissionDenied, RateLimited, Unauthorized


class AuthService:
    def __init__(self, settings: Settings, accounts: AccountStore, limiter: Limiter) -> None:
        self.settings = settings
        self.accounts = accounts
        self.limiter = limiter
        self.verified: CredentialCache[Principal] = CredentialCache(
            lambda: asyncio.to_thread(accounts.epoch), settings.credential_recheck_s
        )

    def bootstrap(self) -> None:
        key = self.settings.admin_api_key.get_secret_value() if self.settings.admin_api_key else None
        self.accounts.ensure_admin(self.settings.admin_username, self.settings.secret("admin_password"), key)

    # -- who is calling

    async def authenticate(self, authorization: str | None, path: str) -> tuple[Principal, RateState]:
        try:
            principal = await self._identify(authorization)
        except Unauthorized as exc:
            audit("request_denied", actor=None, outcome="unauthenticated", path=path, reason=exc.message)
            raise
        try:
            return principal, await self.limiter.hit(principal)
        except RateLimited:
            audit("request_denied", actor=principal.username, outcome="rate_limited", path=path)
            raise

    async def identify(self, authorization: str | None) -> Principal:
        """Who these credentials are now, without counting a request (a long-lived stream checking
        that its credentials still hold is not a new request)."""
        return await self._identify(authorization)

    async def _identify(self, authorization: str | None) -> Principal:
        if self.settings.open_access:
            return Principal(self.settings.admin_username, "admin", user_limits=effective_limits(None, self.settings))
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing credentials: send Authorization: Bearer <API key or login token>")
        token = token.strip()
        if (parsed := parse_api_key(token)) is not None:
            # keyed by the whole key: a wrong secret for a known key id is never answered from memory
            key = await self.verified.get(("key", parsed.key_id, secret_hash(parsed.secret)), lambda: self._key(parsed))
            if key is None:
                raise Unauthorized("invalid, revoked or disabled API key")
            return key
        claims = read_token(token, self.settings.secret("jwt_secret"))
        username = str(claims["sub"])
        user = await self.verified.get(("user", username), lambda: self._user(username))
        if user is None:
            raise Unauthorized("invalid credentials")
        return user

    async def _key(self, parsed: ParsedKey) -> Principal | None:
        found = await asyncio.to_thread(self.accounts.lookup_key, parsed)
        if found is None:
            return None
        key, user, stored = found
        return Principal(
            user.username,
            user.role,
            key.id,
            user_limits=effective_limits(stored, self.settings),
            key_limits=Limits(key.rate_limit_per_minute, key.tokens_per_day, key.images_per_day),
        )

    async def _user(self, username: str) -> Principal | None:
        """A login token's user; None when unknown."""
        account = await asyncio.to_thread(self.accounts.lookup_user, username)
        if account is None:
            return None
        user, stored = account
        if user.disabled:
            raise Unauthorized("this user is disabled")
        return Principal(user.username, user.role, user_limits=effective_limits(stored, self.settings))

    def require_admin(self, who: Principal, action: str) -> None:
        if not who.is_admin:
            audit("request_denied", actor=who.username, outcome="forbidden", action=action)
            raise PermissionDenied(f"{action} is for admins only")

    # -- login and keys

    async def login(self, username: str, password: str, client: str) -> TokenResponse:
        """Throttled per client address and per address + user name, never per user name alone: a
        stranger's failed attempts cannot lock a user out from their own address."""
        per_minute = self.settings.login_attempts_per_minute
        for scope, key in (("login-address", client), ("login-address-user", f"{client}|{username}")):
            if not await self.limiter.attempt(scope, key, per_minute):
                audit("login", actor=username, outcome="throttled", client=client, by=scope)
                raise RateLimited("too many login attempts; wait a minute", limit=per_minute, reset_after=60)
        user = await asyncio.to_thread(self.accounts.check_password, username, password)
        if user is None:
            audit("login", actor=username, outcome="failed")
            raise Unauthorized("wrong username or password")
        audit("login", actor=username)
        secret = self.settings.secret("jwt_secret")
        token = issue_token(user.username, user.role, secret, self.settings.jwt_ttl_s)
        return TokenResponse(access_token=token, expires_in=self.settings.jwt_ttl_s)

    def me(self, who: Principal) -> Me:
        return Me(username=who.username, role=who.role, key_id=who.key_id)

    async def create_key(self, who: Principal, request: KeyCreateRequest) -> CreatedKey:
        owner = request.username or who.username
        limits = {
            "rate_limit_per_minute": request.rate_limit_per_minute,
            "tokens_per_day": request.tokens_per_day,
            "images_per_day": request.images_per_day,
        }
        if owner != who.username:
            self.require_admin(who, "creating keys for other users")
        if any(v is not None for v in limits.values()):
            self.require_admin(who, "setting per-key limits")
        cap = self.settings.max_keys_per_user
        token, record = await asyncio.to_thread(
            lambda: self.accounts.create_key(owner, request.name, **limits, max_live_keys=cap)
        )
        audit("api_key_created", actor=who.username, key_id=record.id, for_user=owner)
        return CreatedKey(**KeyView.from_record(record).model_dump(), key=token)

    async def list_keys(self, who: Principal, username: str | None) -> list[KeyView]:
        if username is not None and username != who.username:
            self.require_admin(who, "listing other users' keys")
        scope = username if username is not None else who.scope
        return [KeyView.from_record(k) for k in await asyncio.to_thread(self.accounts.keys, scope)]

    async def revoke_key(self, who: Principal, key_id: str) -> KeyView:
        try:
            record = await asyncio.to_thread(self.accounts.revoke_key, key_id, who.scope)
        finally:  # even when the caller left meanwhile: here at once, other replicas at their next epoch read
            self.verified.clear()
        audit("api_key_revoked", actor=who.username, key_id=key_id, for_user=record.username)
        return KeyView.from_record(record)

    # -- users (admin)

    async def create_user(self, who: Principal, request: UserCreateRequest) -> UserView:
        self.require_admin(who, "creating users")
        user = await asyncio.to_thread(self.accounts.create_user, request.username, request.password, request.role)
        audit("user_created", actor=who.username, user=user.username, role=user.role)
        return UserView.from_record(user)

    async def users(self, who: Principal) -> list[UserView]:
        self.require_admin(who, "listing users")
        users = await asyncio.to_thread(self.accounts.users)
        limits = await asyncio.to_thread(self.accounts.stored_limits_of, [u.username for u in users])
        return [UserView.from_record(u, limits.get(u.username)) for u in users]

    async def update_user(self, who: Principal, username: str, request: UserUpdateRequest) -> UserView:
        """Disable or enable a user, change their role, and set the limits all their keys and login
        tokens share. A change holds from the user's next request to this gateway, and within
        BITINGLIP_CREDENTIAL_RECHECK_S on other replicas; the last enabled admin can be neither demoted
        nor disabled (409)."""
        self.require_admin(who, "changing users")
        try:
            user = await asyncio.to_thread(self.accounts.user, username)
            if request.role is not None and request.role != user.role:
                was = user.role
                with _audited("user_role_changed", who, user=username, role=request.role, was=was):
                    user = await asyncio.to_thread(self.accounts.set_role, username, request.role)
            if request.disabled is not None:
                event = "user_disabled" if request.disabled else "user_enabled"
                with _audited(event, who, user=username):
                    user = await asyncio.to_thread(self.accounts.set_disabled, username, request.disabled)
            if request.limits is not None:
                new = request.limits.as_limits()
                await asyncio.to_thread(self.accounts.set_limits, username, new, who.username)
                audit("user_limits_set", actor=who.username, user=username, **vars(new))
        finally:
            self.verified.clear()  # whatever went through holds here at once; other replicas at their next epoch read
        stored = await asyncio.to_thread(self.accounts.stored_limits, username)
        return UserView.from_record(user, stored)


@contextmanager
def _audited(event: str, who: Principal, **fields: Any) -> Iterator[None]:
    """One audit line for an account change: `ok` when it went through, `refused` with the reason when not."""
    try:
        yield
    except BitingLipError as exc:
        audit(event, actor=who.username, outcome="refused", reason=exc.message, **fields)
        raise
    audit(event, actor=who.username, **fields)
