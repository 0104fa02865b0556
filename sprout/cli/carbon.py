"""``sprout carbon now``: a carbon provider's live reading, from the command line.

Failures raise Sprout errors, which :func:`sprout.cli.app.main` turns into a message and exit
code 1 (a provider failed) or 2 (a bad argument or setting).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sprout.cli.options import add_provider_options, provider_settings
from sprout.errors import ConfigError, ProviderError, SproutError

if TYPE_CHECKING:
    from sprout.carbon.base import CarbonReading


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``carbon now`` to the ``sprout`` sub-parsers."""
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
    add_provider_options(now)
    now.add_argument(
        "--forecast", type=int, metavar="HOURS", help="also print the next HOURS of forecast"
    )
    now.add_argument("--json", action="store_true", help="print JSON")
    now.set_defaults(func=cmd_carbon_now)
    return carbon


def cmd_carbon_now(args: argparse.Namespace) -> int:
    """``sprout carbon now``: print the provider's current reading."""
    from sprout.factory import build_provider

    settings = provider_settings(args)
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


__all__ = ["cmd_carbon_now", "register"]
