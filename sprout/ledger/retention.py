"""Retention: delete sampled prompts older than the configured number of days.

Only prompt text is pruned. Receipts, their hash chains and rollups are never touched, so
the ledger verifies the same after a prune (prompt text is not part of the hashed receipt).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, func, select

from sprout.errors import ConfigError
from sprout.ledger.migrate import SQLITE_BEGIN_OPTION, create_ledger_engine, ledger_errors
from sprout.ledger.schema import sampled_prompts_table

#: Rows deleted per transaction, so that a large prune never holds locks for long.
PRUNE_BATCH = 1000


def prune_cutoff(retention_days: float, now: datetime | None = None) -> datetime | None:
    """The instant before which prompts are deleted (None: ``retention_days`` is 0, keep all).

    Raises:
        ConfigError: a negative ``retention_days``.
    """
    if retention_days < 0:
        raise ConfigError(f"retention days must be >= 0, got {retention_days!r}")
    if retention_days == 0:
        return None
    now = now or datetime.now(UTC)
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return now - timedelta(days=retention_days)


def prune_prompts(
    db_url: str,
    retention_days: float,
    *,
    engine: Engine | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> int:
    """Delete sampled prompts stored more than ``retention_days`` before ``now``.

    Args:
        db_url: SQLAlchemy URL of the ledger.
        retention_days: the retention period (0 keeps every prompt).
        engine: an existing engine for it (else one is made and disposed).
        now: the current time (default: now, UTC).
        dry_run: only count what would be deleted.

    Returns:
        The number of prompts deleted (or that would be).

    Raises:
        ConfigError: a negative ``retention_days``.
        LedgerError: the database cannot be written.
    """
    cutoff = prune_cutoff(retention_days, now)
    if cutoff is None:
        return 0
    t = sampled_prompts_table
    own = engine is None
    eng = engine if engine is not None else create_ledger_engine(db_url)
    try:
        with ledger_errors(db_url, "pruning sampled prompts"):
            with eng.connect() as conn:
                due = int(
                    conn.scalar(select(func.count()).select_from(t).where(t.c.created_at < cutoff))
                    or 0
                )
            if dry_run or not due:
                return due
            deleted = 0
            # Bounded: each round deletes a full batch until fewer remain than it holds.
            for _ in range(due // PRUNE_BATCH + 2):
                # A write transaction from the start (SQLite: BEGIN IMMEDIATE): a read-then-
                # write one fails at once when another connection commits in between.
                write = eng.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
                with write.begin() as conn:
                    ids = list(
                        conn.scalars(
                            select(t.c.id)
                            .where(t.c.created_at < cutoff)
                            .order_by(t.c.id)
                            .limit(PRUNE_BATCH)
                        )
                    )
                    if ids:
                        conn.execute(delete(t).where(t.c.id.in_(ids)))
                deleted += len(ids)
                if len(ids) < PRUNE_BATCH:
                    break
            return deleted
    finally:
        if own:
            eng.dispose()


__all__ = ["PRUNE_BATCH", "prune_cutoff", "prune_prompts"]
