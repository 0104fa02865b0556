"""``sprout dashboard``: serve the read-only ledger dashboard (see :mod:`sprout.dashboard`).

Wired into the main parser by :func:`register` (see ``sprout.cli.app.SUBCOMMAND_MODULES``);
building the parser imports nothing of the ``server`` extra.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sprout.cli.options import (
    LOOPBACK_HOSTS,
    add_settings_options,
    settings_for,
    uvicorn_log_level,
)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8090


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sprout dashboard`` to the main parser's subparsers."""
    parser = subparsers.add_parser(
        "dashboard",
        help="serve a read-only web page of the ledger at a glance",
        description="Serves one page (GET /dashboard) with carbon and energy over time "
        "against the always-L0 counterfactual, net of the quality loop's overhead; the "
        "directive mix; judged quality against its floor; tenants; outcomes; and the "
        "ledger's integrity (sprout ledger verify). Its figures come from "
        "GET /dashboard/data.json?since=&until=&bucket=hour|day|auto. The ledger is opened "
        "read-only (SQLite mode=ro) and never migrated; every route is GET only. The page "
        "has no login: keep it on a loopback or otherwise trusted address.",
    )
    add_settings_options(parser)
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    parser.set_defaults(func=_cmd_dashboard)
    return parser


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from sprout.dashboard.data import Dashboard
    from sprout.errors import ConfigError

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must lie in [0, 65535]")
    try:
        import uvicorn

        from sprout.dashboard.app import create_dashboard_app
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ConfigError(
            f"the dashboard needs the server extra: pip install 'sprout[server]' ({e})"
        ) from None
    settings = settings_for(args)
    dashboard = Dashboard.from_settings(settings)
    try:
        dashboard.check_schema()
    except BaseException:
        dashboard.close()
        raise
    if args.host not in LOOPBACK_HOSTS:
        print(
            f"sprout dashboard: warning: listening on {args.host}; the page has no login, "
            "and shows tenants' usage to anyone who can reach it",
            file=sys.stderr,
            flush=True,
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"sprout dashboard: http://{host}:{args.port}/dashboard (read-only view of "
        f"{dashboard.url}); Ctrl-C stops it",
        flush=True,
    )
    uvicorn.run(
        create_dashboard_app(dashboard),
        host=args.host,
        port=args.port,
        log_level=uvicorn_log_level(),
    )
    return 0


__all__ = ["register"]
