"""``sprout carbon now`` and ``sprout poll``: live carbon intensity from the command line.

``register(subparsers)`` adds both to the ``sprout`` parser. Failures raise Sprout errors,
which ``sprout.cli.main`` turns into a message and exit code 1 (a provider failed) or 2 (a
bad argument or setting).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sprout.config import CARBON_PROVIDERS
from sprout.errors import ConfigError, ProviderError, SproutError

if TYPE_CHECKING:
    from sprout.carbon.base import CarbonReading
    from sprout.carbon.poller import PollResult
    from sprout.config import Settings

#: The setting holding each live provider's base URL.
BASE_URL_SETTINGS = {
    "electricitymaps": "electricitymaps_base_url",
    "watttime": "watttime_base_url",
    "uk": "uk_base_url",
}


def register(subparsers: Any) -> None:
    """Add ``carbon now`` and ``poll`` to the ``sprout`` sub-parsers."""
    carbon = subparsers.add_parser(
        "carbon",
        help="read live grid carbon intensity",
        description="Carbon intensity from a provider, as the controller would read it.",
    )
    carbon_sub = carbon.add_subparsers(dest="carbon_command", metavar="ACTION", required=True)
    now = carbon_sub.add_parser(
        "now",
        help="print a provider's current reading",
        description="Ask a provider for its current carbon intensity and print it (value in "
        "gCO2e/kWh, zone, provider, signal type, time). Exits 1 if the provider fails.",
    )
    _provider_options(now)
    now.add_argument(
        "--forecast", type=int, metavar="HOURS", help="also print the next HOURS of forecast"
    )
    now.add_argument("--json", action="store_true", help="print JSON")
    now.set_defaults(func=cmd_carbon_now)

    poll = subparsers.add_parser(
        "poll",
        help="poll the carbon provider and store readings in the ledger",
        description="Poll the configured carbon provider (then the fallback provider) every "
        "--interval seconds and store each reading, and the forecast every "
        "--forecast-interval seconds, in the ledger's carbon_readings table. Runs until "
        "Ctrl-C or SIGTERM; --once polls once and exits (1 if no provider answered).",
    )
    _provider_options(poll)
    poll.add_argument("--db", metavar="URL", help="ledger SQLAlchemy URL ($SPROUT_DB_URL)")
    poll.add_argument(
        "--fallback-provider", choices=CARBON_PROVIDERS, help="provider asked when the first fails"
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


def _provider_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="settings TOML file ($SPROUT_CONFIG)")
    parser.add_argument(
        "--provider", choices=CARBON_PROVIDERS, help="carbon provider (default: the setting)"
    )
    parser.add_argument("--zone", metavar="Z", help="grid zone, e.g. DE, CAISO_NORTH, GB")
    parser.add_argument("--base-url", metavar="URL", help="the provider's API root (a mirror)")
    parser.add_argument("--timeout", type=float, metavar="S", help="seconds per HTTP attempt")


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    from sprout.config import load_settings

    settings = load_settings(
        config=args.config,
        carbon_provider=args.provider,
        zone=args.zone,
        carbon_timeout_s=args.timeout,
        **overrides,
    )
    if args.base_url:
        setting = BASE_URL_SETTINGS.get(settings.carbon_provider)
        if setting is None:
            raise ConfigError(
                f"--base-url applies to the live providers ({', '.join(BASE_URL_SETTINGS)}), "
                f"not {settings.carbon_provider!r}"
            )
        settings = settings.replace(**{setting: args.base_url})
    return settings


def cmd_carbon_now(args: argparse.Namespace) -> int:
    """``sprout carbon now``: print the provider's current reading."""
    from sprout.factory import build_provider

    settings = _settings(args)
    if args.forecast is not None and not 1 <= args.forecast <= 72:
        raise ConfigError(f"--forecast must lie in [1, 72] hours, got {args.forecast}")
    provider = build_provider(settings)
    try:
        reading = provider.latest(settings.zone)
        forecast = provider.forecast(settings.zone, args.forecast) if args.forecast else []
    except SproutError:
        raise
    except Exception as e:  # a provider bug rather than a vendor error: still a clear exit 1
        raise ProviderError(provider.name, f"unexpected {type(e).__name__}: {e}") from e
    finally:
        close = getattr(provider, "close", None)
        if callable(close):
            close()
    now = datetime.now(UTC)
    if args.json:
        doc = _reading_dict(reading, now)
        if args.forecast:
            doc["forecast"] = [_reading_dict(r, now) for r in forecast]
        print(json.dumps(doc, indent=2))
        return 0
    flags = [
        flag
        for flag, on in (("forecast", reading.is_forecast), ("estimated", reading.is_estimated))
        if on
    ]
    rows = [
        ("zone", reading.zone),
        ("intensity", f"{reading.ci_g_per_kwh:.1f} gCO2e/kWh"),
        ("provider", reading.provider),
        ("signal", f"{reading.signal_type} ({reading.emission_factor})"),
        ("time", f"{reading.time.isoformat()} ({_ago(reading.age_s(now))})"),
    ]
    if flags:
        rows.append(("flags", ", ".join(flags)))
    for label, value in rows:
        print(f"{label:<10} {value}")
    if forecast:
        print(f"forecast ({len(forecast)} points):")
        for r in forecast:
            print(f"  {r.time.isoformat()}  {r.ci_g_per_kwh:7.1f}")
    return 0


def cmd_poll(args: argparse.Namespace) -> int:
    """``sprout poll``: refresh the carbon signal on a schedule and store its readings."""
    from sprout.carbon.poller import CarbonPoller
    from sprout.factory import build_ledger, build_signal

    settings = _settings(
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


def _reading_dict(reading: CarbonReading, now: datetime) -> dict[str, Any]:
    return {
        "zone": reading.zone,
        "ci_g_per_kwh": reading.ci_g_per_kwh,
        "provider": reading.provider,
        "signal_type": reading.signal_type,
        "emission_factor": reading.emission_factor,
        "time": reading.time.isoformat(),
        "age_s": round(reading.age_s(now), 3),
        "is_forecast": reading.is_forecast,
        "is_estimated": reading.is_estimated,
    }


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
