"""The credential epoch (#16): one counter every credential change raises, so each gateway replica can
keep verified API keys in memory and still drop them within a second of a revocation anywhere.

Revision ID: 0006_credential_epoch
Revises: 0005_webhooks_idempotency
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_credential_epoch"
down_revision: str | None = "0005_webhooks_idempotency"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    if "credential_epoch" in set(sa.inspect(op.get_bind()).get_table_names()):
        return
    table = op.create_table(
        "credential_epoch",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "epoch": 0}])


def downgrade() -> None:
    op.drop_table("credential_epoch")
