"""Schema migrations (bitinglip/db/migrations), on a real SQLite file and on the machine's real
PostgreSQL (a database of this test's own, created and dropped here): a database of the previous
release (the first wave, revision 0001), with rows in it, opened by today's `Database` keeps every
row and gains today's tables and columns (with their defaults); so does a pre-Alembic one made by that
release's create_all; a fresh one is migrated to exactly today's models; processes opening a fresh
database together don't race."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, Table, create_engine, insert, inspect, select, text

from bitinglip.auth.usage import UsageLedger
from bitinglip.db.migrations import FIRST_WAVE, SECURITY, VERSION_TABLE, alembic_config
from bitinglip.db.session import Database, schema_head, schema_revision, switch_to_wal
from bitinglip.db.tables import (
    ApiKey,
    Base,
    FileRecord,
    Job,
    ModelAccessRule,
    ModelRecord,
    User,
    UserLimits,
)
from bitinglip.models.access import get_rule, set_rule

POSTGRES = "postgres@127.0.0.1:5432"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    name = f"bl_migrations_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"postgresql://{POSTGRES}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{POSTGRES}/{name}"
    finally:
        with psycopg.connect(f"postgresql://{POSTGRES}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def raw(url: str) -> Iterator[Engine]:
    """An engine that migrates nothing by itself: the previous release's database is built with it."""
    engine = create_engine(url)
    yield engine
    engine.dispose()


def upgrade_to(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


# Columns later revisions added to first-wave tables, with what old rows read there.
ADDED_COLUMNS: dict[str, dict[str, Any]] = {
    "models": {"backend": "transformers"},  # 0003
    "workers": {"memory_budget_bytes": None},  # 0004
    "jobs": {"webhook": None},  # 0005
}
# Tables later revisions added (0005), beside the security wave's
TODAY = SECURITY | {"webhook_secrets", "webhook_deliveries", "idempotency_keys", "credential_epoch"}


def old_create_all(engine: Engine) -> None:
    """What the previous release did at start-up: create_all of its tables, no version table. Revision
    0001 was written from those tables, so: 0001, then its version table dropped (today's models have
    columns that release lacked, ADDED_COLUMNS)."""
    upgrade_to(engine, "0001_first_wave")
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))


T0 = datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)


def write_first_wave_rows(engine: Engine) -> None:
    """Rows the way the first wave's code writes them: its ORM classes, their defaults, JSON, nulls."""
    from sqlalchemy.orm import Session

    with Session(engine) as s, s.begin():
        s.add_all(
            [
                User(username="admin", password_hash="$argon2id$v=19$m=65536,t=3,p=4$abc", role="admin"),
                User(username="carol", password_hash=None, disabled=True, created_at=T0),
                ApiKey(id="bl_k1", username="carol", name="ci", secret_hash="a" * 64, tokens_per_day=5000),
                ApiKey(
                    id="bl_k2",
                    username="admin",
                    name="old",
                    secret_hash="b" * 64,
                    rate_limit_per_minute=60,
                    images_per_day=3,
                    created_at=T0,
                    last_used_at=T0 + timedelta(hours=1),
                    revoked_at=T0 + timedelta(days=1),
                ),
                Job(id=str(uuid.UUID(int=1)), type="text", model="tiny", params={"prompt": "hi"}, priority=1),
                Job(
                    id=str(uuid.UUID(int=2)),
                    type="image",
                    model="sd@main",
                    params={"prompt": "a cat", "n": 2, "nested": {"x": [1, 2.5, None, "é"]}},
                    priority=2,
                    status="succeeded",
                    owner="carol",
                    request_id="req-42",
                    result={"images": ["k/1.png", "k/2.png"], "usage": {"total_tokens": 0}},
                    attempts=1,
                    cancel_requested=False,
                    prefect_run_id=str(uuid.UUID(int=99)),
                    worker_id="w1",
                    created_at=T0,
                    dispatched_at=T0 + timedelta(seconds=1),
                    started_at=T0 + timedelta(seconds=2),
                    finished_at=T0 + timedelta(seconds=30),
                    engine_seconds=27.75,
                    progress={"done": 2, "total": 2},
                    heartbeat_at=T0 + timedelta(seconds=29),
                ),
                Job(
                    id=str(uuid.UUID(int=3)),
                    type="batch",
                    model="tiny",
                    params={},
                    priority=0,
                    status="failed",
                    error={"code": "engine_error", "message": "boom"},
                    cancel_requested=True,
                ),
                FileRecord(id="file-1", owner="carol", purpose="batch", filename="in.jsonl", bytes=123, key="f/1"),
                FileRecord(
                    id="file-2",
                    owner="admin",
                    purpose="batch_output",
                    filename="out.jsonl",
                    bytes=2**31 - 1,
                    key="f/2",
                    line_count=7,
                    created_at=T0,
                ),
            ]
        )
    write_first_wave_models(engine)
    write_first_wave_workers(engine)


def write_first_wave_workers(engine: Engine) -> None:
    """Like the models: today's Worker has a column the first wave's table lacks (ADDED_COLUMNS)."""
    row = {"id": "w1", "url": "http://127.0.0.1:9001", "device": "cpu", "models": ["tiny@main"], "queue_depth": 2}
    row |= {"started_at": T0, "heartbeat_at": T0}
    with engine.begin() as conn:
        conn.execute(insert(Table("workers", MetaData(), autoload_with=conn)), [row])


def write_first_wave_models(engine: Engine) -> None:
    """Today's ModelRecord writes columns the first wave's table lacks (ADDED_COLUMNS), so its rows go
    in as that release's ORM wrote them: every column it had, named, into the table the database has."""
    made = {"path": None, "files": {}, "size_bytes": 0, "status": "downloading", "error": None, "pinned": False}
    made |= {"created_at": T0, "updated_at": T0, "last_used_at": None}
    rows = [
        made
        | {
            "id": "tiny@main",
            "name": "tiny",
            "revision": "main",
            "task": "text",
            "source": "hf:sshleifer/tiny-gpt2",
            "path": "/models/tiny",
            "files": {"config.json": "sha256:00"},
            "size_bytes": 2**31 - 1,
            "status": "ready",
            "pinned": True,
            "last_used_at": T0,
        },
        made | {"id": "sd@main", "name": "sd", "revision": "main", "task": "image", "source": "hf:x/y"},
    ]
    rows[1]["error"] = "disk full"
    with engine.begin() as conn:
        conn.execute(insert(Table("models", MetaData(), autoload_with=conn)), rows)


def snapshot(
    engine: Engine, tables: frozenset[str] = FIRST_WAVE, *, skip_added: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, typed through today's models (aware datetimes, decoded JSON): the
    columns the database has, less those added since the first wave with `skip_added`."""
    out: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for name in sorted(tables):
            table = Base.metadata.tables[name]
            present = {c["name"] for c in inspect(conn).get_columns(name)}
            skipped = ADDED_COLUMNS.get(name, {}) if skip_added else {}
            columns = [c for c in table.columns if c.name in present and c.name not in skipped]
            rows = conn.execute(select(*columns).order_by(*table.primary_key.columns)).mappings()
            out[name] = [dict(row) for row in rows]
    return out


def assert_added_columns_hold_defaults(engine: Engine) -> None:
    """Rows written before a column existed read its server default."""
    now = snapshot(engine)
    for table, defaults in ADDED_COLUMNS.items():
        for column, default in defaults.items():
            assert now[table] and {row[column] for row in now[table]} == {default}


def schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return list(compare_metadata(context, Base.metadata))


def tables_of(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def assert_today_and_usable(db: Database) -> None:
    """Today's schema, exactly, and today's code works on it: limits, the usage ledger, access rules."""
    assert tables_of(db.engine) == TODAY | {VERSION_TABLE}
    with db.engine.connect() as conn:
        assert schema_revision(conn) == schema_head() == "0006_credential_epoch"
    assert schema_diff(db.engine) == []  # what autogenerate would write: nothing

    with db.session() as s:
        s.add(ModelRecord(id="q@gguf", name="q", revision="gguf", task="text", source="hf:q", backend="llama.cpp"))
    with db.session() as s:
        added = s.get(ModelRecord, "q@gguf")
        assert added is not None and added.backend == "llama.cpp"
        s.delete(added)

    with db.session() as s:
        s.add(UserLimits(username="carol", tokens_per_day=100, updated_by="admin"))
    ledger = UsageLedger(db)
    caps: list[tuple[str, int | None]] = [("user:carol", 100), ("key:bl_k1", 50)]
    hold = ledger.reserve("tokens", 40, caps)
    assert ledger.settle(hold.id, 30) == 30
    assert [c.used for c in ledger.counters(caps, "tokens")] == [30, 30]
    rule = set_rule(db, "tiny", True, ["carol"], ["bl_k1"], actor="admin")  # checks the old users and keys
    assert get_rule(db, "tiny") == rule and rule.restricted
    with db.session() as s:
        assert s.get(UserLimits, "carol") is not None and s.get(ModelAccessRule, "tiny") is not None


def test_previous_release_database_keeps_every_row(url: str, raw: Engine) -> None:
    upgrade_to(raw, "0001_first_wave")
    assert tables_of(raw) == FIRST_WAVE | {VERSION_TABLE}
    write_first_wave_rows(raw)
    before = snapshot(raw)
    assert sum(len(rows) for rows in before.values()) == 12

    db = Database(url)  # what every process does at start
    try:
        assert snapshot(db.engine, skip_added=True) == before
        assert_added_columns_hold_defaults(db.engine)
        with db.session() as s:  # spot checks through the ORM: types survive, not only equality
            job = s.get(Job, str(uuid.UUID(int=2)))
            assert job is not None and job.finished_at == T0 + timedelta(seconds=30)
            assert job.params["nested"] == {"x": [1, 2.5, None, "é"]} and job.engine_seconds == 27.75
            carol = s.get(User, "carol")
            assert carol is not None and carol.disabled and carol.password_hash is None and carol.created_at == T0
            model = s.get(ModelRecord, "tiny@main")
            assert model is not None and model.pinned and model.files == {"config.json": "sha256:00"}
            assert model.backend == "transformers"  # installed before backends: served by transformers
        assert_today_and_usable(db)
        assert snapshot(db.engine, skip_added=True) == before  # using the new tables touched no old row
    finally:
        db.dispose()


def test_pre_alembic_database_is_stamped_and_upgraded(url: str, raw: Engine) -> None:
    old_create_all(raw)
    assert tables_of(raw) == FIRST_WAVE
    write_first_wave_rows(raw)
    before = snapshot(raw)

    db = Database(url)
    try:
        assert snapshot(db.engine, skip_added=True) == before
        assert_added_columns_hold_defaults(db.engine)
        assert_today_and_usable(db)
    finally:
        db.dispose()


def test_pre_alembic_database_of_todays_tables_is_stamped_head(url: str, raw: Engine) -> None:
    """A home made by create_all of today's models before migrations existed: stamped with the newest
    revision whose tables it holds; the later revisions find their columns there already."""
    Base.metadata.create_all(raw)
    write_first_wave_rows(raw)
    with raw.begin() as conn:
        conn.execute(
            text("INSERT INTO user_limits (username, tokens_per_day, updated_at) VALUES ('carol', 7, :t)"), {"t": T0}
        )
    before = snapshot(raw, SECURITY)

    db = Database(url)
    try:
        assert snapshot(db.engine, SECURITY) == before
        with db.engine.connect() as conn:
            assert schema_revision(conn) == schema_head()
        assert schema_diff(db.engine) == []
    finally:
        db.dispose()


def test_fresh_database_is_exactly_todays_models(url: str) -> None:
    db = Database(url)
    try:
        write_first_wave_rows(db.engine)
        assert_today_and_usable(db)
        Database(url).dispose()  # opening again: already at head, nothing happens
        assert tables_of(db.engine) == TODAY | {VERSION_TABLE}
    finally:
        db.dispose()


def test_migrations_go_down_and_up_again(url: str, raw: Engine) -> None:
    upgrade_to(raw, "head")
    with raw.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0001_first_wave")
    assert tables_of(raw) == FIRST_WAVE | {VERSION_TABLE}
    db = Database(url)
    try:
        assert tables_of(db.engine) == TODAY | {VERSION_TABLE}
    finally:
        db.dispose()


def test_a_newer_schema_is_left_alone(url: str, raw: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """A rolling upgrade: an older process opening a database a newer release migrated starts anyway."""
    upgrade_to(raw, "head")
    with raw.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_future'"))
    with caplog.at_level(logging.WARNING, logger="bitinglip.db.session"):
        Database(url).dispose()
    assert "newer than this release" in caplog.text
    with raw.connect() as conn:
        assert schema_revision(conn) == "9999_future"


def test_threads_opening_a_fresh_database_together(url: str) -> None:
    start = threading.Barrier(8)

    def one(_: int) -> str | None:
        start.wait()
        db = Database(url)
        try:
            with db.engine.connect() as conn:
                return schema_revision(conn)
        finally:
            db.dispose()

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == [schema_head()] * 8


def test_processes_opening_a_fresh_database_together(url: str) -> None:
    """Replicas (gateway, workers, flow runs) starting at once on one new database."""
    script = (
        "import sys\n"
        "from bitinglip.db.session import Database\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"  # imports done: all go at once
        "Database(sys.argv[1]).dispose()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, url],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    db = Database(url)
    try:
        assert tables_of(db.engine) == TODAY | {VERSION_TABLE}
        with db.engine.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one() == 1
    finally:
        db.dispose()


def test_the_switch_to_wal_waits_for_a_reader_sqlite_refuses_at_once(tmp_path: Path) -> None:
    """SQLite can answer "database is locked" to the switch without waiting (seen with 8 threads
    opening a new file: CI failed on it); here the refusal is made certain by no busy timeout, while
    another connection holds a read open for a moment. Past its patience the error goes up."""
    path = tmp_path / "fresh.db"
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("CREATE TABLE t (x)")
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM t").fetchall()
    impatient = sqlite3.connect(path, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        impatient.execute("PRAGMA journal_mode=WAL")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        switch_to_wal(impatient.cursor(), patience_s=0.2)
    threading.Timer(0.3, reader.commit).start()
    switch_to_wal(impatient.cursor(), patience_s=10)
    assert impatient.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
