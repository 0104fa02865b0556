"""``sprout ledger verify|report|plot|prune``: the auditor's and operator's commands
(``keygen``, ``checkpoint`` and ``recover`` live in :mod:`sprout.cli.ledger_integrity`).

Wired into the main parser by :func:`register` (see ``sprout.cli.app.SUBCOMMAND_MODULES``).
Every command takes ``--db URL`` (default ``$SPROUT_DB_URL``, else the SQLite file in the
working directory) and ``--config FILE``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sprout.cli.app import EXIT_OK
from sprout.cli.options import (
    add_settings_options,
    existing_ledger,
    parse_time_option,
    settings_for,
)


def _add_window(parser: argparse.ArgumentParser) -> None:
    from sprout.ledger.audit_report import PURPOSES
    from sprout.receipt import OUTCOMES

    parser.add_argument("--since", metavar="TIME", help="from this ISO 8601 date/time (UTC)")
    parser.add_argument("--until", metavar="TIME", help="up to (excluding) this date/time")
    parser.add_argument("--zone", help="only this grid zone")
    parser.add_argument("--directive", help="only this directive")
    parser.add_argument("--variant", help="only this model variant ('' for none)")
    parser.add_argument("--tenant", help="only this tenant ('' for none)")
    parser.add_argument("--purpose", choices=PURPOSES, help="only served or evaluation requests")
    parser.add_argument("--outcome", choices=OUTCOMES, help="only generations that ended this way")


def _report(args: argparse.Namespace, group_by: str) -> Any:
    from sprout.ledger.audit import ledger_report

    settings = settings_for(args)
    return ledger_report(
        settings.db_url,
        since=parse_time_option(args.since, "--since"),
        until=parse_time_option(args.until, "--until"),
        group_by=group_by,
        filters={
            "zone": args.zone,
            "directive": args.directive,
            "variant": args.variant,
            "tenant": args.tenant,
            "purpose": args.purpose,
            "outcome": args.outcome,
        },
    )


def _cmd_verify(args: argparse.Namespace) -> int:
    from sprout.cli.ledger_integrity import run_verify

    settings = settings_for(args)
    existing_ledger(settings.db_url)
    return run_verify(args, settings)


def _cmd_report(args: argparse.Namespace) -> int:
    from sprout.ledger.audit_format import format_report

    settings = settings_for(args)
    existing_ledger(settings.db_url)
    report = _report(args, args.group_by)
    if args.sci:
        from sprout.ledger.sci_format import format_sci
        from sprout.ledger.sci_report import sci_report

        sci = sci_report(
            report,
            settings.db_url,
            pue=settings.pue,
            market_ci_g_per_kwh=settings.market_ci_g_per_kwh,
            market_ci_source=settings.market_ci_source,
            embodied_g=settings.embodied_g,
            lifetime_years=settings.lifetime_years,
        )
        text = format_sci(sci, args.format)
    else:
        text = format_report(report, args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _cmd_plot(args: argparse.Namespace) -> int:
    from sprout.ledger.plot import plot_report

    existing_ledger(settings_for(args).db_url)
    out = plot_report(_report(args, args.bucket), args.out)
    print(f"wrote {out}")
    return EXIT_OK


def _cmd_prune(args: argparse.Namespace) -> int:
    from sprout.ledger.locks import job_lock
    from sprout.ledger.retention import prune_cutoff, prune_prompts

    settings = settings_for(args)
    existing_ledger(settings.db_url)
    days = settings.prompt_retention_days if args.days is None else args.days
    now = parse_time_option(args.now, "--now")
    cutoff = prune_cutoff(days, now)
    if cutoff is None:
        print("retention is 0 days: sampled prompts are kept forever; nothing to prune")
        return EXIT_OK
    with job_lock(settings.db_url, "prune") as acquired:
        if not acquired:
            print("another process is pruning this ledger; nothing done")
            return EXIT_OK
        n = prune_prompts(settings.db_url, days, now=now, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {n} sampled prompts stored before {cutoff:%Y-%m-%d %H:%M:%S} UTC")
    return EXIT_OK


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sprout ledger ...`` to the main parser's subparsers."""
    from sprout.cli import ledger_integrity
    from sprout.ledger.audit_format import FORMATS
    from sprout.ledger.audit_report import GROUP_BYS
    from sprout.ledger.plot import BUCKETS

    ledger = subparsers.add_parser(
        "ledger",
        help="audit the carbon ledger: verify, checkpoint, recover, report, plot, prune",
        description="Audit commands over the carbon ledger.",
    )
    sub = ledger.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)

    verify = sub.add_parser(
        "verify",
        help="check the hash chains; exit 0 only when the ledger is intact",
        description="Recompute every receipt's hash, check each chain's links and recorded "
        "head, the hourly rollups and the policy versions; name the first altered, deleted "
        "or inserted row of each chain. With --checkpoint, also recompute each chain up to "
        "the signed checkpoint and compare. Receipts waiting in the spool or a stopped "
        "process's journal are counted. Exit code 0 only when intact with nothing pending, "
        "1 when a problem is found, 2 for a bad key or checkpoint file, 3 when intact but "
        "receipts are pending (run `sprout ledger recover`).",
    )
    add_settings_options(verify)
    verify.add_argument("--no-rollups", action="store_true", help="skip the rollup check")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    ledger_integrity.add_verify_options(verify)
    verify.set_defaults(func=_cmd_verify)
    ledger_integrity.register(sub)

    report = sub.add_parser(
        "report",
        help="totals per day, hour, zone, directive, variant or tenant",
        description="Requests, kWh by energy source, output tokens per joule, gCO2e "
        "operational and embodied, savings against the always-L0 counterfactual (and how it "
        "was estimated), judge-preferred share and evaluation overhead.",
    )
    add_settings_options(report)
    _add_window(report)
    report.add_argument("--group-by", choices=GROUP_BYS, default="day", help="(default day)")
    report.add_argument("--format", choices=FORMATS, default="table", help="(default table)")
    report.add_argument("--output", "-o", metavar="FILE", help="write to FILE, not stdout")
    report.add_argument(
        "--sci",
        action="store_true",
        help="Software Carbon Intensity (ISO/IEC 21031): ((E*I)+M) per served request and "
        "per 1,000 output tokens, with PUE (setting pue), a market-based figure when "
        "market_ci_g_per_kwh is set, and the software boundary",
    )
    report.set_defaults(func=_cmd_report)

    plot = sub.add_parser(
        "plot",
        help="draw carbon intensity, emissions and savings over time",
        description="Draws the energy-weighted carbon intensity, operational and embodied "
        "emissions, and savings against always-L0 (per bucket and cumulative, net of "
        "evaluation overhead) to an image file.",
    )
    add_settings_options(plot)
    _add_window(plot)
    plot.add_argument("--bucket", choices=BUCKETS, default="hour", help="(default hour)")
    plot.add_argument(
        "--out", "-o", default="sprout-ledger.png", help="image file (default sprout-ledger.png)"
    )
    plot.set_defaults(func=_cmd_plot)

    prune = sub.add_parser(
        "prune",
        help="delete sampled prompts past the retention period",
        description="Deletes stored sampled prompts older than the retention period "
        "(setting prompt_retention_days, default 30; 0 keeps them). Receipts and their hash "
        "chains are never pruned and still verify. Replicas take turns (a job lock).",
    )
    add_settings_options(prune)
    prune.add_argument("--days", type=float, help="retention in days (default: the setting)")
    prune.add_argument("--now", metavar="TIME", help="prune as of this time (default: now)")
    prune.add_argument("--dry-run", action="store_true", help="only count")
    prune.set_defaults(func=_cmd_prune)
    return ledger


__all__ = ["register"]
