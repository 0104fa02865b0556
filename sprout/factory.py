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
from sprout.policy.base import LP_KIND

if TYPE_CHECKING:
    from sprout.carbon.signal import CarbonSignal
    from sprout.controller import Controller
    from sprout.energy.base import EnergyMeter
    from sprout.engines.base import Engine
    from sprout.judge.sampler import Sampler
    from sprout.ledger.store import Ledger
    from sprout.policy.base import Policy
    from sprout.policy.stats import LevelStats


def load_directives(settings: Settings) -> DirectiveSet:
    """The policy file named in ``settings``, or the bundled default."""
    from sprout.data import default_policy_path

    return DirectiveSet.load(
        Path(settings.policy_file) if settings.policy_file else default_policy_path()
    )


def build_provider(
    settings: Settings,
    clock: Callable[[], datetime] = utcnow,
    name: str | None = None,
    zone: str | None = None,
) -> CarbonProvider:
    """The carbon provider named ``name`` (default: ``settings.carbon_provider``).

    Live providers take their base URL, credentials, timeout and retries from ``settings``;
    the trace provider reads ``settings.carbon_trace`` or the bundled trace of ``zone``
    (default: ``settings.zone``).

    Raises:
        ConfigError: an unknown name, or missing credentials (naming the setting).
    """
    name = name or settings.carbon_provider
    http = {
        "timeout_s": settings.carbon_timeout_s,
        "retries": settings.carbon_retries,
        "max_wait_s": settings.carbon_max_retry_wait_s,
    }
    if name == "trace":
        from sprout.carbon.trace import TraceProvider

        return TraceProvider.from_source(
            settings.carbon_trace or zone or settings.zone, settings.carbon_column, clock
        )
    if name == "static":
        from sprout.carbon.static import StaticProvider

        return StaticProvider(settings.static_ci_g_per_kwh, clock=clock)
    if name == "electricitymaps":
        from sprout.carbon.electricitymaps import ElectricityMapsProvider

        return ElectricityMapsProvider(
            settings.electricitymaps_api_key,
            base_url=settings.electricitymaps_base_url,
            emission_factor=settings.electricitymaps_emission_factor,  # type: ignore[arg-type]
            clock=clock,
            **http,
        )
    if name == "watttime":
        from sprout.carbon.watttime import WattTimeProvider

        return WattTimeProvider(
            settings.watttime_username,
            settings.watttime_password,
            base_url=settings.watttime_base_url,
            clock=clock,
            **http,
        )
    if name == "uk":
        from sprout.carbon.uk import UKCarbonIntensityProvider

        return UKCarbonIntensityProvider(base_url=settings.uk_base_url, clock=clock, **http)
    raise ConfigError(f"setting carbon_provider: unknown provider {name!r}")


def build_signal(
    settings: Settings,
    clock: Callable[[], datetime] = utcnow,
    monotonic: Callable[[], float] | None = None,
) -> CarbonSignal:
    """The carbon signal: ``settings.carbon_provider``, then the fallback provider if one is
    set, then the last good reading up to ``signal_max_age_s``, then the default.

    Polling is not started here (see :meth:`CarbonSignal.start_polling`).
    """
    import time

    from sprout.carbon.signal import CarbonSignal

    fallback_zone = settings.carbon_fallback_zone or settings.zone
    secondary = (
        build_provider(settings, clock, settings.carbon_fallback_provider, fallback_zone)
        if settings.carbon_fallback_provider
        else None
    )
    return CarbonSignal(
        build_provider(settings, clock),
        settings.zone,
        refresh_s=settings.signal_refresh_s,
        max_age_s=settings.signal_max_age_s,
        default_ci_g_per_kwh=settings.default_ci_g_per_kwh,
        clock=clock,
        monotonic=monotonic or time.monotonic,
        secondary=secondary,
        secondary_zone=fallback_zone,
    )


def uses_live_provider(settings: Settings) -> bool:
    """Whether the signal asks a network API (and so should be polled in the background)."""
    from sprout.config import LIVE_CARBON_PROVIDERS

    return (
        settings.carbon_provider in LIVE_CARBON_PROVIDERS
        or settings.carbon_fallback_provider in LIVE_CARBON_PROVIDERS
    )


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
    """Id of the stored LP policy version matching ``stats`` and ``xi``, storing it if new.

    Processes starting together on one ledger (proxy workers, replicas) take turns under a
    job lock, so that they store one version between them rather than one each.
    """
    from sprout.ledger.locks import job_lock
    from sprout.ledger.store import params_sha256

    params = {"stats": stats.as_dict(), "xi": xi}
    with job_lock(ledger.engine, "lp-policy-version", wait_s=30.0):
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


def contextual_policy(
    settings: Settings, ledger: Ledger | None, directives: DirectiveSet, rate: float
) -> tuple[Policy, int] | None:
    """The newest stored contextual policy and its version id, when ``settings.policy_kind``
    allows one and the ledger holds one (its hash verified); else None (serve the LP mix).

    A version that cannot be read or used is logged and the LP mix served.
    """
    import logging

    from sprout.errors import SproutError

    if settings.policy_kind == "lp" or ledger is None:
        return None
    log = logging.getLogger("sprout.policy")
    try:
        loaded = _load_live_policy(settings, ledger, directives, rate)
    except SproutError as e:
        log.error("contextual policy unusable, serving the Sprout LP mix: %s", e)
        return None
    if loaded is None and settings.policy_kind == "contextual":
        log.warning(
            "policy_kind=contextual but no contextual policy version is stored (run "
            "`sprout retrain`); serving the Sprout LP mix until one is"
        )
    return loaded


def _load_live_policy(
    settings: Settings, ledger: Ledger, directives: DirectiveSet, rate: float
) -> tuple[Policy, int] | None:
    """The newest stored contextual policy as the live controller serves it: refits off the
    request path, the configured margin cushion."""
    from sprout.policy.retrain import load_policy

    return load_policy(
        ledger,
        directives,
        settings.xi,
        rate,
        background=True,
        margin_z=settings.policy_margin_z,
        max_loss=settings.policy_max_loss,
    )


def _restore_margin(controller: Controller, settings: Settings) -> None:
    """Revise the contextual policy's safety margin from the verdicts already stored on its
    own choices (a restart keeps what the quality loop measured)."""
    import logging

    from sprout.errors import SproutError
    from sprout.judge.training import refresh_margin

    try:
        refresh_margin(controller, controller.now(), settings.judge_half_life_h)
    except SproutError as e:  # the training margin serves until the judge's next run
        logging.getLogger("sprout.policy").warning(
            "contextual policy: stored verdicts not read, keeping the training margin: %s", e
        )


def warn_unguarded(settings: Settings, version: int | None) -> None:
    """Say, once, at start, that a per-request policy served with no quality loop is
    unguarded on traffic unlike its training data (nothing samples it, so nothing judges
    it: neither its margin nor the quality guard can react)."""
    import logging

    why = (
        "judge_sample_share = 0"
        if settings.judge_sample_share <= 0
        else "no ledger to keep the sampled prompts in"
    )
    logging.getLogger("sprout.policy").warning(
        "serving the per-request (contextual) policy, version %s, with no quality loop "
        "configured (%s): its quality on traffic unlike its training data is unguarded, as "
        "no request is sampled and judged. To enable the loop, set judge_sample_share "
        "(e.g. 0.01; SPROUT_JUDGE_SAMPLE_SHARE) with a ledger, and run the judge job "
        "(`sprout judge schedule`, or JudgeJob.schedule beside the app)",
        version,
        why,
    )


def watch_policy_versions(
    controller: Controller,
    settings: Settings,
    directives: DirectiveSet,
    rate: float,
    current: int | None,
) -> None:
    """Let ``controller`` pick up newer contextual policy versions without a restart: a
    background thread checks every ``settings.policy_refresh_s`` (0: never); it stops when
    the controller closes."""
    ledger = controller.ledger
    if ledger is None or settings.policy_kind == "lp" or settings.policy_refresh_s <= 0:
        return
    from sprout.policy.retrain import PolicyWatcher

    # Started on the LP mix with no quality loop: say so when a contextual policy comes.
    warned: list[bool] = [controller.sampler is not None or current is not None]

    def swap(policy: Policy, version: int | None) -> None:
        if not warned[0]:
            warned[0] = True
            warn_unguarded(settings, version)
        controller.swap_policy(policy, version)

    watcher = PolicyWatcher(
        ledger,
        lambda: _load_live_policy(settings, ledger, directives, rate),
        swap,
        current=current,
        interval_s=settings.policy_refresh_s,
    )
    watcher.start()
    controller.on_close(watcher.stop)


def build_ledger(settings: Settings) -> Ledger:
    """The ledger at ``settings.db_url`` (migrated to the current schema on first use)."""
    from sprout.ledger.store import Ledger

    return Ledger(
        settings.db_url,
        flush_interval_s=settings.ledger_flush_interval_s,
        spool_path=settings.ledger_spool or None,
        durability=settings.ledger_durability,
    )


def _pairs(setting: str, value: str) -> dict[str, str]:
    """``a=x,b=y`` as a dict (names the setting when malformed)."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, sep, target = (x.strip() for x in item.partition("="))
        if not sep or not key or not target:
            raise ConfigError(f"setting {setting}: expected variant=model pairs, got {item!r}")
        pairs[key] = target
    return pairs


def build_engine(settings: Settings) -> Engine:
    """The engine named by ``settings.engine`` (``replay``, ``openai`` or ``hf``).

    Raises:
        ConfigError: a setting the engine needs is missing or malformed.
    """
    if settings.engine == "replay":
        from sprout.engines.replay import ReplayEngine

        return ReplayEngine()
    variants = _pairs("engine_variants", settings.engine_variants)
    guard = None
    if settings.babble_guard:
        from sprout.engines.guards import BabbleGuard

        guard = BabbleGuard()
    if not settings.engine_model:
        raise ConfigError(f"setting engine_model: required for engine={settings.engine!r}")
    if settings.engine == "openai":
        from sprout.engines.openai_compat import OpenAIEngine

        if not settings.engine_base_url:
            raise ConfigError("setting engine_base_url: required for engine='openai'")
        return OpenAIEngine(
            settings.engine_base_url,
            settings.engine_model,
            variant_models=variants,
            api_key=settings.engine_api_key or None,
            stream=settings.engine_stream,
            max_tokens=settings.engine_max_new_tokens,
            guard=guard,
            timeout_s=settings.engine_timeout_s,
            max_retries=settings.engine_retries,
        )
    from sprout.engines.hf import INT8, HFEngine, ModelVariant

    return HFEngine(
        settings.engine_model,
        variants={INT8: ModelVariant(settings.engine_model, INT8), **variants},
        device=settings.engine_device,
        max_new_tokens=settings.engine_max_new_tokens,
        guard=guard,
    )


def build_meter(settings: Settings, engine: Engine, ledger: Ledger | None = None) -> EnergyMeter:
    """The energy meter ``settings.meter`` names, ``auto`` choosing by what this machine has.

    The estimate meter (used alone, or as the fallback of a measuring one) is calibrated
    per variant on the ledger's measured receipts of ``engine`` when ``meter_calibrate``
    is set and there are enough of them (from the last 30 days).
    """
    import logging
    from datetime import timedelta

    from sprout.energy.estimate import EstimateMeter
    from sprout.energy.select import choose_meter

    log = logging.getLogger("sprout.energy")
    estimate = EstimateMeter()
    # A replay carries its recorded energy: its receipts never need a fitted estimate.
    if settings.meter_calibrate and ledger is not None and engine.name != "replay":
        from sprout.energy.calibrate import calibrate_from_ledger, calibrated_meter
        from sprout.errors import SproutError

        try:
            calibration = calibrate_from_ledger(ledger, since=utcnow() - timedelta(days=30))
        except SproutError as e:  # calibration is an improvement, never a requirement
            log.warning("estimate meter not calibrated (ledger unreadable): %s", e)
        else:
            if calibration.for_engine(engine.name):
                estimate = calibrated_meter(calibration, engine.name)
    gpus = [int(i) for i in settings.meter_gpus.split(",") if i.strip()] or None
    choice = choose_meter(
        settings.meter,
        engine_local=engine.runs_locally,
        gpu_indices=gpus,
        rapl_root=settings.rapl_root,
        estimate=estimate,
    )
    log.info("energy meter: %s (%s)", choice.kind, "; ".join(choice.reasons))
    return choice.meter


def _build_sampler(
    settings: Settings, ledger: Ledger | None, rng: random.Random | None
) -> Sampler | None:
    """The quality loop's sampler, when ``judge_sample_share`` > 0 (its own draws, seeded
    from ``rng`` when given, so that sampling never shifts the policy's)."""
    from sprout.judge.sampler import build_sampler

    seeded = (
        None if rng is None or settings.judge_sample_share <= 0 else random.Random(rng.random())
    )
    return build_sampler(settings, ledger, seeded)


def build_controller(
    settings: Settings,
    *,
    engine: Engine | None = None,
    ledger: Ledger | None = None,
    use_ledger: bool = True,
    clock: Callable[[], datetime] = utcnow,
    monotonic: Callable[[], float] | None = None,
    rng: random.Random | None = None,
    poll: bool | None = None,
) -> Controller:
    """A controller on the embedded defaults: replay engine, trace carbon, SQLite ledger.

    Args:
        settings: resolved settings.
        engine: the engine (default: the one ``settings.engine`` names, the replay engine
            over the bundled workloads unless set). The energy meter follows
            ``settings.meter`` (see :func:`build_meter`).
        ledger: an open ledger (default: one at ``settings.db_url`` unless ``use_ledger``
            is False).
        clock: wall clock for readings and receipts (a replay clock in the demo).
        monotonic: clock for the signal's refresh interval (default: real monotonic time).
        rng: randomness for the policy's draws.
        poll: refresh the carbon signal in a background poller that also stores readings
            and forecasts in the ledger (default: ``settings.carbon_poll`` when a live
            provider is configured); ``Controller.close`` stops it.
    """
    from sprout.accounting import embodied_rate_g_per_s
    from sprout.controller import Controller
    from sprout.policy.sprout_lp import SproutLPPolicy

    telemetry = None
    if settings.otel_enabled:  # first: a missing otel extra fails before anything is opened
        from sprout.otel import OTelSink

        telemetry = OTelSink(metrics_tenant=settings.otel_metrics_tenant)
    directives = load_directives(settings)
    stats = bundled_level_stats(directives)
    rate = embodied_rate_g_per_s(settings.embodied_g, settings.lifetime_years)
    policy: Policy = SproutLPPolicy(directives, stats, settings.xi, rate)
    signal = build_signal(settings, clock, monotonic)
    if ledger is None and use_ledger:
        ledger = build_ledger(settings)
    # The per-request model when a trained version is stored (see `sprout retrain`).
    contextual = contextual_policy(settings, ledger, directives, rate)
    if contextual is not None:
        policy = contextual[0]
    if ledger is not None:  # what the quality loop learnt survives restarts (sprout.judge)
        from sprout.judge.job import restore_quality

        policy, stats = restore_quality(ledger, policy, stats, directives.baseline)
    if contextual is not None:
        version: int | None = contextual[1]
    else:
        version = lp_policy_version(ledger, stats, settings.xi) if ledger is not None else None
    if engine is None:
        engine = build_engine(settings)
    meter = build_meter(settings, engine, ledger)
    controller = Controller(
        engine,
        signal,
        policy,
        directives,
        ledger=ledger,
        meter=meter,
        ci_window_hours=settings.ci_window_hours,
        embodied_g_per_s=rate,
        policy_version=version,
        clock=clock,
        rng=rng,
        sampler=_build_sampler(settings, ledger, rng),
    )
    if telemetry is not None:
        telemetry.attach(controller)
    if contextual is not None and ledger is not None:
        _restore_margin(controller, settings)
    if contextual is not None and controller.sampler is None:
        warn_unguarded(settings, contextual[1])
    watch_policy_versions(
        controller, settings, directives, rate, contextual[1] if contextual else None
    )
    if poll is None:
        poll = settings.carbon_poll and uses_live_provider(settings)
    if poll:
        # Live APIs are asked off the request path; the poller records what it fetches.
        signal.start_polling(
            ledger=ledger,
            forecast_interval_s=settings.carbon_forecast_interval_s,
            wait_first_s=settings.carbon_timeout_s,  # bounded: a down API delays start only this
        )
    return controller
