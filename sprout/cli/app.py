"""The ``sprout`` command: its parser, built from the command modules, and :func:`main`.

Exit codes: 0 success, 1 a runtime failure (a provider, the database), 2 bad input (an
argument, a setting, a policy file, a data file).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from sprout.errors import ConfigError, DataError, OptimizerError, SproutError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

#: The command modules, one per top-level command, in the order ``sprout --help`` lists
#: them: each has ``register(subparsers)``, which adds its parser with
#: ``set_defaults(func=...)``; ``func(args)`` returns the exit code.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "sprout.cli.demo",
    "sprout.cli.db",
    "sprout.cli.simulate",
    "sprout.cli.carbon",
    "sprout.cli.poll",
    "sprout.cli.ledger",
    "sprout.cli.serve",
    "sprout.cli.keys",
    "sprout.cli.judge",
    "sprout.cli.retrain",
    "sprout.cli.dashboard",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``sprout`` argument parser."""
    from sprout._version import __version__

    parser = argparse.ArgumentParser(
        prog="sprout", description="Carbon-aware LLM generation with a carbon ledger."
    )
    parser.add_argument("--version", action="version", version=f"sprout {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
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
