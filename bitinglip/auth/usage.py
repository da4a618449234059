"""The daily usage ledger in the gateway DB: per subject (a user, or a key that narrows its user's
quota), per UTC day, per kind (tokens, images), what is `used` and what is `reserved` by work in flight.

It lives in the DB rather than in a gateway's memory because every gateway replica, model worker
(async jobs) and batch flow-run process charges the same quotas. Work reserves an upper estimate of its
cost before it starts, with one conditional UPDATE per counter (`used + reserved + n <= quota`), so
concurrent requests cannot overshoot a quota; when it ends, settling moves the real count from
`reserved` to `used`. A reservation is a row of its own (a hold): settling deletes it, so it is settled
once, by whichever process gets there first."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Table, bindparam, delete, false, insert, literal, select, update
from sqlalchemy.orm import Session

from bitinglip.auth.principal import Cap, QuotaKind
from bitinglip.db.session import Database, dialect_of, per_dialect
from bitinglip.db.tables import ApiKey, UsageCounter, UsageHold
from bitinglip.errors import RateLimited
from bitinglip.schemas import EmbeddingParams, ImageParams, TextGenerationParams
from bitinglip.structured.tools import TOOLS_PROMPT

# Tokens a tokenizer may add around one text (BOS/EOS, a leading-space marker), and a chat template
# around one message (role markers). With byte-level tokenizers a text never has more tokens than
# UTF-8 bytes, so bytes + these allowances is an upper estimate of a prompt; a model whose template
# adds more (a default system prompt) is charged its real count at settlement, as far as the quota goes.
TEXT_ALLOWANCE = 8
MESSAGE_ALLOWANCE = 8


# -- what work costs


def _utf8(text: str) -> int:
    return len(text.encode("utf-8", errors="replace"))


def prompt_tokens_estimate(params: TextGenerationParams) -> int:
    if params.prompt is not None:
        return _utf8(params.prompt) + TEXT_ALLOWANCE
    messages = [m.as_template_dict() for m in params.messages or []]
    turns = sum(_utf8(str(m["content"])) + _utf8(str(m.get("tool_calls") or "")) + MESSAGE_ALLOWANCE for m in messages)
    tools = params.template_tools()  # rendered into the prompt, with the instructions around them
    listing = _utf8(TOOLS_PROMPT) + sum(_utf8(t.model_dump_json()) for t in tools) if tools else 0
    return TEXT_ALLOWANCE + turns + listing


def text_tokens_estimate(params: TextGenerationParams, default_max_tokens: int) -> int:
    """What one generation may cost: its prompt and every token it may generate."""
    return prompt_tokens_estimate(params) + (params.max_tokens or default_max_tokens)


def embedding_tokens_estimate(texts: list[str]) -> int:
    return sum(_utf8(t) + TEXT_ALLOWANCE for t in texts)


def estimate(
    params: TextGenerationParams | EmbeddingParams | ImageParams, default_max_tokens: int
) -> tuple[QuotaKind, int]:
    """The quota a request draws on and the most it may take of it."""
    if isinstance(params, ImageParams):
        return "images", params.n
    if isinstance(params, EmbeddingParams):
        return "tokens", embedding_tokens_estimate(params.texts())
    return "tokens", text_tokens_estimate(params, default_max_tokens)


def tokens_used(result: dict[str, Any] | None) -> int:
    """The real count of a text or embedding result (its `usage.total_tokens`)."""
    usage = (result or {}).get("usage") or {}
    return int(usage.get("total_tokens", 0))


# The statements a hold runs, built once (building them per call was half of an accepted job's cost),
# on the tables rather than the mapped classes: holds touch counters as rows, never as loaded objects,
# and the ORM's bulk-statement path around each one was most of what remained.
_COUNTERS, _HOLDS = cast(Table, UsageCounter.__table__), cast(Table, UsageHold.__table__)
_ONE_COUNTER = (
    _COUNTERS.c.subject == bindparam("b_subject"),
    _COUNTERS.c.day == bindparam("b_day"),
    _COUNTERS.c.kind == bindparam("b_kind"),
)
_RAISE = update(_COUNTERS).where(*_ONE_COUNTER).values(reserved=_COUNTERS.c.reserved + bindparam("b_amount"))
_RAISE_WITHIN_LIMIT = _RAISE.where(
    _COUNTERS.c.used + _COUNTERS.c.reserved + bindparam("b_amount") <= bindparam("b_limit")
)
_LOWER = update(_COUNTERS).where(*_ONE_COUNTER).values(reserved=_COUNTERS.c.reserved - bindparam("b_amount"))
# the day's counter at zero, unless it is there already
_NEW_COUNTER = per_dialect(
    lambda dialect: dialect.insert(_COUNTERS).values(used=0, reserved=0).on_conflict_do_nothing()
)
# Creates the day's counter or, when it is there, locks its row (PostgreSQL locks the conflicting row even
# where the update's WHERE is false, and writes no new row version; SQLite has one writer): a group of
# holds locks each counter when it first names it, so its locks follow the holds' own order.
_LOCKED_COUNTER = per_dialect(
    lambda dialect: (
        dialect.insert(_COUNTERS)
        .values(used=0, reserved=0)
        .on_conflict_do_update(
            index_elements=["subject", "day", "kind"], set_={"reserved": _COUNTERS.c.reserved}, where=false()
        )
    )
)
_NEW_HOLD = insert(_HOLDS)


def _on(subject: str, day: str, kind: str, amount: int, limit: int | None = None) -> dict[str, Any]:
    """The bound values of the counter statements above, for one counter."""
    return {"b_subject": subject, "b_day": day, "b_kind": kind, "b_amount": amount, "b_limit": limit}


def _hold_row(hold_id: str, day: str, kind: str, amount: int, caps: list[Cap]) -> dict[str, Any]:
    return {"id": hold_id, "day": day, "kind": kind, "amount": amount, "caps": [list(c) for c in caps]}


def job_hold_id(job_id: str) -> str:
    """An async job's reservation: taken at acceptance, settled by whoever finishes the job."""
    return f"job:{job_id}"


def job_usage(job_type: str, result: dict[str, Any] | None) -> int:
    """What a finished async job used: images stored, or tokens; nothing without a result."""
    if not result:
        return 0
    return len(result.get("images") or []) if job_type == "image" else tokens_used(result)


# -- the ledger


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def seconds_to_reset() -> float:
    """Quotas are per UTC day: they reset at midnight."""
    now = datetime.now(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return (midnight - now).total_seconds()


@dataclass(frozen=True)
class Hold:
    id: str
    kind: QuotaKind
    amount: int


@dataclass(frozen=True)
class HoldRequest:
    """A hold to take in a group (`UsageLedger.reserve_all`): `amount` of `kind` on every counter in `caps`."""

    kind: QuotaKind
    amount: int
    caps: list[Cap]


@dataclass(frozen=True)
class Counter:
    limit: int | None
    used: int = 0
    reserved: int = 0

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used - self.reserved)


def quota_exceeded(kind: QuotaKind, counter: Counter, amount: int | None = None) -> RateLimited:
    needs = "" if amount is None else f"; this needs up to {amount}, {counter.remaining} left"
    return RateLimited(
        f"daily {kind} quota of {counter.limit} reached{needs}",
        limit=counter.limit or 0,
        reset_after=seconds_to_reset(),
        code=f"{kind}_quota_exceeded",
    )


def _rows(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


@dataclass
class DayUse:
    """What one user, or one of their keys (`key_id`), used on one UTC day: settled counts only."""

    day: str
    username: str
    key_id: str | None
    key_name: str | None
    tokens: int = 0
    images: int = 0


class UsageLedger:
    def __init__(self, db: Database) -> None:
        self.db = db

    def history(self, since: str, username: str | None = None) -> list[DayUse]:
        """Use per user per day and per key per day from `since` (a UTC day) on, newest day first; one
        user's, or everyone's. A user's row counts all their keys and sign-ins together; a key's only
        what came with it (every key is counted on its own, limited or not)."""
        users = select(UsageCounter.subject, UsageCounter.day, UsageCounter.kind, UsageCounter.used).where(
            UsageCounter.day >= since,
            UsageCounter.subject == f"user:{username}" if username else UsageCounter.subject.startswith("user:"),
        )
        keys = (
            select(ApiKey.username, ApiKey.id, ApiKey.name, UsageCounter.day, UsageCounter.kind, UsageCounter.used)
            .join(ApiKey, UsageCounter.subject == literal("key:") + ApiKey.id)
            .where(UsageCounter.day >= since)
        )
        if username:
            keys = keys.where(ApiKey.username == username)
        rows: dict[tuple[str, str, str | None], DayUse] = {}

        def add(day: str, user: str, key_id: str | None, key_name: str | None, kind: str, used: int) -> None:
            row = rows.setdefault((day, user, key_id), DayUse(day, user, key_id, key_name))
            if kind == "images":
                row.images += used
            else:
                row.tokens += used

        with self.db.session() as s:
            for subject, day, kind, used in s.execute(users):
                add(day, subject.removeprefix("user:"), None, None, kind, used)
            for user, key_id, key_name, day, kind, used in s.execute(keys):
                add(day, user, key_id, key_name, kind, used)
        found = [row for row in rows.values() if row.tokens or row.images]
        found.sort(key=lambda r: (r.username, r.key_id is not None, r.key_name or "", r.key_id or ""))
        found.sort(key=lambda r: r.day, reverse=True)
        return found

    def reserve(
        self, kind: QuotaKind, amount: int, caps: list[Cap], *, hold_id: str | None = None, replace: bool = False
    ) -> Hold:
        """Holds `amount` on every counter in `caps`, or on none: RateLimited when one would go over its
        quota. `replace`: a hold of the same id (a retried or resumed piece of work) is released first."""
        with self.db.session() as s:
            return self.reserve_in(s, kind, amount, caps, hold_id=hold_id, replace=replace)

    def reserve_in(
        self,
        s: Session,
        kind: QuotaKind,
        amount: int,
        caps: list[Cap],
        *,
        hold_id: str | None = None,
        replace: bool = False,
    ) -> Hold:
        """`reserve` inside the caller's transaction: the hold commits (or rolls back) with the work it
        pays for, e.g. an async job's row, in one write instead of two. A refusal leaves the transaction
        as it found it (counters already raised for this hold are lowered again), so one transaction can
        take many holds and commit those that fit (docs/architecture.md §3.22)."""
        hold_id = hold_id or f"req:{uuid.uuid4().hex}"
        day = today()
        if replace:  # not for a shared transaction: a refusal below does not restore the released hold
            self._release(s, hold_id)
        raised: list[str] = []
        for subject, limit in caps:
            self._ensure_counter(s, subject, day, kind)
            held = s.execute(_RAISE if limit is None else _RAISE_WITHIN_LIMIT, _on(subject, day, kind, amount, limit))
            if _rows(held) != 1:
                raise self._refused(s, subject, limit, day, kind, amount, raised)
            raised.append(subject)
        s.execute(_NEW_HOLD, _hold_row(hold_id, day, kind, amount, caps))
        return Hold(hold_id, kind, amount)

    def reserve_all(self, s: Session, requests: list[tuple[str, HoldRequest]]) -> list[Hold | RateLimited]:
        """Many holds in the caller's transaction, each granted or refused exactly as `reserve_in` would
        in this order, in a few statements instead of several per hold (accepted async jobs in a group;
        each statement is a round trip to PostgreSQL):
        - each counter is created or locked once, when a hold first names it (holds come in their
          owners' order, user before key, the order settlements lock them in);
        - a counter without a limit is only counted: its holds are summed and raised once at the end;
        - a counter with a limit is raised per hold with the conditional UPDATE, after whatever was
          summed for it so far, so no hold passes a quota however the group is made up;
        - the holds' rows go in with one batched INSERT."""
        day, locking = today(), _LOCKED_COUNTER[dialect_of(s)]
        locked: set[tuple[str, str]] = set()  # (subject, kind) of today's counters this call has locked
        summed: dict[tuple[str, str], int] = {}
        outcomes: list[Hold | RateLimited] = []

        def raise_summed(subject: str, kind: str) -> None:
            if amount := summed.pop((subject, kind), 0):
                s.execute(_RAISE, _on(subject, day, kind, amount))

        for hold_id, request in requests:
            raised: list[str] = []
            refusal: RateLimited | None = None
            for subject, limit in request.caps:
                if (subject, request.kind) not in locked:
                    s.execute(locking, {"subject": subject, "day": day, "kind": request.kind})
                    locked.add((subject, request.kind))
                if limit is None:
                    continue
                raise_summed(subject, request.kind)
                if _rows(s.execute(_RAISE_WITHIN_LIMIT, _on(subject, day, request.kind, request.amount, limit))) != 1:
                    refusal = self._refused(s, subject, limit, day, request.kind, request.amount, raised)
                    break
                raised.append(subject)
            if refusal is not None:
                outcomes.append(refusal)
                continue
            for subject, limit in request.caps:
                if limit is None:
                    summed[(subject, request.kind)] = summed.get((subject, request.kind), 0) + request.amount
            outcomes.append(Hold(hold_id, request.kind, request.amount))
        for subject, kind in list(summed):
            raise_summed(subject, kind)
        rows = [
            _hold_row(hold_id, day, r.kind, r.amount, r.caps)
            for (hold_id, r), outcome in zip(requests, outcomes, strict=True)
            if isinstance(outcome, Hold)
        ]
        if rows:
            s.execute(_NEW_HOLD, rows)
        return outcomes

    def _refused(
        self, s: Session, subject: str, limit: int | None, day: str, kind: QuotaKind, amount: int, raised: list[str]
    ) -> RateLimited:
        """`subject`'s quota refuses a hold: the refusal, with the counters the hold raised already
        lowered again, so the transaction is as the hold found it."""
        refusal = quota_exceeded(kind, self._counter(s, subject, limit, day, kind), amount)
        for done in raised:
            s.execute(_LOWER, _on(done, day, kind, amount))
        return refusal

    def settle(self, hold_id: str, actual: int) -> int | None:
        """Moves the hold from `reserved` to `used` at its real count; None when it was settled already.
        A count over the reservation (an estimate fell short) is charged as far as the quota allows,
        so `used` never passes it."""
        with self.db.session() as s:
            return self._settle(s, hold_id, actual)

    def settle_many(self, outcomes: list[tuple[str, int]]) -> None:
        """Several holds in one transaction (jobs that finish together), in the order of their owners, the
        order in which accepted jobs' holds lock the same counters (bitinglip/jobs/store.py create_many)."""
        with self.db.session() as s:
            query = select(UsageHold.id, UsageHold.caps).where(UsageHold.id.in_([hold for hold, _ in outcomes]))
            owner = {hold: str(caps[0][0]) if caps else "" for hold, caps in s.execute(query)}
            for hold_id, actual in sorted(outcomes, key=lambda outcome: owner.get(outcome[0], "")):
                self._settle(s, hold_id, actual)

    def counters(self, caps: list[Cap], kind: QuotaKind, day: str | None = None) -> list[Counter]:
        day = day or today()
        with self.db.session() as s:
            return [self._counter(s, subject, limit, day, kind) for subject, limit in caps]

    def headroom(self, caps: list[Cap], kind: QuotaKind) -> int | None:
        """What is left today under the tightest quota; None when none applies."""
        left = [c.remaining for c in self.counters(caps, kind) if c.remaining is not None]
        return min(left) if left else None

    def fitting(self, caps: list[Cap], kind: QuotaKind, costs: list[int]) -> int:
        """How many of `costs`, from the first, fit in what is left today."""
        room = self.headroom(caps, kind)
        if room is None:
            return len(costs)
        count = 0
        for cost in costs:
            if cost > room:
                break
            room -= cost
            count += 1
        return count

    # -- in a transaction

    @staticmethod
    def _ensure_counter(s: Session, subject: str, day: str, kind: str) -> None:
        """The day's counter, created at zero when missing (the gateway DB is SQLite or PostgreSQL); once
        per transaction, which may take many holds on it (a group of accepted jobs). The mark lives in
        the session, which every caller uses for one transaction (Database.session) and none rolls back
        part of: a savepoint rolled back past the insert would leave the mark wrong."""
        ensured: set[tuple[str, str, str]] = s.info.setdefault("usage_counters_ensured", set())
        if (subject, day, kind) in ensured:
            return
        s.execute(_NEW_COUNTER[dialect_of(s)], {"subject": subject, "day": day, "kind": kind})
        ensured.add((subject, day, kind))

    @staticmethod
    def _counter(s: Session, subject: str, limit: int | None, day: str, kind: str, *, lock: bool = False) -> Counter:
        query = select(UsageCounter.used, UsageCounter.reserved).where(
            UsageCounter.subject == subject, UsageCounter.day == day, UsageCounter.kind == kind
        )
        row = s.execute(query.with_for_update() if lock else query).first()
        return Counter(limit, *(row or (0, 0)))

    @staticmethod
    def _take(s: Session, hold_id: str) -> tuple[str, QuotaKind, int, list[Cap]] | None:
        """Deletes the hold and returns it; None when another process took it first."""
        row = s.execute(
            delete(UsageHold)
            .where(UsageHold.id == hold_id)
            .returning(UsageHold.day, UsageHold.kind, UsageHold.amount, UsageHold.caps)
        ).first()
        if row is None:
            return None
        caps: list[Cap] = [(str(subject), None if limit is None else int(limit)) for subject, limit in row.caps]
        return row.day, row.kind, int(row.amount), caps

    def _settle(self, s: Session, hold_id: str, actual: int) -> int | None:
        hold = self._take(s, hold_id)
        if hold is None:
            return None
        day, kind, amount, caps = hold
        charge = min(max(actual, 0), amount)
        extra = max(actual - amount, 0)
        for subject, limit in caps:
            if extra and limit is not None:
                counter = self._counter(s, subject, limit, day, kind, lock=True)
                extra = max(0, min(extra, limit - counter.used - (counter.reserved - amount) - charge))
        charge += extra
        for subject, _ in caps:
            s.execute(
                update(UsageCounter)
                .where(UsageCounter.subject == subject, UsageCounter.day == day, UsageCounter.kind == kind)
                .values(reserved=UsageCounter.reserved - amount, used=UsageCounter.used + charge)
            )
        return charge

    def release_in(self, s: Session, hold_id: str) -> None:
        """Gives a hold back inside the caller's transaction (work refused after its hold was granted)."""
        self._release(s, hold_id)

    def _release(self, s: Session, hold_id: str) -> None:
        hold = self._take(s, hold_id)
        if hold is None:
            return
        day, kind, amount, caps = hold
        for subject, _ in caps:
            s.execute(_LOWER, _on(subject, day, kind, amount))
