"""Fixtures of the unit tests: a real database of each kind (SQLite file, and a PostgreSQL database
made and dropped for the test), settings with generated secrets. No HTTP, no Prefect."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from bitinglip.config import Settings
from bitinglip.db.session import Database
from bitinglip.home_secrets import SECRETS

POSTGRES = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    psycopg = pytest.importorskip("psycopg")
    name = f"bl_test_unit_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(f"{POSTGRES}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    try:
        yield database
    finally:
        database.dispose()


def unit_settings(tmp_path: Path, db_url: str, **overrides: object) -> Settings:
    secrets = {name: SecretStr(make()) for name, (_, make) in SECRETS.items()}
    return Settings(**{**secrets, "home": tmp_path, "database_url": db_url, **overrides})  # type: ignore[arg-type]
