"""Formats of audit reports (``sprout ledger report --format``): an aligned table with the
window and notes, CSV, and JSON; undefined figures read ``n/a`` (null in JSON)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from sprout.errors import ConfigError
from sprout.ledger.audit_report import Report, ReportRow

FORMATS: tuple[str, ...] = ("table", "csv", "json")


def table_lines(headers: list[str], body: list[list[str]]) -> list[str]:
    """An aligned table (the audit's and the SCI report's): the header, a rule, the rows,
    a rule, and the last row of ``body`` (the total). The first column is left-aligned,
    the others right-aligned."""
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = line(["-" * w for w in widths])
    return [line(headers), rule, *(line(row) for row in body[:-1]), rule, line(body[-1])]


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
    window = (
        f"{report.since.isoformat() if report.since else 'start'} .. "
        f"{report.until.isoformat() if report.until else 'now'}"
    )
    filters = ", ".join(f"{k}={v!r}" for k, v in sorted(report.filters.items()))
    out = [f"Ledger {report.url}: {window}" + (f" where {filters}" if filters else "")]
    out += table_lines(headers, body)
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
    "FORMATS",
    "format_csv",
    "format_json",
    "format_report",
    "format_table",
    "table_lines",
]
