"""``sprout poll``: poll the carbon provider on a schedule and store its readings in the
ledger (see :mod:`sprout.carbon.poller`).

Failures raise Sprout errors, which :func:`sprout.cli.app.main` turns into a message and exit
code 1 (a provider failed) or 2 (a bad argument or setting).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from sprout.cli.options import add_provider_options, provider_settings
from sprout.errors import ConfigError

if TYPE_CHECKING:
    from sprout.carbon.poller import PollResult


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``poll`` to the ``sprout`` sub-parsers."""
    from sprout.plugins import CARBON_PROVIDERS

    poll = subparsers.add_parser(
        "poll",
        help="poll the carbon provider and store readings in the ledger",
        description="Poll the configured carbon provider (then the fallback provider) every "
        "--interval seconds and store each reading, and the forecast every "
        "--forecast-interval seconds, in the ledger's carbon_readings table. Runs until "
        "Ctrl-C or SIGTERM; --once polls once and exits (1 if no provider answered).",
    )
    add_provider_options(poll)
    poll.add_argument("--db", metavar="URL", help="ledger SQLAlchemy URL ($SPROUT_DB_URL)")
    poll.add_argument(
        "--fallback-provider",
        choices=CARBON_PROVIDERS.names,
        help="provider asked when the first fails",
    )
    poll.add_argument("--fallback-zone", metavar="Z", help="zone for the fallback provider")
    poll.add_argument(
        "--interval", type=float, metavar="S", help="seconds between polls (signal_refresh_s)"
    )
    poll.add_argument(
        "--forecast-interval",
        type=float,
        metavar="S",
        help="seconds between forecast fetches, 0 for none (default 3600)",
    )
    poll.add_argument("--once", action="store_true", help="poll once and exit")
    poll.add_argument("--max-polls", type=int, metavar="N", help="stop after N polls")
    poll.set_defaults(func=cmd_poll)
    return poll


def cmd_poll(args: argparse.Namespace) -> int:
    """``sprout poll``: refresh the carbon signal on a schedule and store its readings."""
    from sprout.carbon.poller import CarbonPoller
    from sprout.factory import build_ledger, build_signal

    settings = provider_settings(
        args,
        db_url=args.db,
        carbon_fallback_provider=args.fallback_provider,
        carbon_fallback_zone=args.fallback_zone,
        signal_refresh_s=args.interval,
        carbon_forecast_interval_s=args.forecast_interval,
    )
    if not settings.signal_refresh_s > 0:
        raise ConfigError("--interval (signal_refresh_s) must be > 0 for polling")
    if args.max_polls is not None and args.max_polls < 1:
        raise ConfigError(f"--max-polls must be >= 1, got {args.max_polls}")
    signal = build_signal(settings)
    try:
        ledger = build_ledger(settings)
    except BaseException:
        signal.close()
        raise
    poller = CarbonPoller(
        signal, ledger=ledger, forecast_interval_s=settings.carbon_forecast_interval_s
    )
    try:
        if args.once:
            result = poller.poll_once(force=True)
            _print_poll(result)
            if result.signal.fallback not in ("provider", "secondary"):
                print(
                    f"sprout: error: no provider answered ({result.signal.error}); nothing stored",
                    file=sys.stderr,
                )
                return 1
            return 0
        print(
            f"polling {settings.carbon_provider} for {settings.zone} every "
            f"{settings.signal_refresh_s:g} s into {ledger.url} (Ctrl-C to stop)",
            flush=True,
        )
        poller.run(max(0.05, signal.retry_after_s), max_polls=args.max_polls, on_result=_print_poll)
        return 0
    finally:
        signal.close()
        ledger.close()


def _print_poll(result: PollResult) -> None:
    r = result.signal.reading
    line = (
        f"{r.time.isoformat()}  {r.zone}  {r.ci_g_per_kwh:.1f} gCO2e/kWh  {r.provider} "
        f"({result.signal.fallback})  stored {result.stored}, forecast {result.forecasts}"
    )
    if result.error:
        line += f"  [{result.error}]"
    print(line, flush=True)


__all__ = ["cmd_poll", "register"]
