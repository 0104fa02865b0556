"""Formats of SCI reports (:mod:`sprout.ledger.sci_report`): an aligned table, CSV with
``#`` comment lines, and JSON; each states the formula, PUE, the kind of grid intensity,
the embodied amortisation, the market-based factor and the software boundary."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from sprout.errors import ConfigError
from sprout.ledger.audit_format import FORMATS, table_lines
from sprout.ledger.sci_report import FORMULA, FUNCTIONAL_UNIT, STANDARD, SciReport, SciRow
from sprout.sci import NO_OVERHEAD_PUE


def _columns(rep: SciReport) -> list[tuple[str, str, Any]]:
    """(csv name, table header, getter of a row's figures) for every column."""
    cols: list[tuple[str, str, Any]] = [
        ("requests", "R req", lambda f: f.requests),
        ("energy_kwh", "E kWh", lambda f: f.energy_kwh),
        ("ci_g_per_kwh", "I g/kWh", lambda f: f.intensity_g_per_kwh),
        ("operational_g", "E*I gCO2e", lambda f: f.operational_g),
        ("embodied_g", "M gCO2e", lambda f: f.embodied_g),
        ("sci_g_per_request", "SCI g/req", lambda f: f.per_request),
        ("output_tokens", "out tok", lambda f: f.output_tokens),
        ("sci_g_per_1k_output_tokens", "SCI g/1k tok", lambda f: f.per_1k_output_tokens),
    ]
    if rep.market_ci_g_per_kwh is not None:
        cols += [
            ("market_operational_g", "E*F gCO2e", lambda f: f.market_operational_g),
            ("sci_market_g_per_request", "mkt g/req", lambda f: f.market_per_request),
            (
                "sci_market_g_per_1k_output_tokens",
                "mkt g/1k tok",
                lambda f: f.market_per_1k_output_tokens,
            ),
        ]
    return cols


def _header(rep: SciReport) -> list[str]:
    a = rep.report
    window = (
        f"{a.since.isoformat() if a.since else 'start'} .. "
        f"{a.until.isoformat() if a.until else 'now'}"
    )
    filters = ", ".join(f"{k}={v!r}" for k, v in sorted(a.filters.items()))
    return [
        f"{STANDARD}; ledger {a.url}: {window}" + (f" where {filters}" if filters else ""),
        f"{FORMULA}; {FUNCTIONAL_UNIT}",
        f"E = model-server energy x {rep.pue_statement}",
        f"I = {rep.intensity_statement}",
        f"M = {rep.embodied_statement}",
        f"market-based: {rep.market_statement}",
    ]


def _statements(rep: SciReport) -> list[str]:
    b = rep.boundary()
    return [
        *(f"boundary included: {s}" for s in b["included"]),
        *(f"boundary excluded: {s}" for s in b["excluded"]),
        *(f"note: {n}" for n in rep.notes),
    ]


def format_sci_table(rep: SciReport) -> str:
    """The SCI report as an aligned text table, with its statements and boundary."""
    cols = [("group", rep.report.group_by, None), *_columns(rep), ("eval", "eval req", None)]

    def cells(r: SciRow) -> list[str]:
        out = [r.group]
        for _, _, get in cols[1:-1]:
            v = get(r.figures)
            out.append("n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        return [*out, str(r.eval_requests)]

    body = [cells(r) for r in [*rep.rows, rep.totals]]
    headers = [h for _, h, _ in cols]
    out = [*_header(rep), *table_lines(headers, body), *_statements(rep)]
    return "\n".join(out) + "\n"


def format_sci_csv(rep: SciReport) -> str:
    """CSV: ``#`` comment lines with the statements and boundary, then one row per group and
    a ``total`` row (``n/a`` where a figure is undefined)."""
    buf = io.StringIO()
    for statement in [*_header(rep), *_statements(rep)]:
        buf.write(f"# {statement}\n")
    cols = _columns(rep)
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["group", "pue", *(name for name, _, _ in cols), "evaluation_requests"])
    for r in [*rep.rows, rep.totals]:
        values = [get(r.figures) for _, _, get in cols]
        writer.writerow(
            [
                r.group,
                repr(rep.pue),
                *("n/a" if v is None else repr(v) if isinstance(v, float) else v for v in values),
                r.eval_requests,
            ]
        )
    return buf.getvalue()


def _row_json(r: SciRow) -> dict[str, Any]:
    f = r.figures
    return {
        "group": r.group,
        "start": r.start.isoformat() if r.start else None,
        "requests": f.requests,
        "evaluation_requests": r.eval_requests,
        "it_energy_kwh": f.it_energy_kwh,
        "energy_kwh": f.energy_kwh,
        "ci_g_per_kwh": f.intensity_g_per_kwh,
        "operational_g": f.operational_g,
        "embodied_g": f.embodied_g,
        "carbon_g": f.carbon_g,
        "sci_g_per_request": f.per_request,
        "output_tokens": f.output_tokens,
        "sci_g_per_1k_output_tokens": f.per_1k_output_tokens,
        "market_operational_g": f.market_operational_g,
        "market_carbon_g": f.market_carbon_g,
        "sci_market_g_per_request": f.market_per_request,
        "sci_market_g_per_1k_output_tokens": f.market_per_1k_output_tokens,
    }


def format_sci_json(rep: SciReport) -> str:
    """JSON: the statements (``pue``, ``intensity``, ``embodied``, ``market``, ``boundary``),
    rows and totals; undefined figures are null."""
    a = rep.report
    market = None
    if rep.market_ci_g_per_kwh is not None:
        market = {
            "method": "market-based (GHG Protocol scope 2)",
            "ci_g_per_kwh": rep.market_ci_g_per_kwh,
            "source": rep.market_ci_source,
            "formula": "SCI market = ((E * F) + M) per R",
        }
    doc = {
        "standard": STANDARD,
        "formula": FORMULA,
        "functional_unit": FUNCTIONAL_UNIT,
        "ledger": a.url,
        "since": a.since.isoformat() if a.since else None,
        "until": a.until.isoformat() if a.until else None,
        "group_by": a.group_by,
        "filters": a.filters,
        "pue": {
            "value": rep.pue,
            "configured": rep.pue != NO_OVERHEAD_PUE,
            "statement": rep.pue_statement,
        },
        "intensity": {
            "method": "location-based",
            "signal_type": rep.signal_type,
            "emission_factor": rep.emission_factor,
            "statement": rep.intensity_statement,
            "kinds": [
                {
                    "signal_type": k.signal_type,
                    "emission_factor": k.emission_factor,
                    "provider": k.provider,
                    "requests": k.requests,
                    "it_energy_kwh": k.energy_kwh,
                }
                for k in rep.intensity
            ],
        },
        "embodied": {
            "statement": rep.embodied_statement,
            "configured_embodied_g": rep.embodied_g,
            "configured_lifetime_years": rep.lifetime_years,
        },
        "market": market,
        "boundary": rep.boundary(),
        "rows": [_row_json(r) for r in rep.rows],
        "totals": _row_json(rep.totals),
        "notes": rep.notes,
    }
    return json.dumps(doc, indent=2) + "\n"


def format_sci(rep: SciReport, fmt: str) -> str:
    """``rep`` in one of :data:`sprout.ledger.audit_format.FORMATS`.

    Raises:
        ConfigError: an unknown format.
    """
    if fmt == "table":
        return format_sci_table(rep)
    if fmt == "csv":
        return format_sci_csv(rep)
    if fmt == "json":
        return format_sci_json(rep)
    raise ConfigError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")


__all__ = [
    "format_sci",
    "format_sci_csv",
    "format_sci_json",
    "format_sci_table",
]
