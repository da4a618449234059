"""The PostgreSQL path of backup/restore with the machine's PostgreSQL and its pg_dump/pg_restore:
a gateway database on PostgreSQL is dumped while in use and restored into another database (created
by the restore); an archive from PostgreSQL is refused by a platform on SQLite."""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bitinglip.backup import BackupError, backup, restore
from bitinglip.config import Settings

SERVER = "postgresql://postgres@127.0.0.1:5432"


def _admin() -> object:
    import psycopg

    return psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=3)


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump/pg_restore are not installed")
    try:
        conn = _admin()
    except Exception as exc:  # no server here: nothing to test against
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    suffix = uuid.uuid4().hex[:8]
    names = (f"bl_backup_src_{suffix}", f"bl_backup_dst_{suffix}")
    with conn:  # type: ignore[attr-defined]
        conn.execute(f'CREATE DATABASE "{names[0]}"')  # type: ignore[attr-defined]
    try:
        yield names
    finally:
        with _admin() as conn:  # type: ignore[attr-defined]
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _home(path: Path, database: str) -> Settings:
    (path / "prefect").mkdir(parents=True)
    with sqlite3.connect(path / "prefect" / "prefect.db") as db:
        db.execute("CREATE TABLE flow_run (id TEXT)")
    return Settings(home=path, database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")


def test_a_postgresql_gateway_database_round_trips(tmp_path: Path, databases: tuple[str, str]) -> None:
    import psycopg

    source, target = databases
    with psycopg.connect(f"{SERVER}/{source}", autocommit=True) as conn:
        conn.execute("CREATE TABLE users (username TEXT PRIMARY KEY, disabled BOOLEAN)")
        conn.execute("INSERT INTO users VALUES ('frank', false), ('grace', true)")
        archive = tmp_path / "pg.tar"
        report = backup(_home(tmp_path / "a", source), archive)  # with a session open on it
    assert report.entries["gateway database (postgresql)"] == 1
    restored = restore(_home(tmp_path / "b", target), archive, force=True)
    assert restored.entries["gateway database"] == 1
    with psycopg.connect(f"{SERVER}/{target}") as conn:
        rows = conn.execute("SELECT username, disabled FROM users ORDER BY username").fetchall()
    assert rows == [("frank", False), ("grace", True)]
    again = restore(_home(tmp_path / "c", target), archive, force=True)  # --clean: over itself, no duplicates
    assert again.entries["gateway database"] == 1
    with psycopg.connect(f"{SERVER}/{target}") as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (2,)
    with pytest.raises(BackupError, match="PostgreSQL gateway database but this platform's is SQLite"):
        restore(Settings(home=tmp_path / "d"), archive)
