"""The in-memory cache of verified credentials (bitinglip/auth/credential_cache.py) on a clock the test
moves: what it keeps, when it reads the epoch, and that nothing it drops comes back. The same cache
against a real database and real replicas: tests/security/test_credential_cache.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import delete

from bitinglip.auth.accounts import AccountStore
from bitinglip.auth.credential_cache import CredentialCache
from bitinglip.auth.principal import Limits
from bitinglip.db.session import Database
from bitinglip.db.tables import CredentialEpoch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Accounts:
    """What the cache reads: an epoch and credentials, counting every read."""

    def __init__(self) -> None:
        self.epoch = 0
        self.epoch_reads = 0
        self.loads = 0
        self.valid = {"good": "alice"}

    async def read_epoch(self) -> int:
        self.epoch_reads += 1
        await asyncio.sleep(0)
        return self.epoch

    def loader(self, credential: str) -> Callable[[], Awaitable[str | None]]:
        async def load() -> str | None:
            self.loads += 1
            await asyncio.sleep(0)
            return self.valid.get(credential)

        return load


def cache(db: Accounts, clock: Clock, recheck_s: float = 1.0, ttl_s: float = 60.0) -> CredentialCache[str]:
    return CredentialCache(db.read_epoch, recheck_s, ttl_s=ttl_s, clock=clock)


async def test_a_verified_credential_is_read_once_and_a_refused_one_every_time() -> None:
    db, clock = Accounts(), Clock()
    verified = cache(db, clock)
    assert [await verified.get("good", db.loader("good")) for _ in range(5)] == ["alice"] * 5
    assert db.loads == 1 and db.epoch_reads == 1
    assert [await verified.get("bad", db.loader("bad")) for _ in range(3)] == [None] * 3
    assert db.loads == 4  # nothing is kept of a refusal


async def test_an_epoch_move_drops_everything_within_recheck() -> None:
    db, clock = Accounts(), Clock()
    verified = cache(db, clock, recheck_s=1.0)
    await verified.get("good", db.loader("good"))
    del db.valid["good"]  # revoked elsewhere ...
    db.epoch += 1  # ... in the transaction that raised the epoch
    clock.now += 0.5
    assert await verified.get("good", db.loader("good")) == "alice"  # within recheck_s: still the old answer
    assert db.epoch_reads == 1
    clock.now += 0.6
    assert await verified.get("good", db.loader("good")) is None  # past it: read, seen, dropped, refused
    assert db.epoch_reads == 2


async def test_an_unmoved_epoch_keeps_entries_and_the_epoch_is_read_once_for_many() -> None:
    db, clock = Accounts(), Clock()
    verified = cache(db, clock)
    await verified.get("good", db.loader("good"))
    clock.now += 5
    answers = await asyncio.gather(*(verified.get("good", db.loader("good")) for _ in range(20)))
    assert answers == ["alice"] * 20
    assert db.epoch_reads == 2 and db.loads == 1  # one shared epoch read for the 20, no new lookup


async def test_nothing_outlives_its_ttl() -> None:
    """A change made straight in the database raises no epoch; the entry's age bounds it."""
    db, clock = Accounts(), Clock()
    verified = cache(db, clock, ttl_s=60)
    await verified.get("good", db.loader("good"))
    db.valid["good"] = "alice-demoted"
    clock.now += 61
    assert await verified.get("good", db.loader("good")) == "alice-demoted"


async def test_a_lookup_begun_before_a_drop_does_not_refill() -> None:
    db, clock = Accounts(), Clock()
    verified = cache(db, clock)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_load() -> str | None:
        started.set()
        await release.wait()
        return "alice-before-revocation"

    lookup = asyncio.ensure_future(verified.get("good", slow_load))
    await started.wait()
    verified.clear()  # the revocation commits on this replica while the read is on its way
    release.set()
    assert await lookup == "alice-before-revocation"  # that request was already in flight
    del db.valid["good"]
    assert await verified.get("good", db.loader("good")) is None  # but nothing of it was kept


async def test_recheck_zero_reads_every_time() -> None:
    db, clock = Accounts(), Clock()
    verified = cache(db, clock, recheck_s=0)
    for _ in range(3):
        assert await verified.get("good", db.loader("good")) == "alice"
    assert db.loads == 3 and db.epoch_reads == 0


async def test_a_failed_epoch_read_fails_the_request_and_is_retried() -> None:
    db, clock = Accounts(), Clock()
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database down")
        return 0

    verified: CredentialCache[str] = CredentialCache(flaky, 1.0, clock=clock)
    with pytest.raises(ConnectionError):
        await verified.get("good", db.loader("good"))
    assert await verified.get("good", db.loader("good")) == "alice" and calls == 2


def test_every_change_that_withdraws_a_credential_raises_the_epoch(tmp_path: Path) -> None:
    """On a real database: revoking, disabling, enabling, changing a role and changing limits each raise
    the epoch in their own transaction, and a database whose epoch row is missing (made by create_all)
    starts it on the first change."""
    db = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
    accounts = AccountStore(db)
    accounts.create_user("root", None, "admin")
    accounts.create_user("dana", None, "user")
    _, key = accounts.create_key("dana", "k")
    with db.session() as s:
        s.execute(delete(CredentialEpoch))
    assert accounts.epoch() == 0
    changes = [
        lambda: accounts.revoke_key(key.id, None),
        lambda: accounts.set_disabled("dana", True),
        lambda: accounts.set_disabled("dana", False),
        lambda: accounts.set_role("dana", "admin"),
        lambda: accounts.set_limits("dana", Limits(rate_limit_per_minute=5), "root"),
    ]
    for expected, change in enumerate(changes, start=1):
        change()
        assert accounts.epoch() == expected
    db.dispose()
