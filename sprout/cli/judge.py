"""``sprout judge run|report|schedule``: the quality loop's commands.

Wired into the main parser by :func:`register` (see ``sprout.cli.app.SUBCOMMAND_MODULES``).
Every command takes ``--db URL`` (default ``$SPROUT_DB_URL``, else the SQLite file in the
working directory) and ``--config FILE``. The report itself is
:func:`sprout.judge.report.verdict_report`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sprout.cli.app import EXIT_OK
from sprout.cli.options import (
    add_settings_options,
    existing_ledger,
    parse_time_option,
    settings_for,
)

REPORT_FORMATS: tuple[str, ...] = ("table", "json")


def _cmd_run(args: argparse.Namespace) -> int:
    from sprout.factory import build_judge_job

    settings = settings_for(args)
    existing_ledger(settings.db_url)
    job = build_judge_job(settings)
    try:
        result = job.tick() if args.timed else job.run(limit=args.limit)
    finally:
        job.close()
    print(result.describe())
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from sprout.judge.report import format_verdict_report, verdict_report

    settings = settings_for(args)
    existing_ledger(settings.db_url)
    report = verdict_report(
        settings.db_url,
        since=parse_time_option(args.since, "--since"),
        until=parse_time_option(args.until, "--until"),
    )
    if args.format == "json":
        sys.stdout.write(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
    else:
        sys.stdout.write(format_verdict_report(report))
    return EXIT_OK


def _cmd_schedule(args: argparse.Namespace) -> int:
    from sprout.factory import build_judge_job
    from sprout.scheduler import create_scheduler, run_blocking

    settings = settings_for(args)
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


__all__ = ["register"]
