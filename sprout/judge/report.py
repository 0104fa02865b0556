"""Verdicts per directive over a window of served requests: the quality loop's report.

:func:`verdict_report` reads the ledger (``sprout judge report`` prints it, the dashboard
shows it); :func:`format_verdict_report` is its table for people.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sprout.data import default_policy_path
from sprout.directives import DirectiveSet
from sprout.errors import ConfigError
from sprout.policy.base import QUALITY_KIND

if TYPE_CHECKING:
    from sqlalchemy import Engine


@dataclass
class DirectiveRow:
    """Verdict counts of one directive."""

    directive: str
    served: int = 0  # judged requests that were served this directive
    preferred: int = 0  # verdicts preferring this directive
    served_preferred: int = 0  # requests served this directive that the judge preferred


@dataclass
class VerdictReport:
    """Verdict shares per directive over a window of served requests."""

    url: str
    since: datetime | None
    until: datetime | None
    rows: list[DirectiveRow]
    outcomes: Counter[str] = field(default_factory=Counter)
    judges: list[str] = field(default_factory=list)
    queued: int = 0
    oldest_queued: datetime | None = None
    eval_requests: int = 0
    eval_by_directive: dict[str, int] = field(default_factory=dict)
    eval_kwh: float = 0.0
    eval_g: float = 0.0
    serve_g: float = 0.0
    estimate: dict[str, Any] | None = None
    estimate_note: str = ""

    @property
    def decided(self) -> int:
        """Verdicts that preferred a directive."""
        return sum(r.preferred for r in self.rows)

    @property
    def total(self) -> int:
        """Verdicts, ties and "no verdict" included."""
        return sum(self.outcomes.values())

    def share(self, row: DirectiveRow) -> float | None:
        """Share of decided verdicts preferring ``row``'s directive."""
        return row.preferred / self.decided if self.decided else None

    @property
    def normalized_preference(self) -> float | None:
        """Requests served their preferred directive, over those preferring the baseline."""
        if not self.rows:
            return None
        base = self.rows[0].preferred
        return sum(r.served_preferred for r in self.rows) / base if base else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "ledger": self.url,
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "judges": self.judges,
            "verdicts": self.total,
            "outcomes": dict(self.outcomes),
            "directives": [
                {
                    "directive": r.directive,
                    "served": r.served,
                    "preferred": r.preferred,
                    "preferred_share": self.share(r),
                    "served_preferred": r.served_preferred,
                }
                for r in self.rows
            ],
            "normalized_preference": self.normalized_preference,
            "queued": self.queued,
            "oldest_queued": None if self.oldest_queued is None else self.oldest_queued.isoformat(),
            "evaluation_overhead": {
                "requests": self.eval_requests,
                "by_directive": self.eval_by_directive,
                "kwh": self.eval_kwh,
                "g": self.eval_g,
                "share_of_served_g": self.eval_g / self.serve_g if self.serve_g else None,
            },
            "estimate": self.estimate,
            "estimate_note": self.estimate_note,
        }


def verdict_report(
    db_url: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    engine: Engine | None = None,
) -> VerdictReport:
    """Verdicts on requests served in ``[since, until)``, per directive; the queue; the
    evaluation overhead of the same window; the latest quality estimate.

    Raises:
        ConfigError: ``since >= until``.
        LedgerError: the database cannot be read.
    """
    from sqlalchemy import func, select

    from sprout.ledger.audit import ledger_report
    from sprout.ledger.migrate import create_ledger_engine, ledger_errors, mask_url
    from sprout.ledger.schema import (
        policy_versions_table,
        sampled_prompts_table,
        verdicts_table,
    )

    if since is not None and until is not None and since >= until:
        raise ConfigError(f"the window is empty: since {since} is not before until {until}")
    own = engine is None
    eng = engine if engine is not None else create_ledger_engine(db_url)
    v, s, p = verdicts_table, sampled_prompts_table, policy_versions_table
    try:
        with ledger_errors(db_url, "reading verdicts"), eng.connect() as conn:
            stmt = select(v).order_by(v.c.id)
            if since is not None:
                stmt = stmt.where(v.c.receipt_created_at >= since)
            if until is not None:
                stmt = stmt.where(v.c.receipt_created_at < until)
            latest: dict[str, Any] = {}
            for row in conn.execute(stmt).mappings():
                latest[row["request_id"]] = row  # a re-judged request's last verdict wins
            judged = select(v.c.id).where(
                v.c.receipt_created_at == s.c.created_at, v.c.request_id == s.c.request_id
            )
            queued = select(func.count(), func.min(s.c.created_at)).where(
                s.c.purpose == "serve", ~judged.exists()
            )
            n_queued, oldest = conn.execute(queued).one()
            version = (
                conn.execute(
                    select(p.c.params, p.c.note)
                    .where(p.c.kind == QUALITY_KIND)
                    .order_by(p.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        overhead = ledger_report(db_url, engine=eng, since=since, until=until, group_by="directive")
    finally:
        if own:
            eng.dispose()

    # Directive order: the estimate's (the directive set's) first, then any others seen.
    order: list[str] = list(version["params"].get("levels", [])) if version else []
    if not order:
        order = list(DirectiveSet.load(default_policy_path()).names)
    rows = {name: DirectiveRow(name) for name in order}
    report = VerdictReport(mask_url(db_url), since, until, [])
    for row in latest.values():
        outcome = (row["detail"] or {}).get("outcome") or (
            "preferred" if row["preferred_directive"] else "no-verdict"
        )
        report.outcomes[outcome] += 1
        if row["judge"] not in report.judges:
            report.judges.append(row["judge"])
        served = rows.setdefault(row["served_directive"], DirectiveRow(row["served_directive"]))
        served.served += 1
        preferred = row["preferred_directive"]
        if preferred is not None:
            rows.setdefault(preferred, DirectiveRow(preferred)).preferred += 1
            served.served_preferred += int(preferred == row["served_directive"])
    report.rows = list(rows.values())
    report.queued = int(n_queued or 0)
    report.oldest_queued = oldest
    for group in overhead.rows:
        if group.eval_requests:
            report.eval_by_directive[group.group] = group.eval_requests
    report.eval_requests = overhead.totals.eval_requests
    report.eval_kwh = overhead.totals.eval_kwh
    report.eval_g = overhead.totals.eval_g
    report.serve_g = overhead.totals.total_g - overhead.totals.eval_g
    if version is not None:
        report.estimate = dict(version["params"])
        report.estimate_note = version["note"] or ""
    return report


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_verdict_report(report: VerdictReport) -> str:
    """The report as a table for people."""
    if report.since is None and report.until is None:
        window = "at any time"
    else:
        window = (
            f"from {'the start' if report.since is None else f'{report.since:%Y-%m-%d %H:%M}'} "
            f"to {'now' if report.until is None else f'{report.until:%Y-%m-%d %H:%M}'} UTC"
        )
    o = report.outcomes
    lines = [
        f"Judge verdicts in {report.url}",
        f"requests served {window}; judge: {', '.join(report.judges) or 'none yet'}",
        f"verdicts: {report.total} ({o.get('preferred', 0)} preferred one directive, "
        f"{o.get('tie', 0)} ties, {o.get('no-verdict', 0)} no verdict)",
        "",
        f"{'directive':<10} {'served':>7} {'preferred':>10} {'share':>7} "
        f"{'served & preferred':>19}",
    ]
    for r in report.rows:
        kept = f"{r.served_preferred}/{r.served}" if r.served else "-"
        lines.append(
            f"{r.directive:<10} {r.served:>7} {r.preferred:>10} {_pct(report.share(r)):>7} "
            f"{kept:>19}"
        )
    base = report.rows[0].directive if report.rows else "L0"
    lines += [
        "",
        f"normalized preference: {_pct(report.normalized_preference)} (requests served the "
        f"directive the judge preferred, over those where it preferred {base})",
    ]
    if report.queued:
        lines.append(
            f"queued: {report.queued} sampled requests await the judge "
            f"(oldest {report.oldest_queued:%Y-%m-%d %H:%M} UTC)"
        )
    else:
        lines.append("queued: none")
    by = ", ".join(f"{d} {n}" for d, n in sorted(report.eval_by_directive.items())) or "none"
    share = f" = {_pct(report.eval_g / report.serve_g)} of served" if report.serve_g else ""
    lines.append(
        f"evaluation overhead: {report.eval_requests} generations ({by}), "
        f"{report.eval_kwh * 1000:.3f} Wh, {report.eval_g:.3f} gCO2e{share}"
    )
    e = report.estimate
    if e:
        q = ", ".join(
            f"{name} {value:.3f}" for name, value in zip(e["levels"], e["quality"], strict=False)
        )
        try:
            at = f"{datetime.fromisoformat(str(e.get('at'))):%Y-%m-%d %H:%M} UTC"
        except ValueError:
            at = "?"
        lines.append(
            f"quality estimate ({at}): {q}; normalized preference "
            f"{_pct(e.get('preference'))}, floor {_pct(e.get('floor'))}, guard serves "
            f"{_pct(e.get('l0_share'))} at {e['levels'][0] if e['levels'] else 'L0'}"
        )
        if report.estimate_note.startswith("WARNING"):
            lines.append(report.estimate_note)
    else:
        lines.append("quality estimate: none yet (the bundled GPT-4 judgments are used)")
    return "\n".join(lines) + "\n"


__all__ = [
    "DirectiveRow",
    "VerdictReport",
    "format_verdict_report",
    "verdict_report",
]
