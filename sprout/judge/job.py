"""The judge job: answers sampled requests under the other directives, judges them at
low-carbon times, and feeds the verdicts back to the optimizer.

One run (:meth:`JudgeJob.run`), under the cluster-wide ``judge`` lock so that replicas
sharing a ledger never duplicate it:

1. prompts past their retention are deleted; the queue is the kept prompts without a
   verdict, oldest first, at most ``batch_size``;
2. each request is answered under every directive it was not served with, by the serving
   engine; the judge (:mod:`sprout.judge.judges`) picks the best answer, the served one
   included (it was kept with the prompt);
3. every generation and every judge call is metered and written to the ledger as a receipt
   with ``purpose="evaluation"``: reports count it as the quality loop's overhead;
4. the verdict is stored; a request that still fails once its staleness deadline has passed
   gets a "no verdict" with the error, so it leaves the queue;
5. the quality estimates are refreshed from the recent verdicts
   (:mod:`sprout.judge.quality`), stored as a ``judge-quality`` policy version (with the
   warning, when quality is below the floor) and applied to an attached controller: the LP
   gets the new quality, and the quality guard its baseline share.

When (:meth:`JudgeJob.tick`, called by the scheduler, hourly by default): Sprout's timing
rule (:mod:`sprout.judge.timing`), forecast-aware when the carbon provider gives forecasts,
and always before the oldest queued request exceeds ``max_staleness_h``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sprout.accounting import embodied_rate_g_per_s
from sprout.carbon.base import utcnow
from sprout.chat import ChatRequest, parse_messages
from sprout.energy.base import EnergySample, Usage
from sprout.errors import (
    EngineError,
    LedgerError,
    MeterError,
    RequestError,
    SproutError,
    UnknownPromptError,
)
from sprout.judge.judges import Judge, JudgeCall, JudgeItem, LLMJudge
from sprout.judge.quality import (
    DEFAULT_HALF_LIFE_H,
    DEFAULT_MIN_WEIGHT,
    DEFAULT_PRIOR_WEIGHT,
    GUARD_REASON,
    Observation,
    QualityEstimate,
    QualityGuardPolicy,
    estimate_quality,
    refreshed_stats,
    unwrap,
)
from sprout.judge.timing import ForecastEvaluatorClock, ForecastTimingRule, judge_run_reason
from sprout.judge.training import refresh_margin
from sprout.policy.base import QUALITY_KIND
from sprout.policy.history import CIWindow
from sprout.receipt import Receipt, metered_receipt

if TYPE_CHECKING:
    from apscheduler.job import Job
    from apscheduler.schedulers.base import BaseScheduler

    from sprout.carbon.signal import CarbonSignal, SignalReading
    from sprout.config import Settings
    from sprout.controller import Controller
    from sprout.directives import Directive, DirectiveSet
    from sprout.energy.base import EnergyMeter
    from sprout.engines.base import Engine, Generation
    from sprout.judge.sampler import Sampler
    from sprout.ledger.store import Ledger
    from sprout.policy.base import Policy
    from sprout.policy.stats import LevelStats

log = logging.getLogger("sprout.judge")

#: Receipt ``directive`` of a judge call, and ``decision`` of the loop's receipts.
JUDGE_DIRECTIVE = "judge"
ANSWER_DECISION = "judge-answer"
CALL_DECISION = "judge-call"
#: Verdicts older than this many half-lives are not read (they weigh < 0.4%).
_HORIZON_HALF_LIVES = 8
_HOUR_S = 3600.0
#: (judge, directive names) pairs whose unjudgeable directives were already logged: the
#: warning is given once per process, not once per job or per run.
_WARNED_UNJUDGEABLE: set[tuple[str, tuple[str, ...]]] = set()


def hour_index(t: datetime) -> int:
    """Hours since the Unix epoch of ``t``'s hour (the timing rule's clock)."""
    return math.floor(t.timestamp() / _HOUR_S)


def cron_fields(expr: str) -> dict[str, Any]:
    """A 5-field crontab line as APScheduler ``CronTrigger`` fields.

    Raises:
        ValueError: not 5 fields.
    """
    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(f"cron {expr!r}: expected 5 fields (minute hour day month day_of_week)")
    return dict(zip(("minute", "hour", "day", "month", "day_of_week"), parts, strict=True))


@dataclass(frozen=True)
class JudgeJobConfig:
    """How the judge job runs (see :meth:`from_settings`).

    Attributes:
        max_staleness_h: longest a sampled request waits for its verdict.
        batch_size: most requests per run.
        retention_days: kept prompts older than this are deleted first (0: kept).
        use_forecast: plan runs on the provider's forecast when it gives one.
        tick_s: how often :meth:`JudgeJob.tick` is called (a run is forced one tick before
            the staleness deadline).
        timing: the timing rule.
        half_life_h, prior_weight, floor, min_weight: of the quality estimate (see
            :func:`sprout.judge.quality.estimate_quality`).
        seed: seeds the judge's per-item answer order.
    """

    max_staleness_h: float = 24.0
    batch_size: int = 200
    retention_days: float = 30.0
    use_forecast: bool = True
    tick_s: float = _HOUR_S
    timing: ForecastTimingRule = field(default_factory=ForecastTimingRule)
    half_life_h: float = DEFAULT_HALF_LIFE_H
    prior_weight: float = DEFAULT_PRIOR_WEIGHT
    floor: float = 0.9
    min_weight: float = DEFAULT_MIN_WEIGHT
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> JudgeJobConfig:
        """The configuration ``settings`` give (the floor defaults to ``1 - xi``)."""
        return cls(
            max_staleness_h=settings.judge_max_staleness_h,
            batch_size=settings.judge_batch_size,
            retention_days=settings.prompt_retention_days,
            use_forecast=settings.judge_use_forecast,
            half_life_h=settings.judge_half_life_h,
            prior_weight=settings.judge_prior_weight,
            floor=settings.judge_quality_floor or 1.0 - settings.xi,
            min_weight=settings.judge_min_verdicts,
        )

    @property
    def horizon_h(self) -> float:
        """Age of the oldest verdict an estimate reads (8 half-lives: weight below 0.4%)."""
        return _HORIZON_HALF_LIVES * self.half_life_h

    def estimate(
        self,
        observations: Iterable[Observation],
        levels: Sequence[str],
        now: datetime,
        *,
        prior: Sequence[float],
        unjudged: Collection[str] = (),
    ) -> QualityEstimate:
        """The quality estimate and the guard's share of ``observations`` under this
        configuration (the live job's refresh and the simulator's both estimate here)."""
        return estimate_quality(
            observations,
            levels,
            now,
            prior=prior,
            prior_weight=self.prior_weight,
            half_life_h=self.half_life_h,
            floor=self.floor,
            min_weight=self.min_weight,
            unjudged=unjudged,
        )


@dataclass
class JudgeRun:
    """What one tick or run did.

    Attributes:
        at: when (the job's clock).
        reason: ``manual``, ``low-carbon``, ``max-gap`` or ``staleness`` for a run;
            ``idle`` (nothing queued), ``waiting`` (the timing rule defers) or ``locked``
            (another process runs the job) when nothing ran.
        ran: whether requests were processed.
        ci_g_per_kwh: the intensity the run was metered at.
        picked: queued requests taken.
        outcomes: verdicts written, by outcome (``preferred``, ``tie``, ``no-verdict``).
        preferred: verdicts by preferred directive.
        deferred: requests left queued for a later run (receipt not stored yet, engine down).
        answers, judge_calls: evaluation generations written to the ledger.
        energy_kwh, carbon_g: their energy and carbon.
        estimate: the refreshed quality estimate.
        errors: what failed, one line each.
        unjudged: directives the judge cannot judge (no answer generated for them; their
            quality estimate is the prior).
    """

    at: datetime
    reason: str
    ran: bool = False
    ci_g_per_kwh: float | None = None
    picked: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    preferred: Counter[str] = field(default_factory=Counter)
    deferred: int = 0
    answers: int = 0
    judge_calls: int = 0
    energy_kwh: float = 0.0
    carbon_g: float = 0.0
    estimate: QualityEstimate | None = None
    errors: list[str] = field(default_factory=list)
    unjudged: tuple[str, ...] = ()

    @property
    def verdicts(self) -> int:
        """Verdicts written."""
        return sum(self.outcomes.values())

    def describe(self) -> str:
        """A few lines for people."""
        if not self.ran:
            why = {
                "idle": "no sampled request is waiting",
                "waiting": "waiting for a lower-carbon hour (timing rule)",
                "locked": "another process is running the judge job on this ledger",
            }.get(self.reason, self.reason)
            return f"judge job at {self.at:%Y-%m-%d %H:%M} UTC: nothing run ({why})"
        lines = [
            f"judge run at {self.at:%Y-%m-%d %H:%M} UTC ({self.reason}, CI "
            f"{self.ci_g_per_kwh or 0:.0f} g/kWh): {self.picked} queued requests, "
            f"{self.verdicts} verdicts"
            + (
                " (" + ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items())) + ")"
                if self.outcomes
                else ""
            )
            + f", {self.deferred} left queued",
            "  preferred: "
            + (", ".join(f"{d} {n}" for d, n in sorted(self.preferred.items())) or "none"),
            f"  evaluation overhead: {self.answers} answers + {self.judge_calls} judge calls, "
            f"{self.energy_kwh * 1000:.3f} Wh, {self.carbon_g:.3f} gCO2e "
            "(ledger receipts, purpose=evaluation)",
        ]
        if self.estimate is not None:
            e = self.estimate
            q = ", ".join(f"{k} {v:.3f}" for k, v in zip(e.levels, e.quality, strict=True))
            pref = "n/a" if e.preference is None else f"{e.preference:.1%}"
            lines.append(
                f"  quality estimate: {q} ({e.weight:.1f} effective verdicts; normalized "
                f"preference {pref}, floor {e.floor:.1%})"
            )
            if e.warning():
                lines.append(f"  WARNING: {e.warning()}")
        if self.unjudged:
            lines.append(
                f"  not judged: {', '.join(self.unjudged)} (the judge cannot judge them: no "
                "answers generated, quality estimate = prior)"
            )
        lines += [f"  error: {err}" for err in self.errors[:10]]
        return "\n".join(lines)


def _cost(receipt: Receipt) -> dict[str, Any]:
    """What an answer cost, as kept in its verdict's detail."""
    return {
        "energy_kwh": receipt.energy_kwh,
        "time_s": receipt.latency_s,
        "output_tokens": receipt.output_tokens,
        "energy_source": receipt.energy_source,
    }


def prior_quality(directives: DirectiveSet) -> tuple[float, ...]:
    """Prior quality per directive: the bundled GPT-4 judgments for the recorded levels
    (L0, L1, L2), uniform for a directive set that does not name them.

    A directive the recordings do not cover (a fourth level added to the policy file) gets
    the baseline's prior: assumed as good as the baseline until verdicts say otherwise. Never
    0: a prior of 0 would hold its estimate near 0, whatever its verdicts, for as long as
    the prior outweighs them.
    """
    from sprout.data import LEVELS

    n = len(directives)
    if not set(LEVELS) <= set(directives.names):
        return tuple([1.0 / n] * n)
    from sprout.factory import bundled_level_stats

    stats = bundled_level_stats(directives)
    by_name = dict(zip(stats.levels, stats.quality, strict=True))
    fallback = by_name.get(directives.baseline.name, max(stats.quality))
    return tuple(by_name.get(name, fallback) for name in directives.names)


def policy_with_estimate(
    policy: Policy, estimate: QualityEstimate, baseline: Directive
) -> tuple[Policy, LevelStats | None]:
    """``policy`` updated by ``estimate``: an LP gets the new quality, and the whole is
    wrapped in the quality guard while it is engaged.

    Returns:
        The new policy and, for an LP, its statistics (else None).
    """
    from sprout.policy.sprout_lp import SproutLPPolicy

    inner = unwrap(policy)
    stats = None
    if isinstance(inner, SproutLPPolicy):
        stats = refreshed_stats(inner.stats, estimate)
        if stats != inner.stats:
            # A new object rather than a mutation: requests deciding now keep a consistent one.
            inner = SproutLPPolicy(inner.directives, stats, inner.xi, inner.embodied_g_per_s)
    if estimate.l0_share > 0.0:
        return QualityGuardPolicy(inner, baseline, estimate.l0_share), stats
    return inner, stats


def latest_estimate(ledger: Ledger) -> QualityEstimate | None:
    """The quality loop's latest stored estimate, or None (none, or unreadable: logged)."""
    try:
        version = ledger.latest_policy_version(QUALITY_KIND)
        return None if version is None else QualityEstimate.from_params(version.params)
    except (LedgerError, ValueError) as e:
        log.error("quality loop: the stored quality estimate cannot be used: %s", e)
        return None


def restore_quality(
    ledger: Ledger, policy: Policy, stats: LevelStats, baseline: Directive
) -> tuple[Policy, LevelStats]:
    """``policy`` and ``stats`` with the latest stored estimate applied (at start-up, so
    that a restarted controller keeps what the quality loop learnt)."""
    estimate = latest_estimate(ledger)
    if estimate is None:
        return policy, stats
    new_policy, new_stats = policy_with_estimate(policy, estimate, baseline)
    if estimate.below_floor:
        log.warning("quality loop: %s", estimate.warning())
    return new_policy, new_stats or stats


#: Attempts to apply an estimate while other writers keep swapping the serving policy.
_SWAP_TRIES = 3


def apply_estimate(controller: Controller, estimate: QualityEstimate, xi: float) -> None:
    """Give ``controller`` the estimate: its LP the new quality (stored as a new LP policy
    version, which its receipts then name), and the quality guard its baseline share.

    The new policy is derived from the serving one and swapped in only if that still serves
    (a retrained version may be swapped in meanwhile: then it is derived again from that).
    """
    from sprout.factory import lp_policy_version

    for _ in range(_SWAP_TRIES):
        current, version = controller.serving()
        policy, stats = policy_with_estimate(current, estimate, controller.directives.baseline)
        if stats is not None and controller.ledger is not None:
            try:
                version = lp_policy_version(controller.ledger, stats, xi)
            except SproutError as e:  # the receipts then keep the older version's id
                log.error("quality loop: refreshed LP statistics not stored: %s", e)
        if controller.swap_policy(policy, version, replacing=current, keep_guard=False):
            return
    log.warning(
        "quality loop: the serving policy kept changing; the estimate applies at the next run"
    )


class QualityFollower:
    """Keeps a controller up to date with the estimates a judge job elsewhere stores (another
    process, another replica): :meth:`poll` applies the latest one when it is new.

    Args:
        controller: the controller (with a ledger).
        xi: the optimizer's xi (for the LP policy versions).
    """

    def __init__(
        self, controller: Controller, xi: float, half_life_h: float = DEFAULT_HALF_LIFE_H
    ) -> None:
        if controller.ledger is None:
            raise ValueError("following the quality loop needs the controller's ledger")
        self.controller = controller
        self.xi = xi
        self.half_life_h = half_life_h
        self._seen: int | None = None

    def poll(self) -> bool:
        """Apply the latest stored estimate if it is new; whether one was applied.

        Raises:
            LedgerError: the ledger cannot be read.
        """
        assert self.controller.ledger is not None
        version = self.controller.ledger.latest_policy_version(QUALITY_KIND)
        if version is None or version.id == self._seen:
            return False
        self._seen = version.id
        try:
            estimate = QualityEstimate.from_params(version.params)
        except ValueError as e:
            log.error("quality loop: stored estimate %d cannot be used: %s", version.id, e)
            return False
        apply_estimate(self.controller, estimate, self.xi)
        refresh_margin(self.controller, self.controller.now(), self.half_life_h)
        if estimate.below_floor:
            log.warning("quality loop: %s", estimate.warning())
        return True

    def schedule(self, scheduler: BaseScheduler, interval_s: float = 600.0) -> Job:
        """Add :meth:`poll` to ``scheduler`` every ``interval_s`` seconds."""
        from sprout.scheduler import add_interval_job

        def job() -> None:
            try:
                self.poll()
            except SproutError as e:  # the next poll retries
                log.warning("quality loop: estimates not refreshed: %s", e)

        return add_interval_job(
            scheduler, job, interval_s=interval_s, job_id="sprout-quality-follow"
        )


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
        sampler: flushed before a run, so that its queued prompts are seen.
        controller: gets the refreshed estimates (policy and policy version).
        prior: prior quality per directive (default: :func:`prior_quality`).
        xi: the optimizer's xi (for the LP policy versions written on refresh).
        embodied_g_per_s: embodied carbon rate for the evaluation receipts.
        config: the job's configuration.
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
        sampler: Sampler | None = None,
        controller: Controller | None = None,
        prior: Sequence[float] | None = None,
        xi: float = 0.1,
        embodied_g_per_s: float | None = None,
        config: JudgeJobConfig | None = None,
        clock: Callable[[], datetime] = utcnow,
        owned: Sequence[Any] = (),
    ) -> None:
        from sprout.energy.estimate import EstimateMeter

        self.ledger = ledger
        self.judge = judge
        self.engine = engine
        self.directives = directives
        self.signal = signal
        self.meter = meter or EstimateMeter()
        self.judge_meter = judge_meter or EstimateMeter()
        self.sampler = sampler
        self.controller = controller
        self.prior = tuple(prior) if prior is not None else prior_quality(directives)
        #: The directives the judge can give verdicts on: the only ones answered.
        self.judgeable = judge.can_judge(directives.names)
        self.unjudged = tuple(n for n in directives.names if n not in self.judgeable)
        self._warn_unjudged()
        self.xi = xi
        self.embodied_g_per_s = (
            embodied_rate_g_per_s() if embodied_g_per_s is None else embodied_g_per_s
        )
        self.config = config or JudgeJobConfig()
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
        hours = max(1, min(72, math.ceil((until - now).total_seconds() / _HOUR_S) + 1))
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
        now_h = now.timestamp() / _HOUR_S
        oldest_h = None
        forecast: list[tuple[int, float]] = []
        if queued:
            oldest = queued[0]["created_at"]
            oldest_h = oldest.timestamp() / _HOUR_S
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
            tick_h=self.config.tick_s / _HOUR_S,
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
        from sprout.ledger.locks import job_lock

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
            self._process(row, signal, now, result)
        self.ledger.flush()  # the evaluation receipts
        result.estimate = self.refresh(now)
        return result

    def _prune(self, now: datetime) -> None:
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

    def _process(
        self, row: Mapping[str, Any], signal: SignalReading, now: datetime, result: JudgeRun
    ) -> None:
        request_id, created_at = row["request_id"], row["created_at"]
        receipt = self.ledger.find_receipt(request_id, created_at)
        if receipt is None:  # still buffered or spooled by its writer: next run
            result.deferred += 1
            return
        payload = row["prompt"] if isinstance(row["prompt"], dict) else {}
        try:
            base = ChatRequest(
                parse_messages(payload.get("messages")),
                max_new_tokens=payload.get("max_new_tokens"),
                stop=tuple(payload.get("stop") or ()),
                temperature=payload.get("temperature"),
            )
        except (RequestError, TypeError, ValueError) as e:
            self._verdict(
                receipt,
                payload,
                None,
                "no-verdict",
                {"error": f"unreadable prompt: {e}"},
                now,
                result,
            )
            return
        unusable = self._unusable(receipt, payload)
        if unusable:  # decided before generating anything: no carbon for answers not judged
            self._verdict(receipt, payload, None, "no-verdict", {"reason": unusable}, now, result)
            return
        stale = now >= created_at + timedelta(hours=self.config.max_staleness_h)
        evaluation: dict[str, str] = {}
        costs: dict[str, dict[str, Any]] = {}
        try:
            answers = self._answers(receipt, base, payload, signal, evaluation, costs, result)
            judged = self.judge.judge(
                JudgeItem(base.messages, answers, request_id, payload.get("prompt_id")),
                self.judge_meter,
            )
        except (RequestError, EngineError, MeterError, KeyError, ValueError) as e:
            # Never answerable (a prompt the replay has no recording of, a directive set too
            # small to compare) versus worth another try (a server that is down).
            permanent = not isinstance(e, (EngineError, MeterError)) or isinstance(
                e, UnknownPromptError
            )
            if permanent or stale:
                # Out of time (or never answerable): close it with the error, not silently.
                self._verdict(
                    receipt,
                    payload,
                    None,
                    "no-verdict",
                    {"error": str(e)[:500], "evaluation": evaluation},
                    now,
                    result,
                )
            else:
                result.deferred += 1
            result.errors.append(f"{request_id}: {e}")
            return
        calls = [self._call_receipt(c, signal, receipt, result) for c in judged.calls]
        result.judge_calls += len(calls)
        detail = {
            "outcome": judged.outcome,
            "evaluation": evaluation,
            "costs": costs,
            "judge_calls": calls,
            "judge": dict(judged.detail),
        }
        self._verdict(
            receipt, payload, judged.preferred, judged.outcome, detail, now, result, judged.protocol
        )

    def _unusable(self, receipt: Receipt, payload: Mapping[str, Any]) -> str | None:
        """Why no verdict the judge could give on this request would be usable, or None."""
        if not self.judge.can_judge([receipt.directive]):
            return (
                f"served under {receipt.directive}, which the judge {self.judge.name} cannot "
                f"judge ({self.judge.limitation([receipt.directive])})"
            )
        kept = {receipt.directive} if isinstance(payload.get("answer"), str) else set()
        if len(self.judgeable | kept) < 2:
            return (
                f"the judge {self.judge.name} can judge fewer than 2 of the directives "
                f"({', '.join(sorted(self.judgeable)) or 'none'})"
            )
        return None

    def _answers(
        self,
        receipt: Receipt,
        base: ChatRequest,
        payload: Mapping[str, Any],
        signal: SignalReading,
        evaluation: dict[str, str],
        costs: dict[str, dict[str, Any]],
        result: JudgeRun,
    ) -> dict[str, str]:
        """Each directive's answer: the served one as kept, the others generated now.

        ``evaluation`` gets each answer's receipt id (``served`` for the served one),
        ``costs`` its energy, time and tokens: with the verdict, a training example of the
        per-request policy (see :mod:`sprout.judge.training`).
        """
        served_answer = payload.get("answer")
        answers: dict[str, str] = {}
        # Only what the judge can use: an answer it cannot judge is carbon for nothing.
        names = [name for name in self.directives.names if name in self.judgeable]
        if receipt.directive not in names and isinstance(served_answer, str):
            # Served under a directive since removed: its answer is still judged.
            names.insert(0, receipt.directive)
        for name in names:
            if name == receipt.directive and isinstance(served_answer, str):
                answers[name] = served_answer
                evaluation[name] = "served"
                costs[name] = _cost(receipt)
                continue
            directive = self.directives.get(name)
            text, made = self._generate(directive, base, signal, receipt, result)
            answers[name] = text
            evaluation[name] = made.request_id
            costs[name] = _cost(made)
        return answers

    def _generate(
        self,
        directive: Directive,
        base: ChatRequest,
        signal: SignalReading,
        served: Receipt,
        result: JudgeRun,
    ) -> tuple[str, Receipt]:
        """Generate ``directive``'s answer, metered, and write its evaluation receipt."""
        request = directive.apply(base)
        request_id = f"eval-{uuid.uuid4().hex}"
        self.meter.begin(request_id)
        try:
            generation = self.engine.generate(request)
        except BaseException:
            with contextlib.suppress(Exception):  # close the window; the engine error wins
                self.meter.end(request_id, Usage(0, 0, 0.0, request.variant))
            raise
        sample = self.meter.end(
            request_id,
            Usage(
                generation.input_tokens,
                generation.output_tokens,
                generation.latency_s,
                request.variant,
                generation.first_token_s,
            ),
        )
        receipt = self._receipt(
            request_id,
            directive.name,
            ANSWER_DECISION,
            self.engine.name,
            generation,
            generation.energy or sample,
            signal,
            served,
            request.variant,
        )
        self._append(receipt, result)
        result.answers += 1
        return generation.text, receipt

    def _call_receipt(
        self, call: JudgeCall, signal: SignalReading, served: Receipt, result: JudgeRun
    ) -> str:
        """Write a judge call's evaluation receipt; returns its id."""
        energy = call.energy
        if energy is None:  # a judge that did not meter its call: estimate it
            from sprout.energy.estimate import EstimateMeter

            g = call.generation
            model = EstimateMeter().model
            energy = EnergySample(
                model.energy_kwh(g.input_tokens, g.output_tokens),
                "estimated",
                g.latency_s,
                model.label,
            )
        engine = self.judge.engine.name if isinstance(self.judge, LLMJudge) else self.judge.name
        receipt = self._receipt(
            f"eval-{uuid.uuid4().hex}",
            JUDGE_DIRECTIVE,
            CALL_DECISION,
            engine,
            call.generation,
            energy,
            signal,
            served,
            None,
        )
        self._append(receipt, result)
        return receipt.request_id

    def _receipt(
        self,
        request_id: str,
        directive: str,
        decision: str,
        engine: str,
        generation: Generation,
        energy: EnergySample,
        signal: SignalReading,
        served: Receipt,
        variant: str | None,
    ) -> Receipt:
        return metered_receipt(
            request_id=request_id,
            created_at=self._clock(),
            directive=directive,
            decision=decision,
            engine=engine,
            generation=generation,
            energy=energy,
            signal=signal,
            embodied_g_per_s=self.embodied_g_per_s,
            tenant=served.tenant,  # the overhead is attributed to whose request was judged
            variant=variant,
            prompt_id=served.prompt_id,
            purpose="evaluation",
        )

    def _append(self, receipt: Receipt, result: JudgeRun) -> None:
        self.ledger.append(receipt)
        result.energy_kwh += receipt.energy_kwh
        result.carbon_g += receipt.total_g

    def _verdict(
        self,
        receipt: Receipt,
        payload: Mapping[str, Any],
        preferred: str | None,
        outcome: str,
        detail: dict[str, Any],
        now: datetime,
        result: JudgeRun,
        protocol: str | None = None,
    ) -> None:
        detail = {
            "outcome": outcome,
            "served_decision": payload.get("decision") or receipt.decision,
            # Which policy version decided: its own verdicts revise its safety margin.
            "served_policy_version": receipt.policy_version,
            **detail,
        }
        self.ledger.add_verdict(
            receipt,
            preferred,
            judge=self.judge.name,
            protocol=protocol or self.judge.protocol,
            detail=detail,
            created_at=now,
        )
        result.outcomes[outcome] += 1
        if preferred is not None:
            result.preferred[preferred] += 1

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
            apply_estimate(self.controller, estimate, self.xi)

    # ------------------------------------------------------------------ scheduling

    def schedule(self, scheduler: BaseScheduler, cron: str = "5 * * * *") -> Job:
        """Add :meth:`tick` to ``scheduler`` on the crontab line ``cron`` (UTC)."""
        from sprout.scheduler import add_cron_job

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
    from sprout import factory
    from sprout.judge.judges import build_judge

    owned: list[Any] = []
    if controller is not None:
        ledger = ledger or controller.ledger
        engine = engine or controller.engine
    if ledger is None:
        ledger = factory.build_ledger(settings)
        owned.append(ledger)
    if engine is None:
        engine = factory.build_engine(settings)
        owned.append(engine)
    if controller is not None:
        directives, signal, meter = controller.directives, controller.signal, controller.meter
        embodied = controller.embodied_g_per_s
    else:
        directives = factory.load_directives(settings)
        signal = factory.build_signal(settings, clock)
        meter = factory.build_meter(settings, engine, ledger)
        embodied = embodied_rate_g_per_s(settings.embodied_g, settings.lifetime_years)
        owned += [signal, meter]
    if judge is None:
        judge = build_judge(settings)
        owned.insert(0, judge)
    judge_meter = None
    if isinstance(judge, LLMJudge):
        judge_meter = factory.build_meter(settings, judge.engine)
        owned.append(judge_meter)
    return JudgeJob(
        ledger,
        judge,
        engine,
        directives,
        signal,
        meter=meter,
        judge_meter=judge_meter,
        sampler=getattr(controller, "sampler", None),
        controller=controller,
        xi=settings.xi,
        embodied_g_per_s=embodied,
        config=JudgeJobConfig.from_settings(settings),
        clock=clock,
        owned=owned,
    )


__all__ = [
    "ANSWER_DECISION",
    "CALL_DECISION",
    "JUDGE_DIRECTIVE",
    "JudgeJob",
    "JudgeJobConfig",
    "JudgeRun",
    "QualityFollower",
    "apply_estimate",
    "build_judge_job",
    "cron_fields",
    "hour_index",
    "latest_estimate",
    "policy_with_estimate",
    "prior_quality",
    "restore_quality",
]
