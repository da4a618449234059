"""The usage ledger itself, on SQLite and on the machine's real PostgreSQL (a database of this run's
own, created and dropped here): concurrent reservations never pass a quota, settling is exact and
happens once, a key's narrower quota and its user's are held together or not at all."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from bitinglip.auth.usage import Hold, HoldRequest, UsageLedger, job_hold_id
from bitinglip.db.session import Database
from bitinglip.db.tables import Job, UsageHold
from bitinglip.errors import Conflict, RateLimited, ServiceUnavailable
from bitinglip.jobs.intake import JobIntake
from bitinglip.jobs.store import JobStore, NewJob

POSTGRES = "postgres@127.0.0.1:5432"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UsageLedger]:
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
        yield UsageLedger(db)
        db.dispose()
        return
    name = f"bl_ledger_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"postgresql://{POSTGRES}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(f"postgresql+psycopg://{POSTGRES}/{name}")
    try:
        yield UsageLedger(db)
    finally:
        db.dispose()
        with psycopg.connect(f"postgresql://{POSTGRES}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_concurrent_reservations_never_pass_the_quota(ledger: UsageLedger) -> None:
    caps = [("user:carol", 30)]
    start = threading.Barrier(16)

    def one(_: int) -> bool:
        start.wait()
        try:
            ledger.reserve("tokens", 7, caps)
        except RateLimited as exc:
            assert exc.code == "tokens_quota_exceeded" and exc.retry_after is not None
            return False
        return True

    with ThreadPoolExecutor(16) as pool:
        granted = sum(pool.map(one, range(16)))
    assert granted == 4  # 4 x 7 = 28 <= 30; a fifth would make 35
    (counter,) = ledger.counters(caps, "tokens")
    assert (counter.used, counter.reserved, counter.remaining) == (0, 28, 2)


def test_settle_moves_the_real_count_once_and_never_past_the_quota(ledger: UsageLedger) -> None:
    caps = [("user:dave", 20)]
    first = ledger.reserve("tokens", 10, caps)
    assert ledger.settle(first.id, 4) == 4
    assert ledger.settle(first.id, 4) is None  # settled once, whoever tries again
    second = ledger.reserve("tokens", 10, caps)  # 4 used + 10 held
    assert ledger.settle(second.id, 25) == 16  # over its reservation: charged only as far as the quota goes
    (counter,) = ledger.counters(caps, "tokens")
    assert (counter.used, counter.reserved, counter.remaining) == (20, 0, 0)
    with pytest.raises(RateLimited):
        ledger.reserve("tokens", 1, caps)


def test_key_and_user_quotas_are_held_together_or_not_at_all(ledger: UsageLedger) -> None:
    user, key = ("user:erin", 100), ("key:abc", 10)
    ledger.reserve("tokens", 8, [user, key])
    with pytest.raises(RateLimited, match="quota of 10"):
        ledger.reserve("tokens", 8, [user, key])  # the key's own quota refuses ...
    other_key = ledger.reserve("tokens", 50, [user])  # ... and held nothing on the user's
    assert [c.reserved for c in ledger.counters([user, key], "tokens")] == [58, 8]
    ledger.settle(other_key.id, 0)
    assert ledger.counters([user], "tokens")[0].reserved == 8


def test_a_replaced_hold_gives_back_what_it_held(ledger: UsageLedger) -> None:
    caps = [("user:frank", 50)]
    ledger.reserve("tokens", 40, caps, hold_id="batch:job-1:chunk-a")
    ledger.reserve("tokens", 40, caps, hold_id="batch:job-1:chunk-a", replace=True)  # a resumed chunk
    assert ledger.counters(caps, "tokens")[0].reserved == 40
    assert ledger.fitting(caps, "tokens", [5, 4, 2, 1]) == 2  # 10 left: 5 + 4 fit, then 2 does not


def test_unlimited_users_are_counted_too(ledger: UsageLedger) -> None:
    caps: list[tuple[str, int | None]] = [("user:grace", None)]
    hold = ledger.reserve("images", 10_000, caps)
    ledger.settle(hold.id, 3)
    (counter,) = ledger.counters(caps, "images")
    assert (counter.used, counter.reserved, counter.remaining) == (3, 0, None)


def test_a_group_of_jobs_commits_those_that_fit_and_refuses_the_others_alone(ledger: UsageLedger) -> None:
    """Group commit (bitinglip/jobs/intake.py): one transaction takes many jobs' holds; a refused hold
    leaves no trace, the jobs around it are written with theirs."""
    store = JobStore(ledger.db)
    user, key = ("user:gus", 100), ("key:g1", 20)

    def job(amount: int, caps: list[tuple[str, int | None]]) -> NewJob:
        return NewJob("text", "m@1", {"prompt": "hi"}, 2, "gus", hold=HoldRequest("tokens", amount, caps))

    made = store.create_many([job(15, [user, key]), job(15, [user, key]), job(60, [user])])
    assert isinstance(made[1], RateLimited) and "quota of 20" in str(made[1])  # the key's quota: 15 + 15 > 20
    written = [m for m in made if not isinstance(m, RateLimited)]
    assert len(written) == 2 and {j.id for j in store.many([j.id for j in written])} == {j.id for j in written}
    # the refused job raised the user's counter before its key refused it; that was taken back
    assert [c.reserved for c in ledger.counters([user, key], "tokens")] == [75, 15]


def test_concurrent_submissions_through_the_intake_are_all_written_once(ledger: UsageLedger) -> None:
    store, user = JobStore(ledger.db), ("user:hal", 100)

    async def submit_all() -> list[Job | BaseException]:
        intake = JobIntake(store)
        new = NewJob("text", "m@1", {"prompt": "hi"}, 2, "hal", hold=HoldRequest("tokens", 3, [user]))
        try:
            return await asyncio.gather(*(intake.create(new) for _ in range(40)), return_exceptions=True)
        finally:
            await intake.stop()

    outcomes = asyncio.run(submit_all())
    accepted = [o for o in outcomes if isinstance(o, Job)]
    assert len(accepted) == 33 and all(isinstance(o, RateLimited) for o in outcomes if not isinstance(o, Job))
    assert len(store.many([j.id for j in accepted])) == 33  # 33 x 3 = 99 <= 100: exactly what fits, each once
    assert ledger.counters([user], "tokens")[0].reserved == 99


def test_one_jobs_failure_in_a_group_is_not_the_others(ledger: UsageLedger) -> None:
    """A group whose transaction fails (here one row's own error; on PostgreSQL also a deadlock victim) is
    written again one job per transaction: the others are accepted, the bad one hears its own error."""
    store, user = JobStore(ledger.db), ("user:ivy", None)
    hold = HoldRequest("tokens", 5, [user])

    def broken(s: Session, job_id: str) -> object:
        raise RuntimeError("this job's row cannot be written")

    async def submit() -> list[Job | BaseException]:
        intake = JobIntake(store)
        good = NewJob("text", "m@1", {"prompt": "hi"}, 2, "ivy", hold=hold)
        bad = NewJob("text", "m@1", {"prompt": "hi"}, 2, "ivy", hold=hold, within=broken)
        try:
            return await asyncio.gather(*(intake.create(j) for j in (good, bad, good, good)), return_exceptions=True)
        finally:
            await intake.stop()

    outcomes = asyncio.run(submit())
    assert isinstance(outcomes[1], RuntimeError)
    written = [o for o in outcomes if isinstance(o, Job)]
    assert len(written) == 3 and len(store.many([j.id for j in written])) == 3
    assert ledger.counters([user], "tokens")[0].reserved == 15  # three holds, none of the failed group's


def test_a_group_grants_and_refuses_exactly_what_holds_one_by_one_would(ledger: UsageLedger) -> None:
    """`reserve_all` takes a group's holds in a few statements (unlimited counters summed, each counter
    locked once); for any mix of users, keys, limits and amounts its answers and counters are those of
    `reserve_in` hold by hold, in the same order: a limited counter and an unlimited one on the same
    subject, a key narrower than its user, refusals between grants."""
    rng = random.Random(7)
    seen: set[bool] = set()
    for trial in range(25):
        requests: list[HoldRequest] = []
        for _ in range(rng.randint(1, 12)):
            user = rng.choice(["ann", "bo"])
            user_cap = (f"user:{user}", rng.choice([None, None, 40, 90]))
            caps = [user_cap] + (
                [(f"key:{user}{rng.randint(1, 2)}", rng.choice([None, 25]))] if rng.random() < 0.6 else []
            )
            requests.append(HoldRequest(rng.choice(["tokens", "images"]), rng.randint(1, 30), caps))

        def renamed(request: HoldRequest, prefix: str) -> HoldRequest:
            caps = [(f"{subject}-{prefix}", limit) for subject, limit in request.caps]
            return HoldRequest(request.kind, request.amount, caps)

        one_by_one: list[bool] = []
        with ledger.db.session() as s:
            for i, request in enumerate(requests):
                try:
                    r = renamed(request, f"a{trial}")
                    ledger.reserve_in(s, r.kind, r.amount, r.caps, hold_id=f"a{trial}-{i}")
                    one_by_one.append(True)
                except RateLimited:
                    one_by_one.append(False)
        with ledger.db.session() as s:
            group = ledger.reserve_all(s, [(f"g{trial}-{i}", renamed(r, f"g{trial}")) for i, r in enumerate(requests)])
        assert [isinstance(outcome, Hold) for outcome in group] == one_by_one, (trial, requests)
        seen.update(one_by_one)
        for request in requests:
            for kind in ("tokens", "images"):
                a = ledger.counters(renamed(request, f"a{trial}").caps, kind)  # type: ignore[arg-type]
                g = ledger.counters(renamed(request, f"g{trial}").caps, kind)  # type: ignore[arg-type]
                assert [(c.used, c.reserved) for c in a] == [(c.used, c.reserved) for c in g], (trial, request)
        for i, outcome in enumerate(group):  # and each granted hold settles as any other
            if isinstance(outcome, Hold):
                assert ledger.settle(f"g{trial}-{i}", 1) == 1
    assert seen == {True, False}  # grants and refusals both happened


def test_concurrent_groups_never_pass_the_quota(ledger: UsageLedger) -> None:
    """Gateway replicas writing groups at once for the same user: a quota is never passed, and the
    counters equal the holds written (no lost update on an unlimited counter summed by two groups)."""
    store = JobStore(ledger.db)
    limited = [("user:jo", 200), ("key:jo1", None)]
    start = threading.Barrier(6)

    def group(_: int) -> list[Job | RateLimited]:
        start.wait()
        jobs = [NewJob("text", "m@1", {"prompt": "hi"}, 2, "jo", hold=HoldRequest("tokens", 9, limited))] * 8
        return store.create_many(jobs)  # type: ignore[return-value]

    with ThreadPoolExecutor(6) as pool:
        outcomes = [o for made in pool.map(group, range(6)) for o in made]
    written = [o for o in outcomes if isinstance(o, Job)]
    assert len(written) == 200 // 9  # 22 of the 48 fit, whichever groups they were in
    user, key = ledger.counters(limited, "tokens")
    assert user.reserved == key.reserved == 9 * len(written)


def test_a_stopped_intake_answers_every_submission() -> None:
    async def after_stop() -> None:
        intake = JobIntake(JobStore(Database("sqlite://")))
        await intake.stop()
        with pytest.raises(ServiceUnavailable, match="stopping"):
            await intake.create(NewJob("text", "m@1", {}, 2, "ivy"))

    asyncio.run(after_stop())


def test_a_job_refused_after_its_hold_was_granted_gives_the_hold_back(ledger: UsageLedger) -> None:
    store, user = JobStore(ledger.db), ("user:kim", 100)

    def refuse(s: Session, job_id: str) -> object:
        raise Conflict("refused after its hold was granted")

    made = store.create_many(
        [
            NewJob("text", "m@1", {"prompt": "hi"}, 2, "kim", hold=HoldRequest("tokens", 30, [user]), within=refuse),
            NewJob("text", "m@1", {"prompt": "hi"}, 2, "kim", hold=HoldRequest("tokens", 20, [user])),
        ]
    )
    assert isinstance(made[0], Conflict) and isinstance(made[1], Job)
    assert ledger.counters([user], "tokens")[0].reserved == 20
    with ledger.db.session() as s:
        assert list(s.scalars(select(UsageHold.id))) == [job_hold_id(made[1].id)]
