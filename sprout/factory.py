"""Wires a controller and its jobs from :class:`~sprout.config.Settings` (the embedded
defaults): its carbon signal, engine, meter, ledger, policy and sampler
(:func:`build_controller`), and the quality loop's judge job beside it or on its own
(:func:`build_judge_job`). Nothing else builds these from settings: the module is kept
whole, a little over 500 lines, so that one file shows how every part meets the settings.

The modules of parts with heavy or optional dependencies (engines, meters, carbon APIs, the
ledger, OpenTelemetry, the controller and the quality loop) are imported when that part is
built, so that wiring one never loads another's (an engine's torch, the ledger's SQLAlchemy).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sprout import otel
from sprout.accounting import embodied_rate_g_per_s
from sprout.carbon.base import CarbonProvider, utcnow
from sprout.carbon.signal import CarbonSignal
from sprout.config import Settings
from sprout.controller import Controller
from sprout.data import default_policy_path
from sprout.directives import DirectiveSet
from sprout.energy.calibrate import calibrate_from_ledger, calibrated_meter
from sprout.energy.estimate import EstimateMeter
from sprout.energy.select import choose_meter
from sprout.errors import SproutError
from sprout.judge.job_config import JudgeJobConfig
from sprout.judge.judges import LLMJudge, build_judge
from sprout.judge.sampler import build_sampler
from sprout.plugins import CARBON_PROVIDERS, ENGINES
from sprout.training.versions import bundled_level_stats, lp_policy_version

if TYPE_CHECKING:
    from sprout.carbon.signal import CarbonSignal
    from sprout.controller import Controller
    from sprout.energy.base import EnergyMeter
    from sprout.engines.base import Engine
    from sprout.judge.judges import Judge
    from sprout.judge.sampler import Sampler
    from sprout.ledger.store import Ledger
    from sprout.policy.base import Policy
    from sprout.quality_loop.job import JudgeJob


def load_directives(settings: Settings) -> DirectiveSet:
    """The policy file named in ``settings``, or the bundled default."""
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

    Each provider's module reads its own settings (``from_settings``): live providers their
    base URL, credentials, timeout and retries; the trace provider ``settings.carbon_trace``
    or the bundled trace of ``zone`` (default: ``settings.zone``).

    Raises:
        ConfigError: an unknown name, or missing credentials (naming the setting).
    """
    provider: CarbonProvider = CARBON_PROVIDERS.build(
        name or settings.carbon_provider, settings, clock, zone
    )
    return provider


def build_signal(
    settings: Settings,
    clock: Callable[[], datetime] = utcnow,
    monotonic: Callable[[], float] | None = None,
) -> CarbonSignal:
    """The carbon signal: ``settings.carbon_provider``, then the fallback provider if one is
    set, then the last good reading up to ``signal_max_age_s``, then the default.

    Polling is not started here (see :meth:`CarbonSignal.start_polling`).
    """

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

    live = {p.name for p in CARBON_PROVIDERS if p.live}
    return settings.carbon_provider in live or settings.carbon_fallback_provider in live


def contextual_policy(
    settings: Settings, ledger: Ledger | None, directives: DirectiveSet, rate: float
) -> tuple[Policy, int] | None:
    """The newest stored contextual policy and its version id, when ``settings.policy_kind``
    allows one and the ledger holds one (its hash verified); else None (serve the LP mix).

    A version that cannot be read or used is logged and the LP mix served.
    """
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
    from sprout.training.serving import load_policy

    return load_policy(
        ledger,
        directives,
        settings.xi,
        rate,
        background=True,
        margin_z=settings.policy_margin_z,
        max_loss=settings.policy_max_loss,
    )


def warn_unguarded(settings: Settings, version: int | None) -> None:
    """Say, once, at start, that a per-request policy served with no quality loop is
    unguarded on traffic unlike its training data (nothing samples it, so nothing judges
    it: neither its margin nor the quality guard can react)."""
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
    from sprout.training.serving import PolicyWatcher

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


def build_engine(settings: Settings) -> Engine:
    """The engine ``settings.engine`` names (see :data:`sprout.plugins.ENGINES`).

    Raises:
        ConfigError: a setting the engine needs is missing or malformed.
    """
    engine: Engine = ENGINES.build(settings.engine, settings)
    return engine


def build_meter(settings: Settings, engine: Engine, ledger: Ledger | None = None) -> EnergyMeter:
    """The energy meter ``settings.meter`` names, ``auto`` choosing by what this machine has.

    The estimate meter (used alone, or as the fallback of a measuring one) is calibrated
    per variant on the ledger's measured receipts of ``engine`` when ``meter_calibrate``
    is set and there are enough of them (from the last 30 days).
    """

    log = logging.getLogger("sprout.energy")
    estimate = EstimateMeter()
    # A replay carries its recorded energy: its receipts never need a fitted estimate.
    if settings.meter_calibrate and ledger is not None and engine.name != "replay":
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
    from sprout.policy.sprout_lp import SproutLPPolicy
    from sprout.quality_loop.live import restore_margin, restore_quality

    telemetry = None
    if settings.otel_enabled:  # first: a missing otel extra fails before anything is opened
        telemetry = otel.OTelSink(metrics_tenant=settings.otel_metrics_tenant)
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
        restore_margin(controller, settings.judge_half_life_h)
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


def build_judge_job(
    settings: Settings,
    *,
    controller: Controller | None = None,
    judge: Judge | None = None,
    ledger: Ledger | None = None,
    engine: Engine | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> JudgeJob:
    """The judge job ``settings`` describe, beside ``controller`` (sharing its ledger,
    engine, signal, meter and sampler, and refreshing its policy) or on its own (``sprout
    judge run``), building what it lacks."""
    from sprout.quality_loop.job import JudgeJob

    owned: list[Any] = []  # what the job builds for itself, and so closes with itself
    if controller is not None:
        ledger = ledger or controller.ledger
        engine = engine or controller.engine
    if ledger is None:
        ledger = build_ledger(settings)
        owned.append(ledger)
    if engine is None:
        engine = build_engine(settings)
        owned.append(engine)
    config = JudgeJobConfig.from_settings(settings)
    if controller is not None:
        directives, signal, meter = controller.directives, controller.signal, controller.meter
        config = replace(config, embodied_g_per_s=controller.embodied_g_per_s)
    else:
        directives = load_directives(settings)
        signal = build_signal(settings, clock)
        meter = build_meter(settings, engine, ledger)
        owned += [signal, meter]
    if judge is None:
        judge = build_judge(settings)
        owned.insert(0, judge)
    judge_meter = None
    if isinstance(judge, LLMJudge):
        judge_meter = build_meter(settings, judge.engine)
        owned.append(judge_meter)
    return JudgeJob(
        ledger,
        judge,
        engine,
        directives,
        signal,
        meter=meter,
        judge_meter=judge_meter,
        controller=controller,
        config=config,
        clock=clock,
        owned=owned,
    )
