"""``sprout demo``: replay hours of a bundled carbon trace with bundled prompts through the
controller (see :mod:`sprout.demo`)."""

from __future__ import annotations

import argparse
from typing import Any

from sprout.cli.app import EXIT_OK
from sprout.cli.options import add_settings_options, settings_for


def _cmd_demo(args: argparse.Namespace) -> int:
    from sprout.config import DEFAULT_DB_FILE
    from sprout.demo import print_summary, run_demo

    settings = settings_for(
        args, zone=args.zone, policy_file=args.policy, xi=args.xi, carbon_trace=args.carbon
    )
    if args.db is None and not _env_db_url():
        # No ledger named: the demo writes a fresh one of its own beside the default file.
        from pathlib import Path

        demo_file = Path.cwd() / DEFAULT_DB_FILE.replace("ledger", "demo")
        for stale in (demo_file, Path(f"{demo_file}-wal"), Path(f"{demo_file}-shm")):
            stale.unlink(missing_ok=True)
        settings = settings.replace(db_url=f"sqlite:///{demo_file}")
    print(
        f"Sprout demo: {args.hours} h of {settings.carbon_trace or settings.zone} carbon "
        f"intensity from trace hour {args.start_hour}, {args.prompts} bundled prompts, "
        f"xi={settings.xi}",
        flush=True,
    )
    summary = run_demo(
        settings,
        hours=args.hours,
        start_hour=args.start_hour,
        prompts=args.prompts,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print_summary(summary)
    return EXIT_OK


def _env_db_url() -> str:
    import os

    return os.environ.get("SPROUT_DB_URL", "")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sprout demo`` to the main parser's subparsers."""
    from sprout.demo import DEFAULT_START_HOUR

    demo = subparsers.add_parser(
        "demo",
        help="replay a day of carbon intensity with bundled prompts through the controller",
        description="Replays hours of a bundled zone's 2023 carbon trace with bundled prompts "
        "through the real controller (replay engine, trace carbon, SQLite ledger) and prints "
        "the hourly directive mix, the carbon against always-L0 and the judge-preferred share.",
    )
    add_settings_options(demo)
    demo.add_argument("--zone", help="bundled zone: GB, US-CAL-CISO, US-TEX-ERCO (default GB)")
    demo.add_argument("--carbon", metavar="CSV", help="an hourly CSV to replay instead of a zone")
    demo.add_argument("--hours", type=int, default=24, help="hours to replay (default 24)")
    demo.add_argument(
        "--start-hour",
        type=int,
        default=DEFAULT_START_HOUR,
        help=f"trace hour to start at (default {DEFAULT_START_HOUR}, mid June)",
    )
    demo.add_argument("--prompts", type=int, default=300, help="requests (default 300)")
    demo.add_argument("--seed", type=int, default=0, help="seed of prompts and draws")
    demo.add_argument("--policy", metavar="FILE", help="directive policy TOML file")
    demo.add_argument("--xi", type=float, help="largest quality concession (default 0.1)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)
    return demo


__all__ = ["register"]
