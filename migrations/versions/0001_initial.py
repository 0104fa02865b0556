"""Initial ledger schema: receipts, carbon_readings, policy_versions.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

The tables are spelled out here rather than taken from the models, so this revision stays
what it was when later revisions change the models. Constraint and index names follow
``sprout.ledger.schema.NAMING_CONVENTION``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "receipts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("directive", sa.String(length=64), nullable=False),
        sa.Column("decision", sa.String(length=255), nullable=False),
        sa.Column("engine", sa.String(length=255), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_s", sa.Double(), nullable=False),
        sa.Column("energy_kwh", sa.Double(), nullable=False),
        sa.Column("energy_source", sa.String(length=64), nullable=False),
        sa.Column("ci_g_per_kwh", sa.Double(), nullable=False),
        sa.Column("ci_zone", sa.String(length=64), nullable=False),
        sa.Column("ci_provider", sa.String(length=64), nullable=False),
        sa.Column("ci_signal_type", sa.String(length=32), nullable=False),
        sa.Column("ci_emission_factor", sa.String(length=32), nullable=False),
        sa.Column("ci_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ci_age_s", sa.Double(), nullable=False),
        sa.Column("ci_fallback", sa.String(length=32), nullable=False),
        sa.Column("operational_g", sa.Double(), nullable=False),
        sa.Column("embodied_g", sa.Double(), nullable=False),
        sa.Column("tenant", sa.String(length=255), nullable=True),
        sa.Column("variant", sa.String(length=255), nullable=True),
        sa.Column("policy_version", sa.Integer(), nullable=True),
        sa.Column("energy_device", sa.String(length=255), nullable=False),
        sa.Column("baseline_energy_kwh", sa.Double(), nullable=True),
        sa.Column("baseline_g", sa.Double(), nullable=True),
        sa.Column("baseline_source", sa.String(length=64), nullable=True),
        sa.Column("prompt_id", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_receipts"),
    )
    op.create_index("ix_receipts_request_id", "receipts", ["request_id"], unique=True)
    op.create_index("ix_receipts_created_at", "receipts", ["created_at"])
    op.create_index("ix_receipts_ci_zone", "receipts", ["ci_zone"])
    op.create_index("ix_receipts_directive", "receipts", ["directive"])
    op.create_index("ix_receipts_tenant", "receipts", ["tenant"])

    op.create_table(
        "carbon_readings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("zone", sa.String(length=64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ci_g_per_kwh", sa.Double(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("signal_type", sa.String(length=32), nullable=False),
        sa.Column("emission_factor", sa.String(length=32), nullable=False),
        sa.Column("is_forecast", sa.Boolean(), nullable=False),
        sa.Column("is_estimated", sa.Boolean(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_carbon_readings"),
        sa.UniqueConstraint(
            "zone",
            "time",
            "provider",
            "is_forecast",
            name="uq_carbon_readings_zone_time_provider_is_forecast",
        ),
    )

    op.create_table(
        "policy_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_policy_versions"),
    )
    op.create_index("ix_policy_versions_kind_id", "policy_versions", ["kind", "id"])


def downgrade() -> None:
    op.drop_index("ix_policy_versions_kind_id", table_name="policy_versions")
    op.drop_table("policy_versions")
    op.drop_table("carbon_readings")
    for name in ("tenant", "directive", "ci_zone", "created_at", "request_id"):
        op.drop_index(f"ix_receipts_{name}", table_name="receipts")
    op.drop_table("receipts")
