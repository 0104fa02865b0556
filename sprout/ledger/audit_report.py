"""Audit report rows and their aggregation: what a row of ``sprout ledger report`` says.

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

The queries that fill the rows are :mod:`sprout.ledger.audit`; their formats are
:mod:`sprout.ledger.audit_format`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sprout.accounting import J_PER_KWH
from sprout.ledger.rollup import NO_BASELINE, SUM_NAMES

#: What a report may group by, the purposes receipts record, and the filters it takes.
GROUP_BYS: tuple[str, ...] = (
    "day",
    "hour",
    "zone",
    "directive",
    "variant",
    "tenant",
    "outcome",
)
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


def group_row(groups: dict[str, ReportRow], group_by: str, value: str) -> ReportRow:
    """The row in ``groups`` of a query's group value (``YYYY-MM-DD`` for days,
    ``YYYY-MM-DD HH`` for hours, else the key, "" for none), made on first use."""
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


def fold(
    row: ReportRow, energy_source: str, baseline_source: str, purpose: str, sums: tuple[Any, ...]
) -> None:
    """Add to ``row`` the sums (:data:`~sprout.ledger.rollup.SUM_NAMES` order) of one
    energy source, counterfactual source and purpose."""
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


def report_notes(report: Report) -> list[str]:
    """What a reader of ``report`` must know: counterfactual coverage, missing verdicts, a
    partial prefill/decode split, evaluation overhead."""
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


__all__ = [
    "NONE_LABEL",
    "Report",
    "ReportRow",
    "fold",
    "group_row",
    "report_notes",
]
