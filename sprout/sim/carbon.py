"""What the policy may know about carbon intensity in each simulated hour.

Two modes:

- ``paper``: as the Sprout paper (and its artifact) did: CI min and max over the whole trace
  (the year, including the future), the mean over the simulated window (also the future).
- ``causal``: what a live system can know: min, max and mean over the trailing
  ``history_hours`` of the trace up to and including the current hour, reaching before the
  window's start where the trace has those hours. This is exactly what the live controller's
  :class:`~sprout.policy.history.CIWindow` yields, and it is computed with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from sprout.carbon.trace import CarbonTrace
from sprout.errors import ConfigError
from sprout.judge.timing import EvaluatorClock, TimingRule
from sprout.policy.base import CarbonContext
from sprout.policy.history import CIWindow

Mode = Literal["paper", "causal"]
MODES: tuple[str, ...] = ("paper", "causal")
DEFAULT_HISTORY_HOURS = 720


@dataclass(frozen=True)
class CarbonWindow:
    """Per-hour carbon context of a simulated window.

    Attributes:
        zone: the trace's zone.
        start_hour: first trace hour of the window.
        mode: ``paper`` or ``causal``.
        ci_g_per_kwh, ci_min, ci_max, ci_mean: (hours,) the intensity and the statistics
            the policy sees in each hour.
        ci_trace_mean: mean over the whole trace (look-ahead: only paper mode may use it).
    """

    zone: str
    start_hour: int
    mode: str
    ci_g_per_kwh: np.ndarray
    ci_min: np.ndarray
    ci_max: np.ndarray
    ci_mean: np.ndarray
    ci_trace_mean: float

    @property
    def hours(self) -> int:
        """Length of the window."""
        return int(self.ci_g_per_kwh.shape[0])

    def context(self, hour: int) -> CarbonContext:
        """The policy's carbon context in window hour ``hour``."""
        return CarbonContext(
            ci_g_per_kwh=float(self.ci_g_per_kwh[hour]),
            ci_min=float(self.ci_min[hour]),
            ci_max=float(self.ci_max[hour]),
            ci_mean=float(self.ci_mean[hour]),
        )

    def evaluator_runs(self, rule: TimingRule | None = None) -> np.ndarray:
        """(hours,) True where the offline evaluator runs, comparing CI with ``ci_mean``."""
        clock = EvaluatorClock(rule or TimingRule())
        return np.array(
            [
                clock.step(h, float(ci), float(mean))
                for h, (ci, mean) in enumerate(zip(self.ci_g_per_kwh, self.ci_mean, strict=True))
            ],
            dtype=bool,
        )


def carbon_window(
    trace: CarbonTrace,
    start_hour: int,
    hours: int,
    mode: str = "causal",
    history_hours: int = DEFAULT_HISTORY_HOURS,
) -> CarbonWindow:
    """The carbon contexts of ``hours`` hours from trace hour ``start_hour``.

    Raises:
        TraceError: if the window does not fit the trace.
        ConfigError: for an unknown mode or a history shorter than an hour.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    ci = np.asarray(trace.window(start_hour, hours), dtype=float)
    if mode == "paper":
        full = trace.ci_g_per_kwh
        return CarbonWindow(
            zone=trace.zone,
            start_hour=start_hour,
            mode=mode,
            ci_g_per_kwh=ci,
            ci_min=np.full(hours, float(full.min())),
            ci_max=np.full(hours, float(full.max())),
            ci_mean=np.full(hours, float(ci.mean())),
            ci_trace_mean=float(full.mean()),
        )
    if history_hours < 1:
        raise ConfigError(f"history_hours must be >= 1, got {history_hours}")
    window = CIWindow(history_hours)
    for h in range(max(0, start_hour - history_hours + 1), start_hour):
        window.add(trace.time_of(h), float(trace.ci_g_per_kwh[h]))
    stats = np.empty((hours, 3))
    for h in range(hours):
        value = float(ci[h])
        window.add(trace.time_of(start_hour + h), value)
        ctx = window.context(value)
        stats[h] = (ctx.ci_min, ctx.ci_max, ctx.ci_mean)
    return CarbonWindow(
        zone=trace.zone,
        start_hour=start_hour,
        mode=mode,
        ci_g_per_kwh=ci,
        ci_min=stats[:, 0],
        ci_max=stats[:, 1],
        ci_mean=stats[:, 2],
        ci_trace_mean=float(trace.ci_g_per_kwh.mean()),
    )
