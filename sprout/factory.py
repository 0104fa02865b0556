"""Builds a controller's parts from :class:`~sprout.config.Settings` (the embedded defaults)."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sprout.carbon.base import CarbonProvider, utcnow
from sprout.config import Settings
from sprout.directives import DirectiveSet
from sprout.errors import ConfigError

if TYPE_CHECKING:
    from sprout.controller import Controller
    from sprout.engines.base import Engine
    from sprout.ledger.store import Ledger
    from sprout.policy.stats import LevelStats

#: Policy-version kind of Sprout's LP statistics.
LP_KIND = "sprout-lp"


def load_directives(settings: Settings) -> DirectiveSet:
    """The policy file named in ``settings``, or the bundled default."""
    from sprout.data import default_policy_path

    return DirectiveSet.load(
        Path(settings.policy_file) if settings.policy_file else default_policy_path()
    )


def build_provider(settings: Settings, clock: Callable[[], datetime] = utcnow) -> CarbonProvider:
    """The carbon provider named in ``settings``."""
    if settings.carbon_provider == "trace":
        from sprout.carbon.trace import TraceProvider

        return TraceProvider.from_source(
            settings.carbon_trace or settings.zone, settings.carbon_column, clock
        )
    if settings.carbon_provider == "static":
        from sprout.carbon.static import StaticProvider

        return StaticProvider(settings.static_ci_g_per_kwh, clock=clock)
    raise ConfigError(f"setting carbon_provider: unknown provider {settings.carbon_provider!r}")


def bundled_level_stats(directives: DirectiveSet) -> LevelStats:
    """Per-level energy, time and judged quality from the bundled recordings.

    Raises:
        ConfigError: if the directive set does not name the recorded levels.
    """
    from sprout.data import LEVELS, load_workload
    from sprout.policy.stats import level_stats

    missing = [level for level in LEVELS if level not in directives.names]
    if missing:
        raise ConfigError(
            f"{directives.source}: the bundled recordings give quality and energy for "
            f"directives {', '.join(LEVELS)}, but this policy file lacks {', '.join(missing)}; "
            "name the recorded levels L0, L1, L2 (they may add caps or variants)"
        )
    return level_stats(load_workload(), LEVELS)


def lp_policy_version(ledger: Ledger, stats: LevelStats, xi: float) -> int:
    """Id of the stored LP policy version matching ``stats`` and ``xi``, storing it if new."""
    from sprout.ledger.store import params_sha256

    params = {"stats": stats.as_dict(), "xi": xi}
    latest = ledger.latest_policy_version(LP_KIND)
    # Compare hashes: stored params come back JSON-normalised (tuples as lists).
    if latest is not None and latest.sha256 == params_sha256(params):
        return latest.id
    return ledger.save_policy_version(
        LP_KIND,
        params,
        {"n_energy": stats.n_energy, "n_judged": stats.n_judged},
        note="level statistics from the bundled recordings",
    )


def build_ledger(settings: Settings) -> Ledger:
    """The ledger at ``settings.db_url`` (migrated to the current schema on first use)."""
    from sprout.ledger.store import Ledger

    return Ledger(
        settings.db_url,
        flush_interval_s=settings.ledger_flush_interval_s,
        spool_path=settings.ledger_spool or None,
    )


def build_controller(
    settings: Settings,
    *,
    engine: Engine | None = None,
    ledger: Ledger | None = None,
    use_ledger: bool = True,
    clock: Callable[[], datetime] = utcnow,
    monotonic: Callable[[], float] | None = None,
    rng: random.Random | None = None,
) -> Controller:
    """A controller on the embedded defaults: replay engine, trace carbon, SQLite ledger.

    Args:
        settings: resolved settings.
        engine: the engine (default: the replay engine over the bundled workloads).
        ledger: an open ledger (default: one at ``settings.db_url`` unless ``use_ledger``
            is False).
        clock: wall clock for readings and receipts (a replay clock in the demo).
        monotonic: clock for the signal's refresh interval (default: real monotonic time).
        rng: randomness for the policy's draws.
    """
    import time

    from sprout.accounting import embodied_rate_g_per_s
    from sprout.carbon.signal import CarbonSignal
    from sprout.controller import Controller
    from sprout.policy.sprout_lp import SproutLPPolicy

    directives = load_directives(settings)
    stats = bundled_level_stats(directives)
    rate = embodied_rate_g_per_s(settings.embodied_g, settings.lifetime_years)
    policy = SproutLPPolicy(directives, stats, settings.xi, rate)
    signal = CarbonSignal(
        build_provider(settings, clock),
        settings.zone,
        refresh_s=settings.signal_refresh_s,
        max_age_s=settings.signal_max_age_s,
        default_ci_g_per_kwh=settings.default_ci_g_per_kwh,
        clock=clock,
        monotonic=monotonic or time.monotonic,
    )
    if ledger is None and use_ledger:
        ledger = build_ledger(settings)
    version = lp_policy_version(ledger, stats, settings.xi) if ledger is not None else None
    if engine is None:
        from sprout.engines.replay import ReplayEngine

        engine = ReplayEngine()
    return Controller(
        engine,
        signal,
        policy,
        directives,
        ledger=ledger,
        ci_window_hours=settings.ci_window_hours,
        embodied_g_per_s=rate,
        policy_version=version,
        clock=clock,
        rng=rng,
    )
