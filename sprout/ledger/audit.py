"""Audit reports over the ledger: totals per day, hour, zone, directive, variant or tenant.

A report reads the hourly rollups for the whole hours of its window and aggregates raw
receipts only for the partial hours at its edges, so it stays fast on millions of receipts.
Every filter value is a bound parameter; the group-by is chosen from a fixed list.

What a row says, and how:
- ``requests``; energy in kWh, also split by ``energy_source`` (measured, recorded or
  estimated are never mixed up); output tokens per joule;
- gCO2e operational and embodied, and the energy-weighted carbon intensity;
- savings against the always-L0 counterfactual, over the served requests that have one,
  with how many counterfactuals came from each ``baseline_source`` and how many requests have
  none: those are reported as such, never counted as zero savings;
- the judge-preferred share (verdicts of the quality loop), or ``n/a`` when there are none;
- evaluation overhead: requests with ``purpose == "evaluation"`` (the quality loop's own
  generations), their energy and carbon, and the savings net of them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, bindparam, select, text

from sprout.accounting import J_PER_KWH
from sprout.errors import ConfigError
from sprout.ledger.migrate import create_ledger_engine, ledger_errors, mask_url
from sprout.ledger.rollup import NO_BASELINE, SUM_NAMES, SUMS, key_exprs
from sprout.ledger.schema import ROLLUP_KEYS, UTCDateTime, receipts_table, verdicts_table

GROUP_BYS: tuple[str, ...] = (
    "day",
    "hour",
    "zone",
    "directive",
    "variant",
    "tenant",
    "outcome",
)
FORMATS: tuple[str, ...] = ("table", "csv", "json")
PURPOSES: tuple[str, ...] = ("serve", "evaluation")
#: Filters: option name -> the rollup key column it compares with.
FILTERS: dict[str, str] = {
    "zone": "ci_zone",
    "directive": "directive",
    "variant": "variant",
    "tenant": "tenant",
    "purpose": "purpose",
    "outcome": "outcome",
}
#: What the group label says for an empty key (no variant, no tenant).
NONE_LABEL = "(none)"
_HOUR = timedelta(hours=1)


@dataclass
class ReportRow:
    """Sums for one group (or the totals), with the figures derived from them."""

    group: str
    start: datetime | None = None  # the bucket's start, for day and hour groups
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    energy_kwh: float = 0.0
    kwh_by_source: dict[str, float] = field(default_factory=dict)
    operational_g: float = 0.0
    embodied_g: float = 0.0
    ci_kwh: float = 0.0  # sum of ci * kWh, for the energy-weighted intensity
    serve_requests: int = 0
    baseline_n: int = 0
    baseline_g: float = 0.0
    baseline_actual_g: float = 0.0
    baseline_by_source: dict[str, int] = field(default_factory=dict)
    eval_requests: int = 0
    eval_kwh: float = 0.0
    eval_g: float = 0.0
    eval_output_tokens: int = 0  # output tokens of the evaluation generations
    judged: int = 0
    judge_preferred: int = 0
    split_n: int = 0  # requests whose energy is split into prefill and decode
    prefill_kwh: float = 0.0
    decode_kwh: float = 0.0

    @property
    def total_g(self) -> float:
        """Operational plus embodied gCO2e."""
        return self.operational_g + self.embodied_g

    @property
    def tokens_per_j(self) -> float | None:
        """Output tokens per joule (None without energy)."""
        joules = self.energy_kwh * J_PER_KWH
        return self.output_tokens / joules if joules > 0 else None

    @property
    def ci_g_per_kwh(self) -> float | None:
        """Energy-weighted mean carbon intensity (None without energy)."""
        return self.ci_kwh / self.energy_kwh if self.energy_kwh > 0 else None

    @property
    def no_baseline(self) -> int:
        """Served requests without a counterfactual (left out of the savings)."""
        return self.serve_requests - self.baseline_n

    @property
    def saved_g(self) -> float | None:
        """gCO2e saved against always-L0, over the served requests that have a counterfactual."""
        return self.baseline_g - self.baseline_actual_g if self.baseline_n else None

    @property
    def saved_pct(self) -> float | None:
        """``saved_g`` as a percentage of the counterfactual's emissions."""
        if not self.baseline_n or self.baseline_g <= 0:
            return None
        return 100.0 * (self.baseline_g - self.baseline_actual_g) / self.baseline_g

    @property
    def net_saved_g(self) -> float | None:
        """Savings less the evaluation overhead."""
        saved = self.saved_g
        return None if saved is None else saved - self.eval_g

    @property
    def judge_share(self) -> float | None:
        """Share of judged requests whose served directive the judge preferred."""
        return self.judge_preferred / self.judged if self.judged else None

    def add(self, other: ReportRow) -> None:
        """Add ``other``'s sums to this row."""
        for name in (
            "requests",
            "input_tokens",
            "output_tokens",
            "energy_kwh",
            "operational_g",
            "embodied_g",
            "ci_kwh",
            "serve_requests",
            "baseline_n",
            "baseline_g",
            "baseline_actual_g",
            "eval_requests",
            "eval_kwh",
            "eval_g",
            "eval_output_tokens",
            "judged",
            "judge_preferred",
            "split_n",
            "prefill_kwh",
            "decode_kwh",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for source, kwh in other.kwh_by_source.items():
            self.kwh_by_source[source] = self.kwh_by_source.get(source, 0.0) + kwh
        for source, n in other.baseline_by_source.items():
            self.baseline_by_source[source] = self.baseline_by_source.get(source, 0) + n


@dataclass
class Report:
    """A ledger report: its window, grouping and filters, rows, totals and notes."""

    url: str
    since: datetime | None
    until: datetime | None
    group_by: str
    filters: dict[str, str]
    rows: list[ReportRow]
    totals: ReportRow
    verdicts_recorded: bool
    notes: list[str] = field(default_factory=list)

    @property
    def energy_sources(self) -> list[str]:
        """Energy sources present, sorted."""
        return sorted(self.totals.kwh_by_source)

    @property
    def baseline_sources(self) -> list[str]:
        """Counterfactual sources present, sorted."""
        return sorted(self.totals.baseline_by_source)


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

    own = engine is None
    eng = engine if engine is not None else create_ledger_engine(db_url)
    try:
        with ledger_errors(db_url, "reporting"), eng.connect() as conn:
            groups: dict[str, ReportRow] = {}
            for value, energy, baseline, purpose, sums in _group_rows(
                conn, group_by, since, until, active
            ):
                _fold(_group_row(groups, group_by, value), energy, baseline, purpose, sums)
            verdicts_recorded = conn.execute(select(verdicts_table.c.id).limit(1)).first()
            if verdicts_recorded is not None:
                for value, served, preferred in _verdict_rows(conn, group_by, since, until, active):
                    row = _group_row(groups, group_by, value)
                    if preferred is not None:
                        row.judged += 1
                        row.judge_preferred += int(preferred == served)
    finally:
        if own:
            eng.dispose()

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
    report.notes = _notes(report)
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


def _verdict_rows(
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


def _group_row(groups: dict[str, ReportRow], group_by: str, value: str) -> ReportRow:
    start: datetime | None = None
    if group_by == "day":
        start = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
        label = value
    elif group_by == "hour":
        start = datetime.strptime(value, "%Y-%m-%d %H").replace(tzinfo=UTC)
        label = f"{start:%Y-%m-%dT%H:00Z}"
    else:
        label = value or NONE_LABEL
    row = groups.get(label)
    if row is None:
        row = groups[label] = ReportRow(group=label, start=start)
    return row


def _fold(
    row: ReportRow, energy_source: str, baseline_source: str, purpose: str, sums: tuple[Any, ...]
) -> None:
    s = dict(zip(SUM_NAMES, sums, strict=True))
    requests = int(s["requests"])
    energy_kwh = float(s["energy_kwh"] or 0.0)
    carbon_g = float(s["operational_g"] or 0.0) + float(s["embodied_g"] or 0.0)
    row.requests += requests
    row.input_tokens += int(s["input_tokens"] or 0)
    row.output_tokens += int(s["output_tokens"] or 0)
    row.energy_kwh += energy_kwh
    row.kwh_by_source[energy_source] = row.kwh_by_source.get(energy_source, 0.0) + energy_kwh
    row.operational_g += float(s["operational_g"] or 0.0)
    row.embodied_g += float(s["embodied_g"] or 0.0)
    row.ci_kwh += float(s["ci_kwh"] or 0.0)
    row.split_n += int(s["split_n"] or 0)
    row.prefill_kwh += float(s["prefill_kwh"] or 0.0)
    row.decode_kwh += float(s["decode_kwh"] or 0.0)
    if purpose == "evaluation":
        # The quality loop's own generations: overhead, with no counterfactual of their own.
        row.eval_requests += requests
        row.eval_kwh += energy_kwh
        row.eval_g += carbon_g
        row.eval_output_tokens += int(s["output_tokens"] or 0)
        return
    row.serve_requests += requests
    n = int(s["baseline_n"] or 0)
    if n and baseline_source != NO_BASELINE:
        row.baseline_n += n
        row.baseline_g += float(s["baseline_g"] or 0.0)
        row.baseline_actual_g += float(s["baseline_actual_g"] or 0.0)
        row.baseline_by_source[baseline_source] = row.baseline_by_source.get(baseline_source, 0) + n


def _notes(report: Report) -> list[str]:
    t = report.totals
    notes = []
    if t.serve_requests:
        how = ", ".join(f"{n} {src}" for src, n in sorted(t.baseline_by_source.items())) or "none"
        notes.append(
            f"savings vs always-L0 cover {t.baseline_n} of {t.serve_requests} served requests "
            f"(counterfactual: {how}); {t.no_baseline} have no counterfactual and are left "
            "out of the savings, not counted as zero"
        )
    if not report.verdicts_recorded:
        notes.append(
            "judge-preferred share: n/a, no verdicts are recorded in this ledger (the quality "
            "loop records them)"
        )
    elif not t.judged:
        notes.append("judge-preferred share: n/a, no request in this window was judged")
    if 0 < t.split_n < t.requests:
        notes.append(
            f"prefill/decode split: {t.split_n} of {t.requests} requests have one (engines "
            "that report the first token's time); the prefill and decode kWh sum those only"
        )
    if t.eval_requests:
        notes.append(
            f"evaluation overhead: {t.eval_requests} generations of the quality loop, "
            f"{t.eval_kwh:.6g} kWh, {t.eval_g:.6g} gCO2e (in the totals; net savings subtract it)"
        )
    return notes


# ------------------------------------------------------------------- formatting


def _columns(report: Report) -> list[tuple[str, str, Any]]:
    """(csv name, table header, getter) for every column."""
    cols: list[tuple[str, str, Any]] = [
        ("group", report.group_by, lambda r: r.group),
        ("requests", "requests", lambda r: r.requests),
        ("kwh", "kWh", lambda r: r.energy_kwh),
    ]
    for source in report.energy_sources:
        cols.append(
            (f"kwh_{source}", f"kWh {source}", lambda r, s=source: r.kwh_by_source.get(s, 0.0))
        )
    if report.totals.split_n:
        cols += [
            ("prefill_kwh", "kWh prefill", lambda r: r.prefill_kwh if r.split_n else None),
            ("decode_kwh", "kWh decode", lambda r: r.decode_kwh if r.split_n else None),
        ]
    cols += [
        ("output_tokens_per_j", "tok/J", lambda r: r.tokens_per_j),
        ("operational_g", "op gCO2e", lambda r: r.operational_g),
        ("embodied_g", "emb gCO2e", lambda r: r.embodied_g),
        ("ci_g_per_kwh", "CI g/kWh", lambda r: r.ci_g_per_kwh),
        ("saved_g", "saved gCO2e", lambda r: r.saved_g),
        ("saved_pct", "saved %", lambda r: r.saved_pct),
    ]
    for source in report.baseline_sources:
        cols.append(
            (f"cf_{source}", f"cf {source}", lambda r, s=source: r.baseline_by_source.get(s, 0))
        )
    cols += [
        ("no_counterfactual", "no cf", lambda r: r.no_baseline),
        ("judged", "judged", lambda r: r.judged),
        ("judge_preferred_share", "judge pref", lambda r: r.judge_share),
        ("eval_requests", "eval req", lambda r: r.eval_requests),
        ("eval_g", "eval gCO2e", lambda r: r.eval_g),
        ("net_saved_g", "net saved", lambda r: r.net_saved_g),
    ]
    return cols


def _cell(value: Any, name: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if name in ("judge_preferred_share",):
            return f"{100 * value:.1f}%"
        if name == "saved_pct":
            return f"{value:.1f}"
        return f"{value:.4g}"
    return str(value)


def format_table(report: Report) -> str:
    """The report as an aligned text table, with its window and notes."""
    cols = _columns(report)
    body = [[_cell(get(r), name) for name, _, get in cols] for r in [*report.rows, report.totals]]
    headers = [header for _, header, _ in cols]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    window = (
        f"{report.since.isoformat() if report.since else 'start'} .. "
        f"{report.until.isoformat() if report.until else 'now'}"
    )
    filters = ", ".join(f"{k}={v!r}" for k, v in sorted(report.filters.items()))
    out = [f"Ledger {report.url}: {window}" + (f" where {filters}" if filters else "")]
    out.append(line(headers))
    out.append(line(["-" * w for w in widths]))
    out += [line(cells) for cells in body[:-1]]
    out.append(line(["-" * w for w in widths]))
    out.append(line(body[-1]))
    out += [f"note: {n}" for n in report.notes]
    return "\n".join(out) + "\n"


def format_csv(report: Report) -> str:
    """The report as CSV: one row per group, then a ``total`` row; ``n/a`` where undefined."""
    cols = _columns(report)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([name for name, _, _ in cols])
    for r in [*report.rows, report.totals]:
        writer.writerow(
            [
                "n/a" if (v := get(r)) is None else (repr(v) if isinstance(v, float) else v)
                for _, _, get in cols
            ]
        )
    return buf.getvalue()


def _row_json(r: ReportRow) -> dict[str, Any]:
    return {
        "group": r.group,
        "start": r.start.isoformat() if r.start else None,
        "requests": r.requests,
        "serve_requests": r.serve_requests,
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "energy_kwh": r.energy_kwh,
        "energy_kwh_by_source": dict(sorted(r.kwh_by_source.items())),
        "output_tokens_per_j": r.tokens_per_j,
        "operational_g": r.operational_g,
        "embodied_g": r.embodied_g,
        "total_g": r.total_g,
        "ci_g_per_kwh": r.ci_g_per_kwh,
        "energy_split": {
            "requests": r.split_n,
            "prefill_kwh": r.prefill_kwh if r.split_n else None,
            "decode_kwh": r.decode_kwh if r.split_n else None,
        },
        "savings": {
            "saved_g": r.saved_g,
            "saved_pct": r.saved_pct,
            "counterfactual_g": r.baseline_g if r.baseline_n else None,
            "with_counterfactual": r.baseline_n,
            "counterfactual_by_source": dict(sorted(r.baseline_by_source.items())),
            "without_counterfactual": r.no_baseline,
        },
        "judge": {
            "judged": r.judged,
            "preferred": r.judge_preferred,
            "preferred_share": r.judge_share,
        },
        "evaluation": {
            "requests": r.eval_requests,
            "energy_kwh": r.eval_kwh,
            "total_g": r.eval_g,
        },
        "net_saved_g": r.net_saved_g,
    }


def format_json(report: Report) -> str:
    """The report as JSON (undefined figures are null, explained in ``notes``)."""
    doc = {
        "ledger": report.url,
        "since": report.since.isoformat() if report.since else None,
        "until": report.until.isoformat() if report.until else None,
        "group_by": report.group_by,
        "filters": report.filters,
        "verdicts_recorded": report.verdicts_recorded,
        "rows": [_row_json(r) for r in report.rows],
        "totals": _row_json(report.totals),
        "notes": report.notes,
    }
    return json.dumps(doc, indent=2) + "\n"


def format_report(report: Report, fmt: str) -> str:
    """``report`` in one of :data:`FORMATS`.

    Raises:
        ConfigError: an unknown format.
    """
    if fmt == "table":
        return format_table(report)
    if fmt == "csv":
        return format_csv(report)
    if fmt == "json":
        return format_json(report)
    raise ConfigError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")


__all__ = [
    "FILTERS",
    "FORMATS",
    "GROUP_BYS",
    "PURPOSES",
    "Report",
    "ReportRow",
    "format_csv",
    "format_json",
    "format_report",
    "format_table",
    "ledger_report",
    "parse_time",
]
