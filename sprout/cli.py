"""The ``sprout`` command.

Exit codes: 0 success, 1 a runtime failure (a provider, the database), 2 bad input (an
argument, a setting, a policy file, a data file).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sprout.errors import ConfigError, DataError, OptimizerError, SproutError

if TYPE_CHECKING:
    from sprout.config import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

#: Modules that add subcommands: each has ``register(subparsers)``, which adds its parser(s)
#: with ``set_defaults(func=...)``; ``func(args)`` returns the exit code.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "sprout.sim.cli",
    "sprout.carbon.cli",
    "sprout.ledger.cli",
    "sprout.server_cli",
    "sprout.judge.cli",
    "sprout.policy.cli",
    "sprout.dashboard.cli",
)


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--db URL`` and ``--config FILE``, shared by every command that reads settings."""
    parser.add_argument(
        "--db",
        metavar="URL",
        help="ledger SQLAlchemy URL (default: $SPROUT_DB_URL, else a SQLite file in the "
        "working directory)",
    )
    parser.add_argument("--config", metavar="FILE", help="settings TOML file ($SPROUT_CONFIG)")


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    from sprout.config import load_settings

    return load_settings(config=args.config, db_url=args.db, **overrides)


def _cmd_demo(args: argparse.Namespace) -> int:
    from sprout.config import DEFAULT_DB_FILE
    from sprout.demo import print_summary, run_demo

    settings = _settings(
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


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from sprout.ledger.migrate import current_revision, mask_url, upgrade

    settings = _settings(args)
    upgrade(settings.db_url, args.revision)
    print(f"{mask_url(settings.db_url)} is at revision {current_revision(settings.db_url)}")
    return EXIT_OK


def _cmd_db_current(args: argparse.Namespace) -> int:
    from sprout.ledger.migrate import current_revision

    settings = _settings(args)
    print(current_revision(settings.db_url) or "(no schema: run `sprout db upgrade`)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The ``sprout`` argument parser."""
    from sprout import __version__
    from sprout.demo import DEFAULT_START_HOUR

    parser = argparse.ArgumentParser(
        prog="sprout", description="Carbon-aware LLM generation with a carbon ledger."
    )
    parser.add_argument("--version", action="version", version=f"sprout {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
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

    db = sub.add_parser("db", help="ledger schema migrations")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_sub.add_parser("upgrade", help="migrate the ledger schema (creates it if new)")
    add_settings_options(up)
    up.add_argument("--revision", default="head", help="target revision (default head)")
    up.set_defaults(func=_cmd_db_upgrade)
    cur = db_sub.add_parser("current", help="print the ledger's schema revision")
    add_settings_options(cur)
    cur.set_defaults(func=_cmd_db_current)

    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sprout`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (ConfigError, DataError, OptimizerError) as e:
        print(f"sprout: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SproutError as e:
        print(f"sprout: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("sprout: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
