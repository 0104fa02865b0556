"""Audit report queries over the ledger: totals per day, hour, zone, directive, variant,
tenant or outcome (:func:`ledger_report`).

A report reads the hourly rollups for the whole hours of its window and aggregates raw
receipts only for the partial hours at its edges, so it stays fast on millions of receipts.
Every filter value is a bound parameter; the group-by is chosen from a fixed list. What a
row says is :mod:`sprout.ledger.audit_report`; the formats are :mod:`sprout.ledger.audit_format`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, bindparam, select, text

from sprout.errors import ConfigError
from sprout.ledger.audit_report import (
    FILTERS,
    GROUP_BYS,
    PURPOSES,
    Report,
    ReportRow,
    fold,
    group_row,
    report_notes,
)
from sprout.ledger.connection import ledger_connection
from sprout.ledger.migrate import mask_url
from sprout.ledger.rollup import ROLLUP_KEYS, SUM_NAMES, SUMS, key_exprs
from sprout.ledger.schema import UTCDateTime, receipts_table, verdicts_table

_HOUR = timedelta(hours=1)


def parse_time(value: str, *, option: str = "time") -> datetime:
    """An ISO 8601 date or datetime as an aware UTC datetime (naive values are UTC).

    Raises:
        ConfigError: naming ``option`` and the value.
    """
    raw = value.strip()
    try:
        if len(raw) == 10:
            parsed = datetime.combine(date.fromisoformat(raw), datetime.min.time())
        else:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{option}: cannot read {value!r}; use an ISO 8601 date or datetime such as "
            "2024-03-01 or 2024-03-01T12:00:00Z"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _ceil_hour(t: datetime) -> datetime:
    floor = t.replace(minute=0, second=0, microsecond=0)
    return floor if floor == t else floor + _HOUR


def _floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def ledger_report(
    db_url: str,
    *,
    engine: Engine | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: str = "day",
    filters: Mapping[str, str | None] | None = None,
) -> Report:
    """Report on receipts with ``since <= created_at < until``.

    Args:
        db_url: SQLAlchemy URL of the ledger.
        engine: an existing engine for it (else one is made and disposed).
        since, until: the window (None: open); naive datetimes are UTC.
        group_by: one of :data:`GROUP_BYS`.
        filters: equality filters by :data:`FILTERS` name (None values are ignored); use
            ``""`` for "no variant/tenant".

    Raises:
        ConfigError: an unknown group-by or filter, or ``since >= until``.
        LedgerError: the database cannot be read.
    """
    if group_by not in GROUP_BYS:
        raise ConfigError(f"group-by {group_by!r}: use one of {', '.join(GROUP_BYS)}")
    active = {k: v for k, v in (filters or {}).items() if v is not None}
    unknown = sorted(set(active) - set(FILTERS))
    if unknown:
        raise ConfigError(f"unknown report filter(s) {', '.join(unknown)}")
    since = None if since is None else since.replace(tzinfo=since.tzinfo or UTC).astimezone(UTC)
    until = None if until is None else until.replace(tzinfo=until.tzinfo or UTC).astimezone(UTC)
    if since is not None and until is not None and since >= until:
        raise ConfigError(f"the window is empty: since {since} is not before until {until}")

    with ledger_connection(db_url, engine, "reporting") as conn:
        groups: dict[str, ReportRow] = {}
        for value, energy, baseline, purpose, sums in _group_rows(
            conn, group_by, since, until, active
        ):
            fold(group_row(groups, group_by, value), energy, baseline, purpose, sums)
        verdicts_recorded = conn.execute(select(verdicts_table.c.id).limit(1)).first()
        if verdicts_recorded is not None:
            for value, served, preferred in verdict_rows(conn, group_by, since, until, active):
                row = group_row(groups, group_by, value)
                if preferred is not None:
                    row.judged += 1
                    row.judge_preferred += int(preferred == served)

    rows = sorted(
        groups.values(), key=lambda r: (r.start or datetime.min.replace(tzinfo=UTC), r.group)
    )
    totals = ReportRow(group="total")
    for row in rows:
        totals.add(row)
    report = Report(
        url=mask_url(db_url),
        since=since,
        until=until,
        group_by=group_by,
        filters={k: str(v) for k, v in active.items()},
        rows=rows,
        totals=totals,
        verdicts_recorded=verdicts_recorded is not None,
    )
    report.notes = report_notes(report)
    return report


def _where(active: Mapping[str, str], raw: bool) -> tuple[list[str], dict[str, Any]]:
    """SQL conditions and their bound parameters for the filters."""
    conditions, params = [], {}
    for name, value in sorted(active.items()):
        col = FILTERS[name]
        expr = f"COALESCE({col}, '')" if raw and name in ("variant", "tenant") else col
        conditions.append(f"{expr} = :f_{name}")
        params[f"f_{name}"] = value
    return conditions, params


def _group_sql(dialect: str, group_by: str, column_: str, raw: bool) -> str:
    """SQL for the group value: ``YYYY-MM-DD`` / ``YYYY-MM-DD HH`` text for days and hours
    (the same on both backends), else the key column."""
    if group_by in ("day", "hour"):
        if dialect == "sqlite":  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC
            return f"substr({column_}, 1, {10 if group_by == 'day' else 13})"
        pattern = "YYYY-MM-DD" if group_by == "day" else "YYYY-MM-DD HH24"
        return f"to_char({column_} AT TIME ZONE 'UTC', '{pattern}')"
    name = "ci_zone" if group_by == "zone" else group_by
    return f"COALESCE({name}, '')" if raw and group_by in ("variant", "tenant") else name


def _group_rows(
    conn: Any,
    group_by: str,
    since: datetime | None,
    until: datetime | None,
    active: Mapping[str, str],
) -> Iterable[tuple[str, str, str, str, tuple[Any, ...]]]:
    """(group value, energy source, counterfactual source, purpose, sums), summed in SQL:
    from the rollups for whole hours, from raw receipts for the partial hours at the edges."""
    dialect = conn.dialect.name
    lo = None if since is None else _ceil_hour(since)
    hi = None if until is None else _floor_hour(until)
    edges: list[tuple[datetime | None, datetime | None]] = []
    conditions, params = _where(active, raw=False)
    typed: list[Any] = []
    if lo is not None and hi is not None and lo >= hi:
        edges.append((since, until))  # no whole hour inside: all from the receipts
    else:
        if lo is not None:
            conditions.append("bucket_start >= :w_lo")
            params["w_lo"] = lo
            typed.append(bindparam("w_lo", type_=UTCDateTime()))
            if since != lo:
                edges.append((since, lo))
        if hi is not None:
            conditions.append("bucket_start < :w_hi")
            params["w_hi"] = hi
            typed.append(bindparam("w_hi", type_=UTCDateTime()))
            if until != hi:
                edges.append((hi, until))
        sums = ", ".join(f"SUM({name})" for name in SUM_NAMES)
        sql = (
            f"SELECT {_group_sql(dialect, group_by, 'bucket_start', raw=False)}, energy_source, "
            f"baseline_source, purpose, {sums} FROM receipt_rollups "
            f"WHERE {' AND '.join(conditions) or '1 = 1'} GROUP BY 1, 2, 3, 4"
        )
        for row in conn.execute(text(sql).bindparams(*typed), params):
            yield row[0], row[1], row[2], row[3], tuple(row[4:])
    baseline_key = key_exprs(dialect)[ROLLUP_KEYS.index("baseline_source")]
    raw_sums = ", ".join(expr for _, expr in SUMS)
    for start, end in edges:
        conditions, params = _where(active, raw=True)
        typed = []
        # Datetimes bind through the column's type, so they compare as stored (text on SQLite).
        for name, value, op in (("w_start", start, ">="), ("w_end", end, "<")):
            if value is not None:
                conditions.append(f"created_at {op} :{name}")
                params[name] = value
                typed.append(bindparam(name, type_=UTCDateTime()))
        sql = (
            f"SELECT {_group_sql(dialect, group_by, 'created_at', raw=True)}, energy_source, "
            f"{baseline_key}, purpose, {raw_sums} FROM receipts "
            f"WHERE {' AND '.join(conditions) or '1 = 1'} GROUP BY 1, 2, 3, 4"
        )
        for row in conn.execute(text(sql).bindparams(*typed), params):
            yield row[0], row[1], row[2], row[3], tuple(row[4:])


def verdict_rows(
    conn: Any,
    group_by: str,
    since: datetime | None,
    until: datetime | None,
    active: Mapping[str, str],
) -> Iterable[tuple[str, str, str | None]]:
    """(group value of the judged receipt, served directive, preferred directive), from the
    latest verdict of each request."""
    r, v = receipts_table, verdicts_table
    stmt = (
        select(
            v.c.id,
            v.c.request_id,
            r.c.created_at,
            r.c.ci_zone,
            r.c.directive,
            r.c.variant,
            r.c.tenant,
            r.c.outcome,  # group-by outcome reads it
            v.c.preferred_directive,
        )
        .join(r, and_(r.c.created_at == v.c.receipt_created_at, r.c.request_id == v.c.request_id))
        .order_by(v.c.id)
    )
    if since is not None:
        stmt = stmt.where(v.c.receipt_created_at >= since)
    if until is not None:
        stmt = stmt.where(v.c.receipt_created_at < until)
    for name, value in active.items():
        col = r.c[FILTERS[name]]
        if name in ("variant", "tenant") and value == "":
            stmt = stmt.where(col.is_(None))
        else:
            stmt = stmt.where(col == value)
    latest: dict[str, Any] = {}
    for row in conn.execute(stmt):
        latest[row.request_id] = row  # ordered by id: the last one wins
    for row in latest.values():
        if group_by == "day":
            value = f"{row.created_at:%Y-%m-%d}"
        elif group_by == "hour":
            value = f"{row.created_at:%Y-%m-%d %H}"
        else:
            value = getattr(row, "ci_zone" if group_by == "zone" else group_by) or ""
        yield value, row.directive, row.preferred_directive


__all__ = [
    "FILTERS",
    "GROUP_BYS",
    "PURPOSES",
    "ledger_report",
    "parse_time",
    "verdict_rows",
]
