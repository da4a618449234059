"""Alembic environment: runs on the connection `bitinglip.db.session.migrate` hands over (it holds the
schema lock, and its transaction is committed by the caller)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from bitinglip.db.migrations import VERSION_TABLE
from bitinglip.db.tables import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("bitinglip migrations run on a connection: use bitinglip.db.session.migrate")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
