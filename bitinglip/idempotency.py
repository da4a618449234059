"""`Idempotency-Key` on create requests: the same key and request return the object the first one made;
the same key with another request is a conflict. A key belongs to one user, and lapses after
BITINGLIP_IDEMPOTENCY_TTL_S.

The key's row is written in the transaction that creates the object (`Claim.record`), under a primary
key of (owner, key): of requests racing with one key, exactly one commits its object; the others'
transactions fail on that key and roll back whole (their object, their quota hold), and they answer
with the winner's object."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bitinglip.db.session import Database
from bitinglip.db.tables import IdempotencyKey
from bitinglip.errors import Conflict, InvalidRequest

HEADER = "Idempotency-Key"
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII: UUIDs, ULIDs, "order-42:retry"


T = TypeVar("T")


class IdempotencyConflict(Conflict):
    code = "idempotency_key_reused"


def check_key(values: list[str]) -> str | None:
    """The request's key (None: it sent none), or a 400 for a malformed or repeated header."""
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest(f"send one {HEADER} header, not {len(values)}", param=HEADER)
    if not KEY_PATTERN.match(values[0]):
        raise InvalidRequest(
            f"{HEADER} must be 1 to 255 visible ASCII characters (no spaces or control characters)", param=HEADER
        )
    return values[0]


def digest(route: str, canonical: Any = None, raw: bytes = b"") -> str:
    """What makes two requests the same: the route and the body, as canonical JSON (key order and
    spacing do not count) and/or raw bytes (an upload)."""
    h = hashlib.sha256(route.encode() + b"\0")
    h.update(json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\0")
    h.update(raw)
    return h.hexdigest()


@dataclass(frozen=True)
class Claim:
    """One request's key, made by `IdempotencyStore.claim`; `record` writes it with the object."""

    owner: str
    key: str
    route: str
    request_hash: str
    ttl: timedelta

    def record(self, session: Session, object_id: str) -> None:
        """Inside the creating transaction: a lapsed row of this key goes, this one comes (the insert
        fails with IntegrityError when another request with the key committed first)."""
        now = datetime.now(UTC)
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.owner == self.owner, IdempotencyKey.key == self.key, IdempotencyKey.expires_at <= now
            )
        )
        session.execute(
            insert(IdempotencyKey).values(
                owner=self.owner,
                key=self.key,
                route=self.route,
                request_hash=self.request_hash,
                object_id=object_id,
                created_at=now,
                expires_at=now + self.ttl,
            )
        )


class IdempotencyStore:
    def __init__(self, db: Database, ttl_s: float) -> None:
        self.db = db
        self.ttl = timedelta(seconds=ttl_s)

    def claim(self, owner: str, key: str, route: str, request_hash: str) -> Claim:
        return Claim(owner, key, route, request_hash, self.ttl)

    def made(self, claim: Claim) -> str | None:
        """The id of the object this key made (a repeat), None when the key is new or lapsed; a 409 when
        it was used for another request."""
        with self.db.session() as s:
            row = s.scalars(
                select(IdempotencyKey).where(
                    IdempotencyKey.owner == claim.owner,
                    IdempotencyKey.key == claim.key,
                    IdempotencyKey.expires_at > datetime.now(UTC),
                )
            ).first()
        if row is None:
            return None
        if row.route != claim.route or row.request_hash != claim.request_hash:
            raise IdempotencyConflict(
                f"this {HEADER} was used for a different request"
                + (f" ({row.route})" if row.route != claim.route else "")
                + "; use a new key for a new request",
                param=HEADER,
            )
        return row.object_id

    async def once(
        self,
        claim: Claim | None,
        create: Callable[[Claim | None], Awaitable[T]],
        replay: Callable[[str], Awaitable[T]],
    ) -> tuple[T, bool]:
        """(the object, whether it is a replay): `create(claim)` makes it, writing `claim.record` in its
        transaction; a key seen before gives `replay(object id)` instead, also when another request with
        the key won the race while this one was creating."""
        if claim is None:
            return await create(None), False
        if (made := await asyncio.to_thread(self.made, claim)) is not None:
            return await replay(made), True
        try:
            return await create(claim), False
        except IntegrityError:
            if (made := await asyncio.to_thread(self.made, claim)) is None:
                raise
            return await replay(made), True

    def purge(self, before: datetime) -> int:
        """Keys made before `before` (retention: now less their lifetime), lapsed by then."""
        with self.db.session() as s:
            result = s.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < before))
            return int(getattr(result, "rowcount", 0))
