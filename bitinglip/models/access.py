"""Who may use which model. A model is open to every user unless an admin restricts it to listed
users or API keys; admins always may. A model a caller may not use is *unknown* to them: the same 404
as a model that was never installed, on every route, so a restriction reveals nothing.

Rules are kept per model name (every revision, installed or not yet), so a model can be restricted
before it is downloaded and stays restricted across re-installs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from bitinglip.auth.principal import Principal
from bitinglip.db.session import Database
from bitinglip.db.tables import ApiKey, ModelAccessRule, User
from bitinglip.errors import InvalidRequest
from bitinglip.models.store import not_installed

# The caller of the request being served, bound by the gateway's authentication dependency; model
# lookups that are not handed a caller read it. Unbound means nobody in particular: only open models.
CALLER: ContextVar[Principal | None] = ContextVar("model_caller", default=None)
NOBODY = Principal(username="", role="user")


def bind_caller(who: Principal) -> None:
    CALLER.set(who)


def current_caller() -> Principal:
    return CALLER.get() or NOBODY


@dataclass(frozen=True)
class AccessRule:
    model: str
    restricted: bool = False
    users: frozenset[str] = field(default_factory=frozenset)
    keys: frozenset[str] = field(default_factory=frozenset)
    updated_by: str | None = None
    updated_at: datetime | None = None

    def allows(self, who: Principal) -> bool:
        if who.is_admin or not self.restricted:
            return True
        return (bool(who.username) and who.username in self.users) or (
            who.key_id is not None and who.key_id in self.keys
        )


Rules = dict[str, AccessRule]
ModelCheck = Callable[[str], bool]  # model name -> may the caller use it


def may_use(rules: Rules, model: str, who: Principal) -> bool:
    """`model` is a name (no revision): rules cover every revision."""
    rule = rules.get(model)
    return rule is None or rule.allows(who)


def _rule(row: ModelAccessRule) -> AccessRule:
    return AccessRule(
        model=row.model,
        restricted=row.restricted,
        users=frozenset(row.users),
        keys=frozenset(row.keys),
        updated_by=row.updated_by,
        updated_at=row.updated_at,
    )


def load_rules(db: Database) -> Rules:
    with db.session() as s:
        return {row.model: _rule(row) for row in s.scalars(select(ModelAccessRule))}


def get_rule(db: Database, model: str) -> AccessRule:
    with db.session() as s:
        row = s.get(ModelAccessRule, model)
        return _rule(row) if row is not None else AccessRule(model=model)


def set_rule(
    db: Database, model: str, restricted: bool, users: Iterable[str], keys: Iterable[str], actor: str
) -> AccessRule:
    """Names that do not exist are refused, so a typo cannot silently lock everyone out."""
    users, keys = sorted(set(users)), sorted(set(keys))
    with db.session() as s:
        known_users = set(s.scalars(select(User.username).where(User.username.in_(users)))) if users else set()
        known_keys = set(s.scalars(select(ApiKey.id).where(ApiKey.id.in_(keys)))) if keys else set()
        if missing := [u for u in users if u not in known_users]:
            raise InvalidRequest(f"no such user: {', '.join(missing)}", param="users")
        if missing := [k for k in keys if k not in known_keys]:
            raise InvalidRequest(f"no such API key id: {', '.join(missing)}", param="keys")
        row = s.get(ModelAccessRule, model)
        if row is None:
            row = ModelAccessRule(model=model)
            s.add(row)
        row.restricted, row.users, row.keys, row.updated_by = restricted, users, keys, actor
    return get_rule(db, model)


def owner_of_job(db: Database, owner: str, key_id: str | None) -> Principal:
    """The caller a flow run works for, from the job's owner (and the key it was submitted with), as
    the users and keys tables say now: a disabled or vanished owner counts as nobody, a revoked key
    no longer brings its grants."""
    with db.session() as s:
        user = s.get(User, owner)
        if user is None or user.disabled:
            return NOBODY
        key = s.get(ApiKey, key_id) if key_id else None
        live = key is not None and key.username == owner and key.revoked_at is None
        return Principal(user.username, user.role, key_id if live else None)


def job_access(db: Database, owner: str, key_id: str | None) -> ModelCheck:
    """model name -> may the job's owner use it (batch lines are checked in the flow run, the only
    place each line's model is known)."""
    who, rules = owner_of_job(db, owner, key_id), load_rules(db)
    return lambda model: may_use(rules, model, who)


def require(may: ModelCheck | None, model_id: str, name: str) -> None:
    """For flow runs resolving models from the store: a model the owner may not use gets the store's
    own "not installed" error. `may` None: no particular owner (scheduled runs), every model."""
    if may is not None and not may(name):
        raise not_installed(model_id)
