"""The gateway database's schema history (Alembic), run by `bitinglip.db.session.migrate` whenever a
process opens the database: no alembic.ini, the configuration is built in code (`alembic_config`).

A schema change is a new file in versions/, written by hand (op.create_table, op.add_column inside
op.batch_alter_table so SQLite can follow) with `down_revision` the current head, plus its name in
`ADOPT` below if it creates tables a pre-Alembic database could already hold. tests/unit/
test_migrations.py checks that the migrated schema equals `Base.metadata` on SQLite and PostgreSQL.
To draft one from the models: `alembic.command.revision(alembic_config(), "msg", autogenerate=True)`
with `config.attributes["connection"]` set to a connection to an up-to-date database; then edit it.
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

HERE = Path(__file__).resolve().parent

# Our own version table, so a database shared with another Alembic user (Prefect's server) can't mix
# their revision ids with ours.
VERSION_TABLE = "bitinglip_alembic_version"

# Databases made by create_all before Alembic: the tables each revision leaves, newest first. Such a
# database is stamped with the newest revision whose tables it holds, then upgraded from there.
FIRST_WAVE = frozenset({"jobs", "files", "users", "api_keys", "workers", "models"})
SECURITY = FIRST_WAVE | {"model_access", "user_limits", "usage_ledger", "usage_holds"}
ADOPT: tuple[tuple[str, frozenset[str]], ...] = (
    ("0002_security", SECURITY),
    ("0001_first_wave", FIRST_WAVE),
)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("version_table", VERSION_TABLE)
    return config
