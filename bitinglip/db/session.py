"""Engine and session factory. SQLite gets WAL + a busy timeout so gateway and workers can share it.
Opening the database migrates its schema to the newest revision (bitinglip/db/migrations)."""

from __future__ import annotations

import functools
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from bitinglip.db.migrations import ADOPT, VERSION_TABLE, alembic_config

log = logging.getLogger(__name__)

# PostgreSQL advisory lock ids, one place so they never collide
SCHEMA_LOCK = 727274  # schema migration by replicas starting together
STARTUP_LOCK = 727275  # gateway bootstrapping (first admin, model registry)


T = TypeVar("T")


def per_dialect(build: Callable[[Any], T]) -> dict[str, T]:
    """`build(dialect)` for each database a gateway runs on, built once: `INSERT .. ON CONFLICT` is
    dialect-specific in SQLAlchemy. Pick one with `dialect_of(session)`."""
    return {"postgresql": build(postgresql), "sqlite": build(sqlite)}


def dialect_of(s: Session) -> str:
    """ "postgresql" or "sqlite": which of `per_dialect`'s statements a session runs."""
    return "postgresql" if s.get_bind().dialect.name == "postgresql" else "sqlite"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA busy_timeout=30000")
            switch_to_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    migrate(engine)
    return engine


def switch_to_wal(cursor: Any, patience_s: float = 30.0) -> None:
    """Switch a SQLite file to WAL (it stays so: later opens find it there). The switch needs the
    file to itself, and SQLite answers "database is locked" at once, without its busy handler, when
    another connection reads it meanwhile (processes opening a new database together): wait and retry."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


@functools.cache
def schema_head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def schema_revision(conn: Connection) -> str | None:
    """The revision the database is at; None before its first migration (empty, or pre-Alembic)."""
    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that only one process at a time holds, committed on exit: a
    PostgreSQL advisory lock for replicas; for SQLite, BEGIN IMMEDIATE (its write lock, waited for up
    to the busy timeout), which also makes the DDL inside one transaction."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            yield conn
        return
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        legacy = raw.isolation_level
        raw.isolation_level = None  # the sqlite3 module issues no BEGIN of its own: ours is the one
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        finally:
            raw.isolation_level = legacy


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision, once however many processes start together. An empty
    database is built from the first revision; one made by create_all before Alembic (no version
    table, but our tables) is stamped with the revision its tables match, then upgraded."""
    head = schema_head()
    with engine.connect() as conn:  # the usual case, without waiting for the lock
        if schema_revision(conn) == head:
            return
    with _schema_lock(engine) as conn:
        current = schema_revision(conn)
        if current == head:  # another process did it while we waited
            return
        config = alembic_config()
        config.attributes["connection"] = conn
        if current is None:
            tables = set(inspect(conn).get_table_names())
            adopt = next((revision for revision, needed in ADOPT if needed <= tables), None)
            if adopt is not None:
                log.info("stamping a pre-Alembic database as %s", adopt)
                command.stamp(config, adopt)
        elif current not in {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}:
            # a newer release migrated it (a rolling upgrade): leave it be, its changes are additive
            log.warning("database schema %s is newer than this release's %s; not migrating", current, head)
            return
        log.info("migrating the database schema from %s to %s", current or "nothing", head)
        command.upgrade(config, "head")


class Database:
    """One engine + session factory per process."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._factory() as session, session.begin():
            yield session

    @contextmanager
    def exclusive(self, key: int) -> Iterator[None]:
        """One process at a time across every replica sharing this DB (a PostgreSQL advisory lock;
        SQLite serialises writers already): start-up bootstrapping must not race."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()

    def dispose(self) -> None:
        self.engine.dispose()
