"""Backends (#15): each registered model records what serves it; rows from before read as transformers.

Revision ID: 0003_model_backend
Revises: 0002_security
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_model_backend"
down_revision: str | None = "0002_security"
branch_labels: str | None = None
depends_on: str | None = None


def _has_backend() -> bool:
    """A pre-Alembic home made by create_all of today's models is stamped 0002 with the column in it."""
    return "backend" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("models")}


def upgrade() -> None:
    if _has_backend():
        return
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("backend", sa.String(16), nullable=False, server_default="transformers"))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("backend")
