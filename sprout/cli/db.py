"""``sprout db upgrade|current``: the ledger's schema migrations (see
:mod:`sprout.ledger.migrate`)."""

from __future__ import annotations

import argparse
from typing import Any

from sprout.cli.app import EXIT_OK
from sprout.cli.options import add_settings_options, settings_for


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from sprout.ledger.migrate import current_revision, mask_url, upgrade

    settings = settings_for(args)
    upgrade(settings.db_url, args.revision)
    print(f"{mask_url(settings.db_url)} is at revision {current_revision(settings.db_url)}")
    return EXIT_OK


def _cmd_db_current(args: argparse.Namespace) -> int:
    from sprout.ledger.migrate import current_revision

    settings = settings_for(args)
    print(current_revision(settings.db_url) or "(no schema: run `sprout db upgrade`)")
    return EXIT_OK


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sprout db ...`` to the main parser's subparsers."""
    db = subparsers.add_parser("db", help="ledger schema migrations")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_sub.add_parser("upgrade", help="migrate the ledger schema (creates it if new)")
    add_settings_options(up)
    up.add_argument("--revision", default="head", help="target revision (default head)")
    up.set_defaults(func=_cmd_db_upgrade)
    cur = db_sub.add_parser("current", help="print the ledger's schema revision")
    add_settings_options(cur)
    cur.set_defaults(func=_cmd_db_current)
    return db


__all__ = ["register"]
