"""The judge job: answers sampled requests under the other directives, judges them at
low-carbon times, and feeds the verdicts back to the optimizer.

One run (:meth:`JudgeJob.run`), under the cluster-wide ``judge`` lock so that replicas
sharing a ledger never duplicate it:

1. prompts past their retention are deleted; the queue is the kept prompts without a
   verdict, oldest first, at most ``batch_size``;
2. each request is answered under every directive it was not served with, by the serving
   engine, and judged, every generation metered and written as an evaluation receipt
   (:mod:`sprout.quality_loop.evaluate`);
3. the verdict is stored; a request that still fails once its staleness deadline has passed
   gets a "no verdict" with the error, so it leaves the queue;
4. the quality estimates are refreshed from the recent verdicts
   (:mod:`sprout.judge.quality`), stored as a ``judge-quality`` policy version (with the
   warning, when quality is below the floor) and applied to an attached controller
   (:mod:`sprout.quality_loop.live`): the LP gets the new quality, and the quality guard its
   baseline share.

When (:meth:`JudgeJob.tick`, called by the scheduler, hourly by default): Sprout's timing
rule (:mod:`sprout.judge.timing`), forecast-aware when the carbon provider gives forecasts,
and always before the oldest queued request exceeds ``max_staleness_h``.

:func:`sprout.factory.build_judge_job` wires a job from settings, beside a controller or on
its own.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sprout.accounting import embodied_rate_g_per_s
from sprout.carbon.base import utcnow
from sprout.energy.estimate import EstimateMeter
from sprout.errors import LedgerError
from sprout.judge.job_config import HOUR_S, JudgeJobConfig
from sprout.judge.quality import GUARD_REASON, Observation, QualityEstimate
from sprout.judge.timing import ForecastEvaluatorClock, judge_run_reason
from sprout.policy.base import QUALITY_KIND
from sprout.policy.history import CIWindow
from sprout.quality_loop.evaluate import Evaluator
from sprout.quality_loop.live import apply_estimate, latest_estimate, refresh_margin
from sprout.quality_loop.run import JudgeRun
from sprout.scheduler import add_cron_job
from sprout.training.versions import prior_quality

if TYPE_CHECKING:
    from apscheduler.job import Job
    from apscheduler.schedulers.base import BaseScheduler

    from sprout.carbon.signal import CarbonSignal
    from sprout.controller import Controller
    from sprout.directives import DirectiveSet
    from sprout.energy.base import EnergyMeter
    from sprout.engines.base import Engine
    from sprout.judge.judges import Judge
    from sprout.ledger.store import Ledger

# The quality loop's logger since it lived in sprout.judge: operators filter on the name.
log = logging.getLogger("sprout.judge")

#: (judge, directive names) pairs whose unjudgeable directives were already logged: the
#: warning is given once per process, not once per job or per run.
_WARNED_UNJUDGEABLE: set[tuple[str, tuple[str, ...]]] = set()


def hour_index(t: datetime) -> int:
    """Hours since the Unix epoch of ``t``'s hour (the timing rule's clock)."""
    return math.floor(t.timestamp() / HOUR_S)


def cron_fields(expr: str) -> dict[str, Any]:
    """A 5-field crontab line as APScheduler ``CronTrigger`` fields.

    Raises:
        ValueError: not 5 fields.
    """
    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(f"cron {expr!r}: expected 5 fields (minute hour day month day_of_week)")
    return dict(zip(("minute", "hour", "day", "month", "day_of_week"), parts, strict=True))


class JudgeJob:
    """The quality loop's job (see the module).

    Args:
        ledger: where prompts, receipts, verdicts and estimates are.
        judge: the judge.
        engine: answers under the other directives (the serving engine).
        directives: the directive set.
        signal: the carbon signal (readings, history and forecasts for the timing rule).
        meter: meters the answers (default: the estimate meter).
        judge_meter: meters the judge's calls (default: the estimate meter).
        controller: gets the refreshed estimates (policy and policy version); its sampler
            is flushed before a run, so that its queued prompts are seen.
        config: how the job runs, its xi, embodied rate and prior included.
        clock: wall clock.
        owned: objects with ``close()`` the job closes with itself.
    """

    def __init__(
        self,
        ledger: Ledger,
        judge: Judge,
        engine: Engine,
        directives: DirectiveSet,
        signal: CarbonSignal,
        *,
        meter: EnergyMeter | None = None,
        judge_meter: EnergyMeter | None = None,
        controller: Controller | None = None,
        config: JudgeJobConfig | None = None,
        clock: Callable[[], datetime] = utcnow,
        owned: Sequence[Any] = (),
    ) -> None:
        self.config = config or JudgeJobConfig()
        self.ledger = ledger
        self.judge = judge
        self.directives = directives
        self.signal = signal
        self.controller = controller
        self.sampler = getattr(controller, "sampler", None)
        prior = self.config.prior
        self.prior = tuple(prior) if prior is not None else prior_quality(directives)
        embodied = self.config.embodied_g_per_s
        self.evaluator = Evaluator(
            ledger,
            judge,
            engine,
            directives,
            meter=meter or EstimateMeter(),
            judge_meter=judge_meter or EstimateMeter(),
            embodied_g_per_s=embodied_rate_g_per_s() if embodied is None else embodied,
            max_staleness_h=self.config.max_staleness_h,
            clock=clock,
        )
        self.judgeable = self.evaluator.judgeable
        self.unjudged = tuple(n for n in directives.names if n not in self.judgeable)
        self._warn_unjudged()
        self.timer = ForecastEvaluatorClock(self.config.timing)
        self._clock = clock
        self._owned = list(owned)
        self._window = CIWindow(720)
        self._seed_window()

    def _warn_unjudged(self) -> None:
        """Say once per process (per judge and directive set) which directives go unjudged."""
        key = (self.judge.name, tuple(self.directives.names))
        if not self.unjudged or key in _WARNED_UNJUDGEABLE:
            return
        _WARNED_UNJUDGEABLE.add(key)
        priors = dict(zip(self.directives.names, self.prior, strict=True))
        log.warning(
            "quality loop: the judge %s cannot judge directive(s) %s: %s. No evaluation "
            "answers are generated under them (no carbon spent on answers nobody judges), "
            "requests served under them get no verdict, and their quality estimate stays at "
            "the prior (%s)",
            self.judge.name,
            ", ".join(self.unjudged),
            self.judge.limitation(self.unjudged),
            ", ".join(f"{n} {priors[n]:.3f}" for n in self.unjudged),
        )

    # ------------------------------------------------------------------ timing

    def _seed_window(self) -> None:
        now = self._clock()
        try:
            readings = self.signal.provider.history(
                self.signal.zone, now - timedelta(hours=self._window.hours), now
            )
        except Exception as e:  # an optimisation: the window also fills tick by tick
            log.info("quality loop: no carbon history for the timing rule: %s", e)
            return
        for r in readings:
            self._window.add(r.time, r.ci_g_per_kwh)
        # The last hours, so that a local minimum can be seen from the first tick.
        self.timer._recent.update({hour_index(r.time): r.ci_g_per_kwh for r in readings[-2:]})

    def _forecast(self, now: datetime, until: datetime) -> list[tuple[int, float]]:
        hours = max(1, min(72, math.ceil((until - now).total_seconds() / HOUR_S) + 1))
        try:
            readings = self.signal.provider.forecast(self.signal.zone, hours)
        except Exception as e:  # a forecast improves the timing; Sprout's rule does without
            log.info("quality loop: no carbon forecast, using Sprout's rule: %s", e)
            return []
        return [(hour_index(r.time), r.ci_g_per_kwh) for r in readings]

    def _last_run_hour(self, oldest: datetime) -> int:
        """Where the timing rule's clock starts: the last stored run, else the oldest queued
        request (a live system has the bundled prior, so it need not judge at once)."""
        estimate = latest_estimate(self.ledger)
        if estimate is not None:
            return hour_index(estimate.at)
        return hour_index(oldest)

    def _flush_inputs(self) -> None:
        if self.sampler is not None:
            self.sampler.flush()
        self.ledger.flush()

    def _retention_cutoff(self, now: datetime) -> datetime | None:
        days = self.config.retention_days
        return None if days <= 0 else now - timedelta(days=days)

    def tick(self, now: datetime | None = None) -> JudgeRun:
        """Run if the timing rule (or the staleness deadline) says so; else record the hour."""
        now = now or self._clock()
        signal = self.signal.read()
        ci = signal.reading.ci_g_per_kwh
        observed = signal.fallback != "default"  # a configured default is no observation
        if observed:
            self._window.add(signal.reading.time, ci)
        ci_mean = self._window.context(ci, include_current=observed).ci_mean
        self._flush_inputs()
        queued = self.ledger.sampled_prompts(
            pending=True, since=self._retention_cutoff(now), limit=1
        )
        now_h = now.timestamp() / HOUR_S
        oldest_h = None
        forecast: list[tuple[int, float]] = []
        if queued:
            oldest = queued[0]["created_at"]
            oldest_h = oldest.timestamp() / HOUR_S
            if self.timer.last_run_hour is None:
                self.timer.last_run_hour = self._last_run_hour(oldest)
            if self.config.use_forecast:
                deadline = oldest + timedelta(
                    hours=self.config.max_staleness_h, seconds=-self.config.tick_s
                )
                forecast = self._forecast(now, deadline)
        reason = judge_run_reason(
            self.timer,
            now_h,
            ci,
            ci_mean,
            oldest_queued_h=oldest_h,
            max_staleness_h=self.config.max_staleness_h,
            tick_h=self.config.tick_s / HOUR_S,
            forecast=forecast,
        )
        if reason is None:
            return JudgeRun(now, "waiting" if queued else "idle", ci_g_per_kwh=ci)
        return self.run(now, reason=reason)

    # ------------------------------------------------------------------ runs

    def run(
        self, now: datetime | None = None, *, reason: str = "manual", limit: int | None = None
    ) -> JudgeRun:
        """Process the queue now (up to ``limit``, default ``batch_size``), then refresh the
        quality estimates.

        Raises:
            LedgerError: the ledger cannot be read or written.
        """
        from sprout.ledger.locks import job_lock  # SQLAlchemy: loaded by the first run

        now = now or self._clock()
        with job_lock(self.ledger.url, "judge") as acquired:
            if not acquired:
                return JudgeRun(now, "locked")
            result = self._run_locked(now, reason, limit or self.config.batch_size)
        self.timer.last_run_hour = hour_index(now)
        return result

    def _run_locked(self, now: datetime, reason: str, limit: int) -> JudgeRun:
        self._flush_inputs()
        self._prune(now)
        signal = self.signal.read()
        result = JudgeRun(
            now,
            reason,
            ran=True,
            ci_g_per_kwh=signal.reading.ci_g_per_kwh,
            unjudged=self.unjudged,
        )
        rows = self.ledger.sampled_prompts(
            pending=True, since=self._retention_cutoff(now), limit=limit
        )
        result.picked = len(rows)
        for row in rows:
            self.evaluator.process(row, signal, now, result)
        self.ledger.flush()  # the evaluation receipts
        result.estimate = self.refresh(now)
        return result

    def _prune(self, now: datetime) -> None:
        # The ledger's SQLAlchemy modules, loaded by the first run rather than at import.
        from sprout.ledger.migrate import is_sqlite_memory
        from sprout.ledger.retention import prune_prompts

        if self.config.retention_days <= 0 or is_sqlite_memory(self.ledger.url):
            return  # (an in-memory ledger cannot be reached through a second engine)
        try:
            deleted = prune_prompts(self.ledger.url, self.config.retention_days, now=now)
        except LedgerError as e:
            log.warning("quality loop: expired prompts not pruned: %s", e)
            return
        if deleted:
            log.info("quality loop: deleted %d prompts past their retention", deleted)

    # ------------------------------------------------------------------ estimates

    def refresh(self, now: datetime | None = None) -> QualityEstimate:
        """Re-estimate quality from the recent verdicts, store it, apply it to the
        controller; a warning is logged and stored when quality is below the floor.

        Raises:
            LedgerError: the ledger cannot be read or written.
        """
        now = now or self._clock()
        horizon = now - timedelta(hours=self.config.horizon_h)
        latest: dict[str, Mapping[str, Any]] = {}
        for row in self.ledger.verdicts(since=horizon):
            latest[row["request_id"]] = row  # in id order: a re-judged request's last wins
        observations = [
            Observation(
                row["receipt_created_at"],
                row["served_directive"],
                row["preferred_directive"],
                forced=(row["detail"] or {}).get("served_decision") == GUARD_REASON,
            )
            for row in latest.values()
        ]
        estimate = self.config.estimate(
            observations,
            self.directives.names,
            now,
            prior=self.prior,
            unjudged=self.unjudged,
        )
        warning = estimate.warning()
        if warning:
            log.warning("quality loop: %s", warning)
        self.ledger.save_policy_version(
            QUALITY_KIND,
            estimate.as_params(),
            {"judge": self.judge.name, "verdicts_read": len(latest)},
            note=f"WARNING: {warning}" if warning else "quality estimates refreshed by the judge",
        )
        if self.controller is not None:
            self.apply(estimate)
            # The contextual policy's margin, from the verdicts on its own choices (the rows
            # just read: the same horizon, 8 half-lives).
            refresh_margin(self.controller, now, self.config.half_life_h, latest.values())
        return estimate

    def apply(self, estimate: QualityEstimate) -> None:
        """Give the attached controller the estimate: the LP's quality, the guard's share."""
        if self.controller is not None:
            apply_estimate(self.controller, estimate, self.config.xi)

    # ------------------------------------------------------------------ scheduling

    def schedule(self, scheduler: BaseScheduler, cron: str = "5 * * * *") -> Job:
        """Add :meth:`tick` to ``scheduler`` on the crontab line ``cron`` (UTC)."""
        return add_cron_job(
            scheduler,
            self._scheduled_tick,
            job_id="sprout-judge",
            name="judge",
            **cron_fields(cron),
        )

    def _scheduled_tick(self) -> None:
        try:
            result = self.tick()
        except Exception:  # a failed tick must not stop the schedule; the next one retries
            log.exception("quality loop: judge tick failed")
            return
        (log.info if result.ran else log.debug)("%s", result.describe())

    def close(self) -> None:
        """Close what the job built for itself (not what it was given)."""
        for thing in reversed(self._owned):
            with contextlib.suppress(Exception):
                thing.close()
        self._owned.clear()


__all__ = ["JudgeJob", "cron_fields", "hour_index"]
