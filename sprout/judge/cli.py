"""``sprout judge run|report|schedule``: the quality loop's commands.

Wired into the main parser by :func:`register` (see ``sprout.cli.SUBCOMMAND_MODULES``).
Every command takes ``--db URL`` (default ``$SPROUT_DB_URL``, else the SQLite file in the
working directory) and ``--config FILE``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sprout.cli import add_settings_options
from sprout.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy import Engine

EXIT_OK = 0
REPORT_FORMATS: tuple[str, ...] = ("table", "json")


def _settings(args: argparse.Namespace) -> Any:
    from sprout.config import load_settings

    return load_settings(config=args.config, db_url=args.db)


def _existing_ledger(db_url: str) -> None:
    """Refuse a SQLite file that does not exist (rather than create an empty one)."""
    from sprout.ledger.migrate import ensure_schema, sqlite_file

    path = sqlite_file(db_url)
    if path is not None and not path.exists():
        raise ConfigError(f"no ledger at {path} (give --db URL or set SPROUT_DB_URL)")
    ensure_schema(db_url)


# ---------------------------------------------------------------------------- report


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

    from sprout.directives import DirectiveSet
    from sprout.judge.job import QUALITY_KIND
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
        from sprout.data import default_policy_path

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


# ---------------------------------------------------------------------------- commands


def _cmd_run(args: argparse.Namespace) -> int:
    from sprout.judge.job import build_judge_job

    settings = _settings(args)
    _existing_ledger(settings.db_url)
    job = build_judge_job(settings)
    try:
        result = job.tick() if args.timed else job.run(limit=args.limit)
    finally:
        job.close()
    print(result.describe())
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from sprout.ledger.audit import parse_time

    settings = _settings(args)
    _existing_ledger(settings.db_url)
    report = verdict_report(
        settings.db_url,
        since=None if args.since is None else parse_time(args.since, option="--since"),
        until=None if args.until is None else parse_time(args.until, option="--until"),
    )
    if args.format == "json":
        sys.stdout.write(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
    else:
        sys.stdout.write(format_verdict_report(report))
    return EXIT_OK


def _cmd_schedule(args: argparse.Namespace) -> int:
    from sprout.judge.job import build_judge_job
    from sprout.scheduler import create_scheduler, run_blocking

    settings = _settings(args)
    job = build_judge_job(settings)
    scheduler = create_scheduler(blocking=True, max_workers=1)
    try:
        job.schedule(scheduler, settings.judge_cron)
        print(
            f"judge job scheduled ({settings.judge_cron!r} UTC, timing rule "
            f"{'with' if settings.judge_use_forecast else 'without'} forecasts, max staleness "
            f"{settings.judge_max_staleness_h:g} h); Ctrl-C stops it",
            flush=True,
        )
        run_blocking(scheduler)
    finally:
        job.close()
    return EXIT_OK


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sprout judge ...`` to the main parser's subparsers."""
    judge = subparsers.add_parser(
        "judge",
        help="the quality loop: judge sampled requests, report verdicts",
        description="Sampled requests are answered under the other directives and judged by "
        "an LLM (or the recorded GPT-4 verdicts); the verdicts refresh the optimizer's "
        "quality estimates.",
    )
    sub = judge.add_subparsers(dest="judge_command", metavar="ACTION", required=True)

    run = sub.add_parser(
        "run",
        help="process the queue of sampled requests now",
        description="Answers the queued sampled requests under the other directives, judges "
        "them, writes the verdicts and the evaluation receipts, and refreshes the quality "
        "estimates. With --timed, only if the timing rule (low carbon, or the staleness "
        "deadline) says so.",
    )
    add_settings_options(run)
    run.add_argument("--limit", type=int, help="most requests (default: judge_batch_size)")
    run.add_argument("--timed", action="store_true", help="apply the timing rule first")
    run.set_defaults(func=_cmd_run)

    report = sub.add_parser(
        "report",
        help="verdict shares per directive over a period",
        description="Verdicts on requests served in the window: how often each directive's "
        "answer was preferred, how often requests got the preferred directive, the queue, "
        "the evaluation overhead and the latest quality estimate.",
    )
    add_settings_options(report)
    report.add_argument("--since", metavar="TIME", help="requests from this ISO 8601 time (UTC)")
    report.add_argument("--until", metavar="TIME", help="up to (excluding) this time")
    report.add_argument("--format", choices=REPORT_FORMATS, default="table", help="(default table)")
    report.set_defaults(func=_cmd_report)

    schedule = sub.add_parser(
        "schedule",
        help="run the judge job on its schedule until stopped",
        description="Wakes up on judge_cron (hourly by default) and runs the judge job when "
        "the timing rule says so: a low-carbon hour (forecast-aware when the provider gives "
        "forecasts), and always within judge_max_staleness_h of a request being sampled.",
    )
    add_settings_options(schedule)
    schedule.set_defaults(func=_cmd_schedule)
    return judge


__all__ = [
    "DirectiveRow",
    "VerdictReport",
    "format_verdict_report",
    "register",
    "verdict_report",
]
