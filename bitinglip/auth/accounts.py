"""Users and API keys in the gateway DB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Table, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bitinglip.auth.credentials import (
    ParsedKey,
    dummy_password_hash,
    hash_password,
    new_api_key,
    parse_api_key,
    secret_hash,
    secret_matches,
    verify_password,
)
from bitinglip.auth.principal import Limits
from bitinglip.db.session import Database, dialect_of, per_dialect
from bitinglip.db.tables import ApiKey, CredentialEpoch, User, UserLimits
from bitinglip.errors import Conflict, InvalidRequest, NotFound

ROLES = ("admin", "user")
_TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is for humans: no write on every request


def _now() -> datetime:
    return datetime.now(UTC)


def _leaves_an_admin(s: Session, username: str) -> ColumnElement[bool]:
    """A condition on `username`'s row: they are not an enabled admin, or another enabled admin stays.
    The admins' rows are locked first (PostgreSQL; SQLite runs one writer at a time), so two admins
    demoting or disabling each other at once cannot both get through."""
    s.execute(select(User.username).where(User.role == "admin").with_for_update())
    others = (
        select(func.count())
        .select_from(User)
        .where(User.role == "admin", User.disabled.is_(False), User.username != username)
        .scalar_subquery()
    )
    return or_(User.role != "admin", User.disabled.is_(True), others > 0)


# an upsert, so a database whose row is missing (made by create_all) starts it, once however many
# changes come together
_EPOCHS = cast(Table, CredentialEpoch.__table__)
_RAISE_EPOCH = per_dialect(
    lambda dialect: (
        dialect.insert(_EPOCHS)
        .values(id=1, epoch=1)
        .on_conflict_do_update(index_elements=["id"], set_={"epoch": _EPOCHS.c.epoch + 1})
    )
)


def _withdraws_credentials(s: Session) -> None:
    """Raises the credential epoch in this transaction: every gateway replica drops the credentials it
    keeps in memory (bitinglip/auth/credential_cache.py) once it commits. Called by every change that
    can withdraw or narrow what a key or login token may do."""
    s.execute(_RAISE_EPOCH[dialect_of(s)])


def _last_admin(username: str) -> Conflict:
    return Conflict(f"{username!r} is the last enabled admin; make another user an admin first", param="username")


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
                elif not verify_password(admin.password_hash, password):
                    # The configured password is the first admin's (rotation = a new value + restart);
                    # this also replaces a first-wave placeholder.
                    admin.password_hash = hash_password(password)
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
        """Disabling the last enabled admin is a conflict: the platform would have nobody to run it."""
        self.user(username)
        with self.db.session() as s:
            statement = update(User).where(User.username == username)
            if disabled:
                statement = statement.where(_leaves_an_admin(s, username))
            if cast("CursorResult[Any]", s.execute(statement.values(disabled=disabled))).rowcount == 0:
                raise _last_admin(username)
            _withdraws_credentials(s)
        return self.user(username)

    def set_role(self, username: str, role: str) -> User:
        """Demoting the last enabled admin is a conflict, as disabling them is."""
        if role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")
        self.user(username)
        with self.db.session() as s:
            statement = update(User).where(User.username == username)
            if role != "admin":
                statement = statement.where(_leaves_an_admin(s, username))
            if cast("CursorResult[Any]", s.execute(statement.values(role=role))).rowcount == 0:
                raise _last_admin(username)
            _withdraws_credentials(s)
        return self.user(username)

    def check_password(self, username: str, password: str) -> User | None:
        """The user, when the password is theirs and they may log in. Unknown users, disabled ones and
        those without a password cost one real argon2 verification too (against a dummy hash), so
        neither the answer nor its timing tells which users exist."""
        with self.db.session() as s:
            user = s.get(User, username)
        stored = user.password_hash if user is not None and user.password_hash else None
        matches = verify_password(stored or dummy_password_hash(), password)
        if user is None or stored is None or user.disabled or not matches:
            return None
        return user

    # -- limits an admin sets per user

    def stored_limits(self, username: str) -> UserLimits | None:
        with self.db.session() as s:
            return s.get(UserLimits, username)

    def stored_limits_of(self, usernames: list[str]) -> dict[str, UserLimits]:
        if not usernames:
            return {}
        with self.db.session() as s:
            rows = s.scalars(select(UserLimits).where(UserLimits.username.in_(usernames)))
            return {row.username: row for row in rows}

    def set_limits(self, username: str, limits: Limits, by: str) -> UserLimits:
        """Replaces the user's limits (a None field: the settings' default)."""
        self.user(username)
        with self.db.session() as s:
            row = s.get(UserLimits, username)
            if row is None:
                row = UserLimits(username=username)
                s.add(row)
            row.rate_limit_per_minute = limits.rate_limit_per_minute
            row.tokens_per_day = limits.tokens_per_day
            row.images_per_day = limits.images_per_day
            row.updated_by = by
            _withdraws_credentials(s)
        return row

    # -- API keys

    def create_key(
        self,
        username: str,
        name: str,
        *,
        rate_limit_per_minute: int | None = None,
        tokens_per_day: int | None = None,
        images_per_day: int | None = None,
        max_live_keys: int | None = None,
    ) -> tuple[str, ApiKey]:
        """Returns the key itself (shown once) and its record. `max_live_keys`: 409 when the user holds
        that many unrevoked keys already (keys cannot be minted without end)."""
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
            if s.get_bind().dialect.name == "postgresql":  # one key creation per user at a time
                s.execute(select(User.username).where(User.username == username).with_for_update())
            s.add(record)
            s.flush()  # SQLite: the insert takes the write lock first, so the count below is current
            if max_live_keys is not None and self._live_keys(s, username) > max_live_keys:
                raise Conflict(
                    f"user {username!r} already holds {max_live_keys} live API keys; revoke one first",
                    param="username",
                    code="too_many_keys",
                )
        return token, record

    @staticmethod
    def _live_keys(s: Session, username: str) -> int:
        query = select(func.count()).select_from(ApiKey).where(ApiKey.username == username, ApiKey.revoked_at.is_(None))
        return int(s.scalar(query) or 0)

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
                _withdraws_credentials(s)
            return record

    def lookup_key(self, parsed: ParsedKey) -> tuple[ApiKey, User, UserLimits | None] | None:
        """The key, its user and the user's stored limits, when the key is valid and live."""
        # one statement, not three lookups: this runs on every request with a key
        query = (
            select(ApiKey, User, UserLimits)
            .join(User, User.username == ApiKey.username)
            .outerjoin(UserLimits, UserLimits.username == User.username)
            .where(ApiKey.id == parsed.key_id)
        )
        with self.db.session() as s:
            row = s.execute(query).first()
            record, user, limits = row if row is not None else (None, None, None)
            matches = secret_matches(record.secret_hash if record else "0" * 64, parsed.secret)
            if record is None or user is None or not matches or record.revoked_at is not None or user.disabled:
                return None
            if record.last_used_at is None or _now() - record.last_used_at > _TOUCH_EVERY:
                record.last_used_at = _now()
            return record, user, limits

    def epoch(self) -> int:
        """The credential epoch (0 before the first change)."""
        with self.db.session() as s:
            return int(s.scalar(select(func.max(CredentialEpoch.epoch))) or 0)

    def lookup_user(self, username: str) -> tuple[User, UserLimits | None] | None:
        """A login token's user with their stored limits; None when unknown."""
        with self.db.session() as s:
            user = s.get(User, username)
            return None if user is None else (user, s.get(UserLimits, username))
