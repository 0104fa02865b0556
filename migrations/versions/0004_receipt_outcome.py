"""Receipts say how their generation ended: completed, client_closed, upstream_failed, guard_cut.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 00:00:00

- ``receipts.outcome``: every receipt stored so far is of a completed generation (interrupted
  ones got none), hence the server default ``completed``. Writers from this revision on hash
  it into their rows (chain encoding v3, see :mod:`sprout.ledger.chain`).
- ``receipt_rollups.outcome``: a new rollup key, ``completed`` for the rollups so far; the
  unique key index is rebuilt with it.

Downgrading drops the outcome: rows hashed with v3 then no longer verify, so only downgrade a
ledger that no v3 writer has written to.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEYS_BEFORE = (
    "bucket_start",
    "ci_zone",
    "directive",
    "variant",
    "tenant",
    "energy_source",
    "baseline_source",
    "purpose",
)


def upgrade() -> None:
    # Plain ADD COLUMNs with a constant default: no table rebuild on SQLite, no rewrite on
    # PostgreSQL >= 11, so that a large ledger upgrades in moments.
    op.add_column(
        "receipts",
        sa.Column("outcome", sa.String(32), server_default="completed", nullable=False),
    )
    op.add_column(
        "receipt_rollups",
        sa.Column("outcome", sa.String(32), server_default="completed", nullable=False),
    )
    op.drop_index("uq_receipt_rollups_key", table_name="receipt_rollups")
    op.create_index(
        "uq_receipt_rollups_key", "receipt_rollups", [*_KEYS_BEFORE, "outcome"], unique=True
    )


def downgrade() -> None:
    # Rollups of interrupted generations fold into the completed ones' keys first.
    op.execute("DELETE FROM receipt_rollups WHERE outcome <> 'completed'")
    op.drop_index("uq_receipt_rollups_key", table_name="receipt_rollups")
    op.create_index("uq_receipt_rollups_key", "receipt_rollups", list(_KEYS_BEFORE), unique=True)
    with op.batch_alter_table("receipt_rollups") as batch:
        batch.drop_column("outcome")
    with op.batch_alter_table("receipts") as batch:
        batch.drop_column("outcome")
