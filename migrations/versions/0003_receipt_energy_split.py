"""Receipts get the prefill/decode energy split and the chain encoding each row was hashed with.

Revision ID: 0003
Revises: 0002
Create Date: 2025-03-01 00:00:00

- ``receipts.prefill_kwh``, ``receipts.decode_kwh``: nullable; receipts stored so far have no
  split.
- ``receipts.hash_version``: the chain encoding of the row's hash (see
  :mod:`sprout.ledger.chain`). Every row stored so far was hashed with v1, and so is every row
  a writer older than this revision inserts (it does not name the column): hence the server
  default of 1. Writers from this revision on store 2 (v1's fields plus the split).
- ``receipt_rollups.split_n``, ``prefill_kwh``, ``decode_kwh``: the split's sums, zero for the
  rollups so far (no receipt had a split; an older writer's upserts leave them be).

Downgrading drops the split: rows hashed with v2 then no longer verify (their hash covers it),
so only downgrade a ledger that no v2 writer has written to.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs (no table rebuild on SQLite; no rewrite on PostgreSQL >= 11, the
    # default being a constant), so that a large ledger upgrades in moments.
    op.add_column("receipts", sa.Column("prefill_kwh", sa.Double(), nullable=True))
    op.add_column("receipts", sa.Column("decode_kwh", sa.Double(), nullable=True))
    op.add_column(
        "receipts",
        sa.Column("hash_version", sa.SmallInteger(), server_default="1", nullable=False),
    )
    op.add_column(
        "receipt_rollups",
        sa.Column("split_n", sa.BigInteger(), server_default="0", nullable=False),
    )
    for name in ("prefill_kwh", "decode_kwh"):
        op.add_column(
            "receipt_rollups", sa.Column(name, sa.Double(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("receipt_rollups") as batch:
        for name in ("decode_kwh", "prefill_kwh", "split_n"):
            batch.drop_column(name)
    with op.batch_alter_table("receipts") as batch:
        for name in ("hash_version", "decode_kwh", "prefill_kwh"):
            batch.drop_column(name)
