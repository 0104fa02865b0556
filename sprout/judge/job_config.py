"""How the quality loop's judge job runs and estimates (pure): :class:`JudgeJobConfig`.

Shared by the live job (:class:`sprout.quality_loop.job.JudgeJob`) and the simulator's loop
(:mod:`sprout.sim.loop`), so that both estimate quality under the same rules; it holds no
collaborator, only numbers and the timing rule.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sprout.accounting import embodied_rate_g_per_s
from sprout.judge.quality import (
    DEFAULT_MIN_WEIGHT,
    DEFAULT_PRIOR_WEIGHT,
    Observation,
    QualityEstimate,
    estimate_quality,
)
from sprout.judge.timing import ForecastTimingRule
from sprout.policy.recency import DEFAULT_HALF_LIFE_H

if TYPE_CHECKING:
    from sprout.config import Settings

#: Verdicts older than this many half-lives are not read (they weigh < 0.4%).
_HORIZON_HALF_LIVES = 8
HOUR_S = 3600.0


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
        xi: the optimizer's xi (for the LP policy versions the live job writes on refresh).
        embodied_g_per_s: embodied carbon rate of the live job's evaluation receipts (None:
            :func:`sprout.accounting.embodied_rate_g_per_s`'s default).
        prior: the live job's prior quality per directive (None: the bundled judgments,
            :func:`sprout.training.versions.prior_quality`); :meth:`estimate` takes its prior
            from the caller.
    """

    max_staleness_h: float = 24.0
    batch_size: int = 200
    retention_days: float = 30.0
    use_forecast: bool = True
    tick_s: float = HOUR_S
    timing: ForecastTimingRule = field(default_factory=ForecastTimingRule)
    half_life_h: float = DEFAULT_HALF_LIFE_H
    prior_weight: float = DEFAULT_PRIOR_WEIGHT
    floor: float = 0.9
    min_weight: float = DEFAULT_MIN_WEIGHT
    seed: int = 0
    xi: float = 0.1
    embodied_g_per_s: float | None = None
    prior: tuple[float, ...] | None = None

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
            xi=settings.xi,
            embodied_g_per_s=embodied_rate_g_per_s(settings.embodied_g, settings.lifetime_years),
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


__all__ = ["HOUR_S", "JudgeJobConfig"]
