"""When to run the offline evaluator (the judge batch that refreshes quality), as Sprout does
(pure, no I/O).

The rule, in hours since some fixed origin:

- the first hour ever seen runs;
- never within ``min_gap_h`` (6) of the last run;
- forced once ``max_gap_h`` (72) have passed since the last run;
- otherwise only when the intensity is below the mean intensity and the decay-adjusted
  intensity ``D(t) = CI(t) * exp(decay_per_h * (t - t_last))`` has just passed a local minimum:
  its hourly change turned from ``<= 0`` (hour ``t-1``) to ``>= 0`` (hour ``t``).

The decay term makes a later, slightly dirtier hour look worse than an earlier clean one, so
the evaluator does not wait forever for the perfect low. Judging is itself carbon-intensive:
running it in clean hours is the point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Sprout's published parameters.
DEFAULT_MIN_GAP_H = 6
DEFAULT_MAX_GAP_H = 72
DEFAULT_DECAY_PER_H = 0.029


@dataclass(frozen=True)
class TimingRule:
    """Sprout's offline-evaluator timing rule (stateless).

    Attributes:
        min_gap_h: never run within this many hours of the last run.
        max_gap_h: run regardless once this many hours have passed.
        decay_per_h: growth rate of the decay-adjusted intensity, per hour.
    """

    min_gap_h: float = DEFAULT_MIN_GAP_H
    max_gap_h: float = DEFAULT_MAX_GAP_H
    decay_per_h: float = DEFAULT_DECAY_PER_H

    def __post_init__(self) -> None:
        if not (0 <= self.min_gap_h <= self.max_gap_h) or not math.isfinite(self.max_gap_h):
            raise ValueError(
                f"need 0 <= min_gap_h <= max_gap_h < inf, got {self.min_gap_h}, {self.max_gap_h}"
            )
        if not math.isfinite(self.decay_per_h):
            raise ValueError(f"decay_per_h must be finite, got {self.decay_per_h!r}")

    def should_run(
        self,
        hour: int,
        last_run_hour: int | None,
        ci_recent: Sequence[float | None],
        ci_mean: float,
    ) -> bool:
        """Whether the evaluator runs at ``hour``.

        Args:
            hour: the current hour.
            last_run_hour: the hour of the last run (None: never ran, so run now).
            ci_recent: intensities of hours ``hour-2, hour-1, hour`` (None where unknown: no
                local minimum can then be seen).
            ci_mean: the mean intensity the current one is compared with.
        """
        if last_run_hour is None:
            return True
        gap = hour - last_run_hour
        if gap < self.min_gap_h:
            return False
        if gap >= self.max_gap_h:
            return True
        if len(ci_recent) != 3:
            raise ValueError(f"ci_recent: expected 3 values (t-2, t-1, t), got {len(ci_recent)}")
        ci_2, ci_1, ci_0 = ci_recent
        if ci_2 is None or ci_1 is None or ci_0 is None or not ci_0 < ci_mean:
            return False
        d_2, d_1, d_0 = (
            ci * math.exp(self.decay_per_h * (h - last_run_hour))
            for ci, h in ((ci_2, hour - 2), (ci_1, hour - 1), (ci_0, hour))
        )
        return d_1 - d_2 <= 0 and d_0 - d_1 >= 0


@dataclass
class EvaluatorClock:
    """Hour-by-hour state for :class:`TimingRule`: feed it each hour's intensity in order.

    Live, call :meth:`step` once per hour with the hour index (e.g. hours since the epoch);
    in the simulator, with the window's hour index. A skipped hour leaves no local minimum
    visible until two consecutive hours have been seen again.
    """

    rule: TimingRule = field(default_factory=TimingRule)
    last_run_hour: int | None = None
    _recent: dict[int, float] = field(default_factory=dict, repr=False)

    def step(self, hour: int, ci_g_per_kwh: float, ci_mean: float) -> bool:
        """Record ``hour``'s intensity; True when the evaluator should run now (recorded)."""
        self._recent[hour] = ci_g_per_kwh
        for old in [h for h in self._recent if h < hour - 2]:
            del self._recent[old]
        recent = [self._recent.get(hour - 2), self._recent.get(hour - 1), ci_g_per_kwh]
        run = self.rule.should_run(hour, self.last_run_hour, recent, ci_mean)
        if run:
            self.last_run_hour = hour
        return run


def run_hours(
    ci_g_per_kwh: Sequence[float],
    ci_mean: float | Sequence[float],
    rule: TimingRule | None = None,
) -> list[int]:
    """The hours (indices into ``ci_g_per_kwh``, from 0) at which the evaluator runs.

    Args:
        ci_g_per_kwh: consecutive hourly intensities.
        ci_mean: the mean to compare with: one number (the paper: the window's mean) or one
            per hour (a trailing mean, for a causal run).
        rule: the timing rule (Sprout's defaults if None).
    """
    clock = EvaluatorClock(rule or TimingRule())
    if isinstance(ci_mean, Sequence) or hasattr(ci_mean, "__len__"):
        means = [float(m) for m in ci_mean]  # type: ignore[union-attr]
    else:
        means = [float(ci_mean)] * len(ci_g_per_kwh)
    if len(means) != len(ci_g_per_kwh):
        raise ValueError(f"ci_mean: expected {len(ci_g_per_kwh)} values, got {len(means)}")
    return [
        h
        for h, (ci, mean) in enumerate(zip(ci_g_per_kwh, means, strict=True))
        if clock.step(h, float(ci), float(mean))
    ]


@dataclass(frozen=True)
class ForecastTimingRule(TimingRule):
    """Sprout's timing rule made forecast-aware, with a deadline (stateless).

    Sprout's rule sees a low only once it has passed. When the carbon provider forecasts the
    coming hours, the evaluator can instead run at the cleanest hour still ahead: it runs
    now when no forecast hour before the deadline has a lower decay-adjusted intensity
    ``D(t) = CI(t) * exp(decay_per_h * (t - t_last))`` than now. The deadline is the earlier
    of ``t_last + max_gap_h`` and ``deadline_hour`` (e.g. the hour by which the oldest queued
    prompt must be judged). When the forecast stops short of the deadline, a cleaner hour
    may still come after it, so the hour must also be below the mean intensity, as in
    Sprout's rule. ``deadline_hour`` forces a run even within ``min_gap_h``: it is a promise
    to the operator (a maximum staleness), the gap only a preference.
    """

    def should_run_forecast(
        self,
        hour: int,
        last_run_hour: int | None,
        ci_now: float,
        forecast: Sequence[tuple[int, float]],
        ci_mean: float,
        deadline_hour: int | None = None,
    ) -> bool | None:
        """Whether the evaluator runs at ``hour``; None when the forecast cannot tell.

        Args:
            hour: the current hour.
            last_run_hour: the hour of the last run (None: never ran, so run now).
            ci_now: the intensity now.
            forecast: ``(hour, intensity)`` of forecast hours; those after ``hour`` and not
                after the deadline are considered.
            ci_mean: the mean intensity (for forecasts that stop short of the deadline).
            deadline_hour: run at this hour at the latest (None: only ``max_gap_h``).

        Returns:
            True or False; None when no forecast hour lies between now and the deadline
            (fall back to :meth:`TimingRule.should_run`).
        """
        if last_run_hour is None:
            return True
        if deadline_hour is not None and hour >= deadline_hour:
            return True
        gap = hour - last_run_hour
        if gap < self.min_gap_h:
            return False
        if gap >= self.max_gap_h:
            return True
        end = last_run_hour + self.max_gap_h
        if deadline_hour is not None:
            end = min(end, deadline_hour)
        ahead = [(h, ci) for h, ci in forecast if hour < h <= end]
        if not ahead:
            return None

        def adjusted(h: float, ci: float) -> float:
            return ci * math.exp(self.decay_per_h * (h - last_run_hour))

        if adjusted(hour, ci_now) > min(adjusted(h, ci) for h, ci in ahead):
            return False  # a cleaner hour comes before the deadline
        if max(h for h, _ in ahead) >= math.floor(end):
            return True  # the cleanest hour left before the deadline is now
        return ci_now < ci_mean


@dataclass
class ForecastEvaluatorClock(EvaluatorClock):
    """:class:`EvaluatorClock` with forecasts and a deadline (see :class:`ForecastTimingRule`).

    Each :meth:`step` uses the forecast when it covers hours before the deadline, else
    Sprout's rule on the hours seen; a deadline that has come forces a run either way.
    """

    rule: TimingRule = field(default_factory=ForecastTimingRule)

    def step(  # type: ignore[override]
        self,
        hour: int,
        ci_g_per_kwh: float,
        ci_mean: float,
        forecast: Sequence[tuple[int, float]] = (),
        deadline_hour: int | None = None,
    ) -> bool:
        """Record ``hour``'s intensity; True when the evaluator should run now (recorded)."""
        self._recent[hour] = ci_g_per_kwh
        for old in [h for h in self._recent if h < hour - 2]:
            del self._recent[old]
        rule = (
            self.rule
            if isinstance(self.rule, ForecastTimingRule)
            else ForecastTimingRule(self.rule.min_gap_h, self.rule.max_gap_h, self.rule.decay_per_h)
        )
        run = rule.should_run_forecast(
            hour, self.last_run_hour, ci_g_per_kwh, forecast, ci_mean, deadline_hour
        )
        if run is None:
            recent = [self._recent.get(hour - 2), self._recent.get(hour - 1), ci_g_per_kwh]
            run = rule.should_run(hour, self.last_run_hour, recent, ci_mean)
        if run:
            self.last_run_hour = hour
        return run


def judge_run_reason(
    clock: ForecastEvaluatorClock,
    now_h: float,
    ci_g_per_kwh: float,
    ci_mean: float,
    *,
    oldest_queued_h: float | None,
    max_staleness_h: float,
    tick_h: float = 1.0,
    forecast: Sequence[tuple[int, float]] = (),
) -> str | None:
    """Whether the quality loop's judge job runs now, and why: the live job's rule
    (:meth:`sprout.quality_loop.job.JudgeJob.tick`), shared with the simulator.

    With nothing queued the hour is only recorded (for local minima), never a run. Else the
    job runs when ``clock`` says the hour is due or when the oldest queued request would
    pass ``max_staleness_h`` before the next tick.

    Args:
        clock: the job's clock (its ``last_run_hour`` is set when it runs).
        now_h: now, in hours since the clock's origin (a fraction within the hour).
        ci_g_per_kwh, ci_mean: the intensity now and the mean it is compared with.
        oldest_queued_h: when the oldest queued request was served (None: none queued).
        max_staleness_h: longest a queued request waits for its verdict.
        tick_h: hours between ticks (a run is forced one tick before the deadline).
        forecast: ``(hour, intensity)`` forecast hours (empty: Sprout's rule alone).

    Returns:
        ``staleness``, ``max-gap`` or ``low-carbon``; None when the job does not run.
    """
    hour = math.floor(now_h)
    if oldest_queued_h is None:
        previous = clock.last_run_hour
        clock.step(hour, ci_g_per_kwh, ci_mean)  # keeps the hourly history for local minima
        clock.last_run_hour = previous  # nothing judged: not a run
        return None
    if clock.last_run_hour is None:
        clock.last_run_hour = math.floor(oldest_queued_h)
    deadline_h = oldest_queued_h + max_staleness_h - tick_h
    last = clock.last_run_hour
    due = clock.step(hour, ci_g_per_kwh, ci_mean, forecast, math.floor(deadline_h))
    stale = now_h >= deadline_h or hour >= math.floor(deadline_h)
    if not (due or stale):
        return None
    clock.last_run_hour = hour
    if stale:
        return "staleness"
    if last is not None and hour - last >= clock.rule.max_gap_h:
        return "max-gap"
    return "low-carbon"
