"""Security and reliability (#13): model access rules, user-owned limits, the reserving usage ledger.

Revision ID: 0002_security
Revises: 0001_first_wave
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_security"
down_revision: str | None = "0001_first_wave"
branch_labels: str | None = None
depends_on: str | None = None

UTC_DATETIME = sa.DateTime(timezone=True)  # bitinglip.db.tables.UTCDateTime stores this


def upgrade() -> None:
    op.create_table(
        "model_access",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("restricted", sa.Boolean(), nullable=False),
        sa.Column("users", sa.JSON(), nullable=False),
        sa.Column("keys", sa.JSON(), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
    )

    op.create_table(
        "user_limits",
        sa.Column("username", sa.String(64), primary_key=True),
        sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True),
        sa.Column("tokens_per_day", sa.Integer(), nullable=True),
        sa.Column("images_per_day", sa.Integer(), nullable=True),
        sa.Column("updated_by", sa.String(64), nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
    )

    op.create_table(
        "usage_ledger",
        sa.Column("subject", sa.String(80), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
    )

    op.create_table(
        "usage_holds",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("caps", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
    )
    op.create_index("ix_usage_holds_day", "usage_holds", ["day"])


def downgrade() -> None:
    for table in ("usage_holds", "usage_ledger", "user_limits", "model_access"):
        op.drop_table(table)
