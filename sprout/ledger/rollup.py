"""Hourly rollups of receipts: the SQL that sums receipts by report key.

The writer folds each committed batch into ``receipt_rollups`` in the same transaction
(:func:`upsert_chain_range_sql`), so a report over millions of receipts reads thousands of
rollup rows; the same aggregate over raw receipts serves the partial hours at a report
window's edges and ``verify``'s cross-check. Only fixed SQL text lives here: every value
reaches the database as a bound parameter.
"""

from __future__ import annotations

from sprout.errors import LedgerError

#: The key columns of :class:`~sprout.ledger.schema.ReceiptRollupRow` (None is stored as ""
#: so that keys compare).
ROLLUP_KEYS: tuple[str, ...] = (
    "bucket_start",
    "ci_zone",
    "directive",
    "variant",
    "tenant",
    "energy_source",
    "baseline_source",
    "purpose",
    "outcome",
)

#: Summed columns of ``receipt_rollups`` and the aggregate over ``receipts`` that fills each.
SUMS: tuple[tuple[str, str], ...] = (
    ("requests", "COUNT(*)"),
    ("input_tokens", "SUM(input_tokens)"),
    ("output_tokens", "SUM(output_tokens)"),
    ("latency_s", "SUM(latency_s)"),
    ("energy_kwh", "SUM(energy_kwh)"),
    ("operational_g", "SUM(operational_g)"),
    ("embodied_g", "SUM(embodied_g)"),
    ("ci_kwh", "SUM(ci_g_per_kwh * energy_kwh)"),
    ("baseline_n", "COUNT(baseline_g)"),
    ("baseline_g", "COALESCE(SUM(baseline_g), 0)"),
    (
        "baseline_actual_g",
        "COALESCE(SUM(CASE WHEN baseline_g IS NOT NULL THEN operational_g + embodied_g END), 0)",
    ),
    # The prefill/decode split, over the receipts that carry one (split_n of them).
    ("split_n", "COUNT(prefill_kwh)"),
    ("prefill_kwh", "COALESCE(SUM(prefill_kwh), 0)"),
    ("decode_kwh", "COALESCE(SUM(decode_kwh), 0)"),
)
SUM_NAMES: tuple[str, ...] = tuple(name for name, _ in SUMS)

#: Stored for a receipt without a counterfactual (``baseline_g`` is NULL).
NO_BASELINE = ""
#: Stored for a counterfactual whose source was not recorded.
UNKNOWN_BASELINE_SOURCE = "unknown"


def bucket_sql(dialect: str, column: str = "created_at") -> str:
    """SQL for the start of ``column``'s UTC hour, in the type the column is stored as.

    Raises:
        LedgerError: a database other than SQLite or PostgreSQL.
    """
    if dialect == "sqlite":
        # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC: keep the hour, zero the rest.
        return f"substr({column}, 1, 13) || ':00:00.000000'"
    if dialect == "postgresql":
        # AT TIME ZONE twice: truncate in UTC whatever the session's TimeZone is.
        return f"date_trunc('hour', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    raise LedgerError(f"ledger rollups support SQLite and PostgreSQL, not {dialect}")


def key_exprs(dialect: str) -> tuple[str, ...]:
    """The rollup key of a receipt row, as SQL expressions in :data:`ROLLUP_KEYS` order."""
    return (
        bucket_sql(dialect),
        "ci_zone",
        "directive",
        "COALESCE(variant, '')",
        "COALESCE(tenant, '')",
        "energy_source",
        f"CASE WHEN baseline_g IS NULL THEN '{NO_BASELINE}' "
        f"ELSE COALESCE(baseline_source, '{UNKNOWN_BASELINE_SOURCE}') END",
        "purpose",
        "outcome",
    )


def aggregate_sql(dialect: str, where: str) -> str:
    """``SELECT <keys>, <sums> FROM receipts WHERE <where> GROUP BY <keys>``.

    Args:
        dialect: ``sqlite`` or ``postgresql``.
        where: a condition made only of column names and bound parameters.
    """
    keys = key_exprs(dialect)
    positions = ", ".join(str(i) for i in range(1, len(keys) + 1))
    selected = ", ".join([*keys, *(expr for _, expr in SUMS)])
    return (
        f"SELECT {selected} FROM receipts WHERE {where} GROUP BY {positions} ORDER BY {positions}"
    )


def upsert_chain_range_sql(dialect: str) -> str:
    """Fold receipts ``seq`` in ``(:lo, :hi]`` of chain ``:chain_id`` into the rollups.

    Rows are visited in key order so that concurrent writers lock rollup rows in one order
    (PostgreSQL would otherwise risk deadlocks between replicas).
    """
    select = aggregate_sql(dialect, "chain_id = :chain_id AND seq > :lo AND seq <= :hi")
    columns = ", ".join([*ROLLUP_KEYS, *SUM_NAMES])
    updates = ", ".join(f"{name} = receipt_rollups.{name} + excluded.{name}" for name in SUM_NAMES)
    return (
        f"INSERT INTO receipt_rollups ({columns}) {select} "
        f"ON CONFLICT ({', '.join(ROLLUP_KEYS)}) DO UPDATE SET {updates}"
    )


__all__ = [
    "NO_BASELINE",
    "SUMS",
    "SUM_NAMES",
    "UNKNOWN_BASELINE_SOURCE",
    "aggregate_sql",
    "bucket_sql",
    "key_exprs",
    "upsert_chain_range_sql",
]
