"""The ``carbon_readings`` table: the readings the poller fetched, each stored once."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Insert, select

from sprout.ledger._database import LedgerDatabase, insert_ignoring
from sprout.ledger.schema import carbon_readings_table
from sprout.readings import CarbonReading


@functools.cache
def _insert(dialect: str) -> Insert:
    """The reading INSERT of ``dialect`` (built once: it is the same for every call)."""
    return insert_ignoring(
        dialect, carbon_readings_table, ["zone", "time", "provider", "is_forecast"]
    )


def add_readings(
    db: LedgerDatabase, readings: Iterable[CarbonReading], fetched_at: datetime | None = None
) -> int:
    """Store readings not stored yet (see :meth:`sprout.ledger.store.Ledger.add_readings`).

    Raises:
        LedgerError: the database cannot be written.
    """
    fetched = fetched_at or datetime.now(UTC)
    rows: dict[tuple[str, datetime, str, bool], dict[str, Any]] = {}
    for r in readings:
        key = (r.zone, r.time.astimezone(UTC), r.provider, bool(r.is_forecast))
        rows.setdefault(
            key,
            {
                "zone": r.zone,
                "time": key[1],
                "ci_g_per_kwh": float(r.ci_g_per_kwh),
                "provider": r.provider,
                "signal_type": r.signal_type,
                "emission_factor": r.emission_factor,
                "is_forecast": key[3],
                "is_estimated": bool(r.is_estimated),
                "fetched_at": fetched,
            },
        )
    if not rows:
        return 0
    t = carbon_readings_table
    key_cols = (t.c.zone, t.c.time, t.c.provider, t.c.is_forecast)
    times = [k[1] for k in rows]
    # A write transaction from the start: a read-then-write one fails at once on SQLite
    # when another connection (the writer thread, the sampler) commits in between.
    with db.errors("storing carbon readings"), db.begin_write() as conn:
        existing = {
            (z, tm, p, bool(f))
            for z, tm, p, f in conn.execute(
                select(*key_cols).where(
                    t.c.zone.in_(sorted({k[0] for k in rows})),
                    t.c.time >= min(times),
                    t.c.time <= max(times),
                )
            )
        }
        new = [row for key, row in rows.items() if key not in existing]
        if new:
            conn.execute(_insert(db.engine.dialect.name), new)
    return len(new)


__all__ = ["add_readings"]
