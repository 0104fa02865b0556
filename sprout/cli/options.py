"""Options and helpers shared by the ``sprout`` command modules.

The common flags (``--db``, ``--config``, the carbon provider's), the settings they select,
and what several commands do alike: read a ``--since``/``--until``/``--as-of`` time, refuse a
missing ledger, write a ``--json`` file, pick uvicorn's log level. Building a parser with
these imports nothing heavy; whatever a command needs is imported when it runs.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sprout.config import Settings

#: Addresses a server (``serve``, ``dashboard``) may listen on without a warning.
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")

#: The setting holding each live carbon provider's base URL (``--base-url``).
BASE_URL_SETTINGS = {
    "electricitymaps": "electricitymaps_base_url",
    "watttime": "watttime_base_url",
    "uk": "uk_base_url",
}


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE``."""
    parser.add_argument("--config", metavar="FILE", help="settings TOML file ($SPROUT_CONFIG)")


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--db URL`` and ``--config FILE``, shared by every command that reads settings."""
    parser.add_argument(
        "--db",
        metavar="URL",
        help="ledger SQLAlchemy URL (default: $SPROUT_DB_URL, else a SQLite file in the "
        "working directory)",
    )
    add_config_option(parser)


def settings_for(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings of ``--config`` and ``--db`` (with ``overrides``; None: not given)."""
    from sprout.config import load_settings

    return load_settings(config=args.config, db_url=args.db, **overrides)


def add_provider_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and the carbon provider's options (``carbon now``, ``poll``)."""
    from sprout.plugins import CARBON_PROVIDERS

    add_config_option(parser)
    parser.add_argument(
        "--provider", choices=CARBON_PROVIDERS.names, help="carbon provider (default: the setting)"
    )
    parser.add_argument("--zone", metavar="Z", help="grid zone, e.g. DE, CAISO_NORTH, GB")
    parser.add_argument("--base-url", metavar="URL", help="the provider's API root (a mirror)")
    parser.add_argument("--timeout", type=float, metavar="S", help="seconds per HTTP attempt")


def provider_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings of :func:`add_provider_options`' options (with ``overrides``).

    Raises:
        ConfigError: ``--base-url`` for a provider that has none.
    """
    from sprout.config import load_settings
    from sprout.errors import ConfigError

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


def parse_time_option(value: str | None, option: str) -> datetime | None:
    """A time option (``--since``, ``--until``, ``--now``, ``--as-of``) as an aware UTC
    datetime; None when not given.

    Raises:
        ConfigError: naming ``option``, for a value that is not an ISO 8601 time.
    """
    if value is None:
        return None
    from sprout.ledger.audit import parse_time

    return parse_time(value, option=option)


def existing_ledger(db_url: str) -> None:
    """Refuse to audit a SQLite file that does not exist (rather than create an empty one);
    bring an older schema to the current one, as every writer does.

    Raises:
        ConfigError: no ledger at the SQLite path.
    """
    from sprout.errors import ConfigError
    from sprout.ledger.migrate import ensure_schema, sqlite_file

    path = sqlite_file(db_url)
    if path is not None and not path.exists():
        raise ConfigError(f"no ledger at {path} (give --db URL or set SPROUT_DB_URL)")
    ensure_schema(db_url)


def write_json(path: Path, doc: Any) -> None:
    """Write ``doc`` to the ``--json`` file ``path`` (indented) and say so.

    Raises:
        ConfigError: the file cannot be written.
    """
    import json

    from sprout.errors import ConfigError

    try:
        path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--json {path}: cannot write ({e.strerror or e})") from e
    print(f"wrote {path}")


def uvicorn_log_level() -> str:
    """uvicorn's log level: ``info`` under ``sprout -v``, else ``warning``."""
    import logging

    return "info" if logging.getLogger().getEffectiveLevel() <= logging.INFO else "warning"


__all__ = [
    "BASE_URL_SETTINGS",
    "LOOPBACK_HOSTS",
    "add_config_option",
    "add_provider_options",
    "add_settings_options",
    "existing_ledger",
    "parse_time_option",
    "provider_settings",
    "settings_for",
    "uvicorn_log_level",
    "write_json",
]
