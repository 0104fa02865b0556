"""Settings, resolved with the precedence: arguments > ``SPROUT_*`` environment > TOML file
> defaults.

The TOML file is named by the ``config`` argument or ``SPROUT_CONFIG``; its keys are the
field names of :class:`Settings` (top level or under a ``[sprout]`` table). Each environment
variable is ``SPROUT_`` plus the upper-cased field name, e.g. ``SPROUT_DB_URL``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

from sprout.accounting import SPROUT_EMBODIED_G, SPROUT_LIFETIME_YEARS
from sprout.errors import ConfigError

DEFAULT_DB_FILE = "sprout-ledger.db"


def default_db_url() -> str:
    """A SQLite file in the working directory."""
    return f"sqlite:///{Path.cwd() / DEFAULT_DB_FILE}"


@dataclass(frozen=True)
class Settings:
    """Sprout's settings. Units are in the names.

    Attributes:
        db_url: SQLAlchemy URL of the ledger.
        zone: grid zone whose carbon intensity drives decisions.
        carbon_provider: ``trace`` or ``static`` (live providers come with their own modules).
        carbon_trace: path of an hourly CSV for the trace provider ("" for the zone's bundled one).
        carbon_column: ``ci_direct`` or ``ci_lca`` for the trace provider.
        static_ci_g_per_kwh: the static provider's value.
        default_ci_g_per_kwh: used when no reading can be had at all.
        signal_refresh_s: how long a reading is served before the provider is asked again.
        signal_max_age_s: oldest cached reading served when the provider fails.
        policy_file: directive policy file ("" for the bundled default).
        xi: largest relative quality concession of the optimizer, in [0, 1].
        ci_window_hours: history the optimizer takes its CI min/max from.
        embodied_g: embodied carbon of the server, gCO2e.
        lifetime_years: the server lifetime that carbon is amortised over.
        ledger_flush_interval_s: how often buffered receipts are committed.
        ledger_spool: file receipts go to while the database is unreachable ("" for
            ``<db>.spool.jsonl`` beside a SQLite file, else ``sprout-ledger.spool.jsonl``).
    """

    db_url: str = ""
    zone: str = "GB"
    carbon_provider: str = "trace"
    carbon_trace: str = ""
    carbon_column: str = "ci_direct"
    static_ci_g_per_kwh: float = 400.0
    default_ci_g_per_kwh: float = 400.0
    signal_refresh_s: float = 300.0
    signal_max_age_s: float = 3 * 3600.0
    policy_file: str = ""
    xi: float = 0.1
    ci_window_hours: int = 720
    embodied_g: float = SPROUT_EMBODIED_G
    lifetime_years: float = SPROUT_LIFETIME_YEARS
    ledger_flush_interval_s: float = 0.5
    ledger_spool: str = ""

    def __post_init__(self) -> None:
        if not self.db_url:
            object.__setattr__(self, "db_url", default_db_url())
        checks = (
            ("xi", 0.0 <= self.xi <= 1.0, "must lie in [0, 1]"),
            ("ci_window_hours", self.ci_window_hours >= 1, "must be >= 1"),
            ("static_ci_g_per_kwh", self.static_ci_g_per_kwh >= 0, "must be >= 0"),
            ("default_ci_g_per_kwh", self.default_ci_g_per_kwh >= 0, "must be >= 0"),
            ("signal_refresh_s", self.signal_refresh_s >= 0, "must be >= 0"),
            ("signal_max_age_s", self.signal_max_age_s >= 0, "must be >= 0"),
            ("embodied_g", self.embodied_g >= 0, "must be >= 0"),
            ("lifetime_years", self.lifetime_years > 0, "must be > 0"),
            ("ledger_flush_interval_s", self.ledger_flush_interval_s > 0, "must be > 0"),
            (
                "carbon_column",
                self.carbon_column in ("ci_direct", "ci_lca"),
                "must be 'ci_direct' or 'ci_lca'",
            ),
            (
                "carbon_provider",
                self.carbon_provider in ("trace", "static"),
                "must be 'trace' or 'static'",
            ),
        )
        for name, ok, problem in checks:
            if not ok:
                raise ConfigError(f"setting {name}={getattr(self, name)!r}: {problem}")

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


def _coerce(name: str, kind: type, value: Any, origin: str) -> Any:
    try:
        if kind is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("1", "true", "yes")
            return bool(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if isinstance(value, bool) and kind in (int, float):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{origin}: setting {name} must be {kind.__name__}, got {value!r}"
        ) from None


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read ({e.strerror or e})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: not valid TOML ({e})") from e
    table = doc.get("sprout", doc)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [sprout] must be a table")
    return table


def load_settings(
    config: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Resolve settings: ``overrides`` > ``SPROUT_*`` env > TOML file > defaults.

    ``None`` overrides are ignored, so CLI options that were not given fall through.

    Raises:
        ConfigError: naming the setting, its origin and the problem.
    """
    env = os.environ if env is None else env
    hints = get_type_hints(Settings)
    kinds = {f.name: hints[f.name] for f in fields(Settings)}
    values: dict[str, Any] = {}
    path = config or env.get("SPROUT_CONFIG")
    if path:
        for key, value in _from_toml(Path(path)).items():
            if key not in kinds:
                known = ", ".join(sorted(kinds))
                raise ConfigError(f"config file {path}: unknown setting {key!r}; known: {known}")
            values[key] = _coerce(key, kinds[key], value, f"config file {path}")
    for name, kind in kinds.items():
        var = f"SPROUT_{name.upper()}"
        if var in env and env[var] != "":
            values[name] = _coerce(name, kind, env[var], f"environment variable {var}")
    for name, value in overrides.items():
        if name not in kinds:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = _coerce(name, kinds[name], value, "argument")
    return Settings(**values)
