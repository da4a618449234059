"""Users and API keys in the gateway DB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from bitinglip.auth.credentials import (
    ParsedKey,
    hash_password,
    new_api_key,
    parse_api_key,
    secret_hash,
    secret_matches,
    verify_password,
)
from bitinglip.db.session import Database
from bitinglip.db.tables import ApiKey, User
from bitinglip.errors import Conflict, InvalidRequest, NotFound
from bitinglip.home_secrets import PLACEHOLDERS

ROLES = ("admin", "user")
_TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is for humans: no write on every request


def _now() -> datetime:
    return datetime.now(UTC)


class AccountStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- users

    def ensure_admin(self, username: str, password: str, api_key: str | None) -> None:
        """The first admin, from settings; idempotent across restarts, and across replicas starting
        at the same moment (the loser of the insert race finds the row there)."""
        parsed = parse_api_key(api_key) if api_key is not None else None
        if api_key is not None and parsed is None:
            raise InvalidRequest("BITINGLIP_ADMIN_API_KEY must look like bl-<12 hex>-<secret>")
        try:
            with self.db.session() as s:
                admin = s.get(User, username)
                if admin is None:
                    s.add(User(username=username, password_hash=hash_password(password), role="admin"))
                elif any(verify_password(admin.password_hash, p) for p in PLACEHOLDERS):
                    admin.password_hash = hash_password(password)  # a first-wave home: rotate the placeholder
        except IntegrityError:
            pass
        if parsed is None:
            return
        try:
            with self.db.session() as s:
                if s.get(ApiKey, parsed.key_id) is None:
                    s.add(
                        ApiKey(
                            id=parsed.key_id,
                            username=username,
                            name="bootstrap",
                            secret_hash=secret_hash(parsed.secret),
                        )
                    )
        except IntegrityError:
            pass

    def create_user(self, username: str, password: str | None, role: str) -> User:
        if role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")
        user = User(username=username, password_hash=hash_password(password) if password else None, role=role)
        with self.db.session() as s:
            if s.get(User, username) is not None:
                raise Conflict(f"user {username!r} exists", param="username")
            s.add(user)
        return user

    def users(self) -> list[User]:
        with self.db.session() as s:
            return list(s.scalars(select(User).order_by(User.username)))

    def user(self, username: str) -> User:
        with self.db.session() as s:
            user = s.get(User, username)
        if user is None:
            raise NotFound(f"user {username!r} not found", param="username")
        return user

    def set_disabled(self, username: str, disabled: bool) -> User:
        self.user(username)
        with self.db.session() as s:
            s.execute(update(User).where(User.username == username).values(disabled=disabled))
        return self.user(username)

    def check_password(self, username: str, password: str) -> User | None:
        with self.db.session() as s:
            user = s.get(User, username)
        if user is None or user.disabled:
            verify_password(None, password)
            return None
        return user if verify_password(user.password_hash, password) else None

    # -- API keys

    def create_key(
        self,
        username: str,
        name: str,
        *,
        rate_limit_per_minute: int | None = None,
        tokens_per_day: int | None = None,
        images_per_day: int | None = None,
    ) -> tuple[str, ApiKey]:
        """Returns the key itself (shown once) and its record."""
        self.user(username)
        token, parsed = new_api_key()
        record = ApiKey(
            id=parsed.key_id,
            username=username,
            name=name,
            secret_hash=secret_hash(parsed.secret),
            rate_limit_per_minute=rate_limit_per_minute,
            tokens_per_day=tokens_per_day,
            images_per_day=images_per_day,
            created_at=_now(),
        )
        with self.db.session() as s:
            s.add(record)
        return token, record

    def keys(self, username: str | None) -> list[ApiKey]:
        query = select(ApiKey).order_by(ApiKey.created_at.desc())
        if username is not None:
            query = query.where(ApiKey.username == username)
        with self.db.session() as s:
            return list(s.scalars(query))

    def revoke_key(self, key_id: str, username: str | None) -> ApiKey:
        """`username` scopes it: another user's key is reported missing."""
        with self.db.session() as s:
            record = s.get(ApiKey, key_id)
            if record is None or (username is not None and record.username != username):
                raise NotFound(f"API key {key_id!r} not found", param="key_id")
            if record.revoked_at is None:
                record.revoked_at = _now()
            return record

    def lookup_key(self, parsed: ParsedKey) -> tuple[ApiKey, User] | None:
        with self.db.session() as s:
            record = s.get(ApiKey, parsed.key_id)
            user = s.get(User, record.username) if record is not None else None
            matches = secret_matches(record.secret_hash if record else "0" * 64, parsed.secret)
            if record is None or user is None or not matches or record.revoked_at is not None or user.disabled:
                return None
            if record.last_used_at is None or _now() - record.last_used_at > _TOUCH_EVERY:
                record.last_used_at = _now()
            return record, user
