"""Software Carbon Intensity reports over the ledger (``sprout ledger report --sci``).

SCI = ((E * I) + M) per R (ISO/IEC 21031:2024), computed by :mod:`sprout.sci` from the
rows of an audit report (:func:`sprout.ledger.audit.ledger_report`, read from the hourly
rollups), for the same window, filters and group-by. Per group:

- ``E`` = the group's kWh (as metered or estimated per request) times ``pue``;
- ``E * I`` = ``pue`` times the sum of each request's kWh times the grid intensity it ran at
  (so ``I`` is the energy-weighted location-based intensity);
- ``M`` = the sum of the requests' embodied shares, as recorded on their receipts;
- ``R`` = the served requests (``purpose = serve``, any outcome); the quality loop's own
  generations and judge calls are overhead: in ``E`` and ``M``, not in ``R``.

``E``, ``E * I``, ``M`` and ``R`` add up over groups to the totals (which are their sums);
SCI of the total is the total carbon over the total ``R``. One extra query reads which kinds
of intensity (average or marginal, direct or life-cycle, provider) the window's receipts ran
at, since the rollups do not keep them; the report states them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from sprout.accounting import SPROUT_EMBODIED_G, SPROUT_LIFETIME_YEARS
from sprout.errors import ConfigError
from sprout.ledger.audit_report import FILTERS, Report, ReportRow
from sprout.ledger.migrate import create_ledger_engine, ledger_errors
from sprout.ledger.schema import receipts_table
from sprout.sci import (
    NO_OVERHEAD_PUE,
    SciFigures,
    check_emission_factor,
    check_pue,
    combine,
    sci,
)

STANDARD = "Software Carbon Intensity, ISO/IEC 21031:2024 (Green Software Foundation)"
FORMULA = "SCI = ((E * I) + M) per R"
FUNCTIONAL_UNIT = (
    "R = one served request (purpose=serve, whatever its outcome); second unit: 1,000 "
    "output tokens of the served requests"
)
#: What each energy source on a receipt covers.
ENERGY_SOURCES: dict[str, str] = {
    "measured-nvml": "the model server's GPU energy, measured by NVML",
    "measured-rapl": "the model server's CPU package and DRAM energy, measured by RAPL",
    "recorded": "energy from the bundled workload profiles (measured offline, not metered "
    "on this deployment)",
    "estimated": "estimated from tokens by a fitted energy model (not a measurement)",
}
EXCLUDED: tuple[str, ...] = (
    "client devices",
    "the network between clients, the proxy and the model server",
    "the proxy host: the process running Sprout (proxy or app), its scheduler and the "
    "ledger database, their energy and embodied emissions",
    "model training and fine-tuning",
    "the model server's idle energy between requests (energy is metered per request window)",
    "embodied emissions of anything but the serving hardware (network, storage, proxy host)",
)


@dataclass(frozen=True)
class IntensityKind:
    """Requests and kWh (before PUE) that ran at one kind of grid intensity."""

    signal_type: str  # average or marginal
    emission_factor: str  # direct or lifecycle
    provider: str
    requests: int
    energy_kwh: float


@dataclass
class SciRow:
    """One group's SCI figures, with how many of its requests were evaluation overhead."""

    group: str
    start: datetime | None
    figures: SciFigures
    eval_requests: int


@dataclass
class SciReport:
    """An SCI report: its audit report, rows, totals and every statement it makes."""

    report: Report
    rows: list[SciRow]
    totals: SciRow
    pue: float
    market_ci_g_per_kwh: float | None
    market_ci_source: str
    intensity: list[IntensityKind]
    embodied_g: float
    lifetime_years: float
    notes: list[str] = field(default_factory=list)

    @property
    def pue_statement(self) -> str:
        """``PUE 1.0 (not configured)`` or ``PUE 1.2 (setting pue)``."""
        how = "not configured" if self.pue == NO_OVERHEAD_PUE else "setting pue"
        return f"PUE {float(self.pue)} ({how})"

    def _kind(self, attr: str) -> str:
        kinds = {getattr(k, attr) for k in self.intensity}
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "n/a")

    @property
    def signal_type(self) -> str:
        """``average``, ``marginal``, ``mixed`` or ``n/a`` (no receipts)."""
        return self._kind("signal_type")

    @property
    def emission_factor(self) -> str:
        """``direct``, ``lifecycle``, ``mixed`` or ``n/a``."""
        return self._kind("emission_factor")

    def _shares(self, attr: str) -> dict[str, float]:
        """kWh by ``attr`` of the intensity kinds."""
        out: dict[str, float] = {}
        for k in self.intensity:
            out[getattr(k, attr)] = out.get(getattr(k, attr), 0.0) + k.energy_kwh
        return dict(sorted(out.items()))

    @property
    def intensity_statement(self) -> str:
        """Which grid intensity ``I`` is."""
        total = sum(k.energy_kwh for k in self.intensity)

        def split(attr: str) -> str:
            shares = self._shares(attr)
            if len(shares) == 1 or total <= 0:
                return "/".join(shares) or "n/a"
            return " / ".join(f"{name} {100 * kwh / total:.1f}%" for name, kwh in shares.items())

        return (
            f"location-based, {split('signal_type')} signal, {split('emission_factor')} "
            f"emission factor (provider {split('provider')}), energy-weighted"
        )

    @property
    def embodied_statement(self) -> str:
        """How ``M`` was amortised."""
        return (
            "embodied share of the serving hardware as recorded on each receipt: its embodied "
            "carbon over its life per second of request latency (now configured: "
            f"{self.embodied_g:,.3f} gCO2e over {self.lifetime_years:g} years)"
        )

    @property
    def market_statement(self) -> str:
        """The market-based factor and its source, or why there is none."""
        if self.market_ci_g_per_kwh is None:
            return (
                "not reported (no contractual emission factor: set market_ci_g_per_kwh and "
                "market_ci_source)"
            )
        return (
            f"F = {self.market_ci_g_per_kwh:g} gCO2e/kWh ({self.market_ci_source}); "
            "SCI market = ((E * F) + M) per R"
        )

    def boundary(self) -> dict[str, Any]:
        """The software boundary: what is in the figures and what is not."""
        t = self.report.totals
        sources = {
            name: {
                "energy_kwh": kwh,
                "share": kwh / t.energy_kwh if t.energy_kwh > 0 else None,
                "covers": ENERGY_SOURCES.get(name, "unknown energy source"),
            }
            for name, kwh in sorted(t.kwh_by_source.items())
        }
        how = (
            "; ".join(
                f"{name}, {100 * s['share']:.1f}% of kWh: {s['covers']}"
                for name, s in sources.items()
                if s["share"] is not None
            )
            or "none"
        )
        purpose = self.report.filters.get("purpose")
        if purpose == "serve":
            evaluation = "excluded by the --purpose serve filter"
        elif purpose == "evaluation":
            evaluation = "only evaluation (--purpose evaluation): R is 0"
        else:
            evaluation = "included in E and M as overhead of serving; not counted in R"
        included = [
            f"the model server's energy per request, by source: {how}",
            f"data-centre overhead: {self.pue_statement}",
            "the quality loop's own generations and judge calls (purpose=evaluation): "
            + evaluation,
            self.embodied_statement,
        ]
        return {
            "functional_unit": FUNCTIONAL_UNIT,
            "included": included,
            "excluded": list(EXCLUDED),
            "energy_sources": sources,
            "evaluation": evaluation,
        }


def _figures(row: ReportRow, pue: float, factor: float | None) -> SciFigures:
    return sci(
        it_energy_kwh=row.energy_kwh,
        ci_kwh=row.ci_kwh,
        embodied_g=row.embodied_g,
        requests=row.serve_requests,
        output_tokens=row.output_tokens - row.eval_output_tokens,
        pue=pue,
        market_ci_g_per_kwh=factor,
    )


def _intensity_kinds(conn: Any, report: Report) -> list[IntensityKind]:
    """Which intensities the window's (filtered) receipts ran at. The rollups do not keep
    them, so receipts are read: the distinct kinds first (one scan), and their kWh only when
    there are several (a second scan); with one, it covers the report's totals."""
    r = receipts_table
    kind = (r.c.ci_signal_type, r.c.ci_emission_factor, r.c.ci_provider)
    conditions = []
    if report.since is not None:
        conditions.append(r.c.created_at >= report.since)
    if report.until is not None:
        conditions.append(r.c.created_at < report.until)
    for name, value in report.filters.items():
        col = r.c[FILTERS[name]]
        conditions.append(
            (func.coalesce(col, "") if name in ("variant", "tenant") else col) == value
        )
    distinct = conn.execute(select(*kind).where(*conditions).distinct()).all()
    t = report.totals
    if not distinct:
        return []
    if len(distinct) == 1:
        (a, b, c), n, kwh = distinct[0], t.requests, t.energy_kwh
        return [IntensityKind(str(a), str(b), str(c), n, kwh)]
    stmt = (
        select(*kind, func.count(), func.coalesce(func.sum(r.c.energy_kwh), 0.0))
        .where(*conditions)
        .group_by(*kind)
    )
    kinds = [
        IntensityKind(str(a), str(b), str(c), int(n), float(kwh or 0.0))
        for a, b, c, n, kwh in conn.execute(stmt)
    ]
    return sorted(kinds, key=lambda k: (-k.energy_kwh, k.signal_type, k.provider))


def sci_report(
    report: Report,
    db_url: str,
    *,
    engine: Engine | None = None,
    pue: float = NO_OVERHEAD_PUE,
    market_ci_g_per_kwh: float | None = None,
    market_ci_source: str = "",
    embodied_g: float = SPROUT_EMBODIED_G,
    lifetime_years: float = SPROUT_LIFETIME_YEARS,
) -> SciReport:
    """The SCI of ``report``'s groups and total.

    Args:
        report: an audit report (its rows give the sums; its window and filters are
            re-used to read which intensities the receipts ran at).
        db_url, engine: the ledger the report was read from (an engine is made and disposed
            if none is given).
        pue: power usage effectiveness (>= 1.0) that scales the energy.
        market_ci_g_per_kwh, market_ci_source: a contractual emission factor and what it is,
            for market-based figures beside the location-based ones (None: none).
        embodied_g, lifetime_years: the configured embodied carbon, stated in the boundary.

    Raises:
        ConfigError: a PUE below 1, a bad factor, or a factor without its source.
        LedgerError: the database cannot be read.
    """
    try:
        pue = check_pue(pue)
    except ValueError as e:
        raise ConfigError(f"setting pue={pue!r}: {e}") from None
    try:
        factor = check_emission_factor(market_ci_g_per_kwh)
    except ValueError as e:
        raise ConfigError(f"setting market_ci_g_per_kwh={market_ci_g_per_kwh!r}: {e}") from None
    source = market_ci_source.strip()
    if factor is not None and not source:
        raise ConfigError(
            "setting market_ci_source: say what market_ci_g_per_kwh is (e.g. 'PPA 2026 "
            "residual mix'): market-based figures are stated with their source"
        )
    own = engine is None
    eng = engine if engine is not None else create_ledger_engine(db_url)
    try:
        with ledger_errors(db_url, "reporting"), eng.connect() as conn:
            kinds = _intensity_kinds(conn, report)
    finally:
        if own:
            eng.dispose()
    rows = [
        SciRow(r.group, r.start, _figures(r, pue, factor), r.eval_requests) for r in report.rows
    ]
    totals = SciRow(
        "total",
        None,
        combine((r.figures for r in rows), pue=pue, market_ci_g_per_kwh=factor),
        sum(r.eval_requests for r in rows),
    )
    out = SciReport(
        report=report,
        rows=rows,
        totals=totals,
        pue=pue,
        market_ci_g_per_kwh=factor,
        market_ci_source=source if factor is not None else "",
        intensity=kinds,
        embodied_g=embodied_g,
        lifetime_years=lifetime_years,
    )
    out.notes = _notes(out, market_ci_source)
    return out


def _notes(rep: SciReport, market_ci_source: str) -> list[str]:
    t, audit = rep.totals, rep.report.totals
    notes = []
    if not t.figures.requests:
        notes.append("no served request in this window: SCI per request is n/a")
    else:
        empty = [r.group for r in rep.rows if not r.figures.requests and r.figures.carbon_g > 0]
        if empty:
            notes.append(
                f"SCI is n/a for {', '.join(empty)}: no served request there; their emissions "
                "count in the total"
            )
    if t.eval_requests and rep.report.filters.get("purpose") != "evaluation":
        notes.append(
            f"evaluation overhead: {t.eval_requests} generations and judge calls of the "
            f"quality loop, {audit.eval_kwh:.6g} kWh before PUE, are in E and M but not in R"
        )
    if rep.signal_type == "mixed":
        notes.append(
            "I mixes average and marginal intensities (a fallback provider of another kind?); "
            "SCI asks for one kind: report a window or zone with one"
        )
    kwh = sum(k.energy_kwh for k in rep.intensity)
    default_kwh = sum(k.energy_kwh for k in rep.intensity if k.provider == "default")
    if default_kwh > 0 and kwh > 0:
        notes.append(
            f"{100 * default_kwh / kwh:.1f}% of the energy ran at the configured default "
            "intensity (no reading could be had)"
        )
    estimated = audit.kwh_by_source.get("estimated", 0.0)
    if estimated > 0 and audit.energy_kwh > 0:
        notes.append(f"{100 * estimated / audit.energy_kwh:.1f}% of E is estimated, not metered")
    if rep.pue != NO_OVERHEAD_PUE:
        notes.append(f"PUE {rep.pue} scales every request's energy in the window (E and E * I)")
    if rep.market_ci_g_per_kwh is not None:
        notes.append(
            "the contractual factor applies to all energy in the report, whatever its zone"
        )
    elif market_ci_source.strip():
        notes.append("market_ci_source is set without market_ci_g_per_kwh: no market figure")
    return notes


__all__ = [
    "ENERGY_SOURCES",
    "EXCLUDED",
    "FORMULA",
    "FUNCTIONAL_UNIT",
    "STANDARD",
    "IntensityKind",
    "SciReport",
    "SciRow",
    "sci_report",
]
