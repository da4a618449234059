"""Model memory (#15): each worker's heartbeat records its memory budget; rows from before read None
(no byte limit), which is what those workers had.

Revision ID: 0004_worker_memory
Revises: 0003_model_backend
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_worker_memory"
down_revision: str | None = "0003_model_backend"
branch_labels: str | None = None
depends_on: str | None = None


def _has_budget() -> bool:
    """A pre-Alembic home made by create_all of today's models is stamped 0002 with the column in it."""
    return "memory_budget_bytes" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("workers")}


def upgrade() -> None:
    if _has_budget():
        return
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("memory_budget_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("memory_budget_bytes")
