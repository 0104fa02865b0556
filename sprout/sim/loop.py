"""The quality loop in the simulator: the live loop's rules and objects, fed by the run's draws.

The per-request policy in ``sprout simulate`` learns as ``sprout serve`` with ``sprout judge
schedule`` and ``sprout retrain --schedule`` beside it does, through the same functions:

- **sampling**: each served request the loop may see is sampled with probability
  ``judge_share``, on a generator of its own (:class:`sprout.judge.sampler.Sampler`'s rule);
- **timing**: the judge job ticks five minutes past each hour and runs when
  :func:`sprout.judge.timing.judge_run_reason` says so (the job's clock and its staleness
  deadline); it judges at most ``batch_size`` of the oldest queued requests per run;
- **estimates and the guard**: :meth:`JudgeJobConfig.estimate` over the verdicts of the last
  8 half-lives, handed to the policy by
  :func:`sprout.quality_loop.live.policy_with_estimate` (the quality guard's share of baseline
  requests);
- **the margin**: :meth:`ContextualPolicy.learn_verdicts` on the serving version's own
  choices (not the guard's), replacing what it had learnt, as
  :func:`sprout.quality_loop.live.refresh_margin` does;
- **retraining**: every ``retrain_every_h`` hours, :func:`sprout.training.retrain.retrain` on
  :func:`~sprout.training.sources.pick_sources` of the verdicts gathered so far (recency
  weights and age limit of :class:`~sprout.training.verdicts.LedgerVerdictSource`) and the
  training split, with the scheduled job's options; the model goes through its stored form
  (:func:`~sprout.training.serving.policy_from_params`, what the policy watcher loads) and the
  guard's share is kept until the next estimate (:func:`sprout.judge.quality.rewrap`).

What differs is storage and the judge: the queue and the verdicts are arrays here, not ledger
tables, and the judge is the recorded GPT-4 verdicts (the replay judge).

**Honest grading.** A retrained model learns the texts and verdicts of the prompts it was
judged on, and the bundled pools are finite: drawn with replacement, those prompts come back.
So when the loop retrains, each family's evaluated prompts are split in two
(:meth:`LoopConfig.pools`): the loop may sample only the first half (the second plays an
opted-out tenant), and every method's quality is graded on the second half only, prompts
whose verdicts no model ever saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from sprout.errors import ConfigError
from sprout.judge.job_config import JudgeJobConfig
from sprout.judge.quality import Observation
from sprout.judge.sampler import RECOMMENDED_JUDGE_SHARE
from sprout.judge.timing import ForecastEvaluatorClock, judge_run_reason
from sprout.policy.recency import age_weight
from sprout.training import retrain as retraining
from sprout.training.sources import RetrainOptions, TrainingExample, pick_sources

#: Hours between scheduled retrains by default: the product's ``retrain_cron`` is daily.
DEFAULT_RETRAIN_EVERY_H = 24
#: Minutes past the hour the judge job ticks (its default crontab line, ``5 * * * *``).
TICK_MINUTE = 5
#: Seed offset of the loop's pool split (independent of the held-out split's seed).
_POOL_SALT = 7919


@dataclass(frozen=True)
class LoopConfig:
    """How the simulated quality loop runs.

    Attributes:
        judge_share: share of the requests the loop may see that are judged.
        retrain_every_h: hours between scheduled retrains (0: never; the model trained
            before the window serves throughout).
        judge: the judge job's configuration (timing, staleness, batch, estimates); its
            floor is set from the run's xi.
        retrain: the scheduled retrain's options.
        guard_floor: the normalized preference the quality guard holds (None: the live
            default, ``1 - xi``).
    """

    judge_share: float = RECOMMENDED_JUDGE_SHARE
    retrain_every_h: int = DEFAULT_RETRAIN_EVERY_H
    judge: JudgeJobConfig = field(default_factory=JudgeJobConfig)
    retrain: RetrainOptions = field(default_factory=RetrainOptions)
    guard_floor: float | None = None

    def __post_init__(self) -> None:
        if not (0.0 <= self.judge_share <= 1.0):
            raise ConfigError(
                f"--judge-share: expected a share in [0, 1], got {self.judge_share!r}"
            )
        if self.retrain_every_h < 0:
            raise ConfigError(
                f"--retrain-every: expected hours >= 0 (0: never), got {self.retrain_every_h!r}"
            )

    @property
    def retrains(self) -> bool:
        """Whether the model is retrained in the window."""
        return self.retrain_every_h > 0 and self.judge_share > 0

    def pools(
        self, evaluated: np.ndarray, starts: ArrayLike, counts: ArrayLike, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(loop pool, graded pool): each family's evaluated rows split in halves by
        ``seed`` (see the module); without retraining, no pool and every evaluated row graded.
        """
        evaluated = np.asarray(evaluated, dtype=bool)
        if not self.retrains:
            return np.zeros_like(evaluated), evaluated.copy()
        rng = np.random.default_rng(seed + _POOL_SALT)
        loop = np.zeros_like(evaluated)
        for start, count in zip(starts, counts, strict=True):
            rows = start + np.flatnonzero(evaluated[start : start + count])
            loop[rng.permutation(rows)[: rows.size // 2]] = True
        return loop, evaluated & ~loop


def _hour_time(h: float) -> datetime:
    """The simulated wall clock of window hour ``h`` (an arbitrary fixed origin)."""
    return datetime(2000, 1, 1, tzinfo=UTC) + timedelta(hours=h)


@dataclass
class Verdicts:
    """The verdicts gathered so far (the ledger's ``verdicts`` rows, as arrays)."""

    served_h: list[np.ndarray] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    served: list[np.ndarray] = field(default_factory=list)
    preferred: list[np.ndarray] = field(default_factory=list)
    forced: list[np.ndarray] = field(default_factory=list)
    version: list[np.ndarray] = field(default_factory=list)

    def add(self, **parts: np.ndarray) -> None:
        for name, part in parts.items():
            getattr(self, name).append(part)

    def since(self, h: float) -> dict[str, np.ndarray]:
        """Every column of the verdicts on requests served at or after ``h``."""
        if not self.rows:
            names = ("served_h", "rows", "served", "preferred", "forced", "version")
            return {n: np.empty(0, dtype=np.int64) for n in names}
        cols = {}
        for name in ("served_h", "rows", "served", "preferred", "forced", "version"):
            # Compacted as read: the next read (each judge run reads twice) concatenates
            # only what was added since.
            col = np.concatenate(getattr(self, name))
            setattr(self, name, [col])
            cols[name] = col
        keep = cols["served_h"] >= h
        return {name: col[keep] for name, col in cols.items()}


class SimQualityLoop:
    """The quality loop of one simulated run (see the module).

    Args:
        config: the loop's configuration.
        levels: the policy's levels, the baseline first.
        prior: prior quality per level (the live job's :func:`prior_quality`).
        eligible: (rows,) workload rows the loop may sample.
        preferred: (rows,) the judge's preferred level per row (index into ``levels``;
            -1: tie, no verdict, or a level not served).
        seed: the sampler's seed.
    """

    def __init__(
        self,
        config: LoopConfig,
        levels: Sequence[str],
        prior: Sequence[float],
        eligible: np.ndarray,
        preferred: np.ndarray,
        seed: int,
    ) -> None:
        self.config = config
        self.levels = tuple(levels)
        self.prior = tuple(prior)
        self.eligible = eligible
        self.preferred = preferred
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x10_0B]))
        self.clock = ForecastEvaluatorClock(config.judge.timing)
        self.queue: list[tuple[Any, ...]] = []
        self.verdicts = Verdicts()
        self.l0_share = 0.0

    # --- serving ---------------------------------------------------------------------------

    def guard_forced(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Which of ``n`` requests the quality guard serves at the baseline
        (:class:`~sprout.judge.quality.QualityGuardPolicy`: each with its share)."""
        if self.l0_share <= 0.0:
            return np.zeros(n, dtype=bool)
        return rng.random(n) < self.l0_share

    def offer(
        self, hour: int, rows: np.ndarray, served: np.ndarray, forced: np.ndarray, version: int
    ) -> None:
        """The hour's served requests: a ``judge_share`` of the eligible ones is queued."""
        if self.config.judge_share <= 0.0:
            return
        draw = self.rng.random(rows.size) < self.config.judge_share
        pick = draw & self.eligible[rows]
        if pick.any():
            # Served through the hour: each request at its own minute.
            times = hour + (np.flatnonzero(pick) + 0.5) / rows.size
            self.queue.append((times, rows[pick], served[pick], forced[pick], version))

    # --- the judge job ---------------------------------------------------------------------

    def tick(self, hour: int, ci_g_per_kwh: float, ci_mean: float) -> np.ndarray | None:
        """The judge job's tick at ``hour`` (five past): the rows judged if it ran, else None.

        Returns:
            (judged, 3) int array of ``row, served level, forced`` for the charged answers.
        """
        now_h = hour + TICK_MINUTE / 60.0
        oldest = float(self.queue[0][0][0]) if self.queue else None

        cfg = self.config.judge
        reason = judge_run_reason(
            self.clock,
            now_h,
            ci_g_per_kwh,
            ci_mean,
            oldest_queued_h=oldest,
            max_staleness_h=cfg.max_staleness_h,
            tick_h=cfg.tick_s / 3600.0,
        )
        if reason is None:
            return None
        batch = self._take(cfg.batch_size)
        times, rows, served, forced, version = batch
        self.verdicts.add(
            served_h=times,
            rows=rows,
            served=served,
            preferred=self.preferred[rows],
            forced=forced,
            version=version,
        )
        return np.stack([rows, served, forced.astype(np.int64)], axis=1)

    def _take(self, limit: int) -> tuple[np.ndarray, ...]:
        """The oldest ``limit`` queued requests, removed from the queue."""
        parts: list[tuple[np.ndarray, ...]] = []
        left = limit
        while self.queue and left > 0:
            times, rows, served, forced, version = self.queue[0]
            n = min(left, rows.size)
            parts.append((times[:n], rows[:n], served[:n], forced[:n], np.full(n, version)))
            if n == rows.size:
                self.queue.pop(0)
            else:
                self.queue[0] = (times[n:], rows[n:], served[n:], forced[n:], version)
            left -= n
        if not parts:
            empty = np.empty(0, dtype=np.int64)
            return np.empty(0), empty, empty, np.empty(0, dtype=bool), empty
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(5))

    def estimate(self, hour: int) -> Any:
        """The live estimate of the verdicts of the last 8 half-lives at ``hour``'s tick;
        sets the guard's share."""

        now_h = hour + TICK_MINUTE / 60.0
        cfg = self.config.judge
        v = self.verdicts.since(now_h - cfg.horizon_h)
        observations = [
            Observation(
                _hour_time(float(t)),
                self.levels[int(s)],
                self.levels[int(p)] if p >= 0 else None,
                forced=bool(f),
            )
            for t, s, p, f in zip(
                v["served_h"], v["served"], v["preferred"], v["forced"], strict=True
            )
        ]
        estimate = cfg.estimate(
            observations,
            self.levels,
            _hour_time(now_h),
            prior=self.prior,
        )
        self.l0_share = estimate.l0_share
        return estimate

    def own_verdicts(
        self, hour: int, version: int, texts: Sequence[str]
    ) -> tuple[list[tuple[str, str, str | None, float]], np.ndarray]:
        """``(prompt, served, preferred, weight)`` of the verdicts on ``version``'s own
        choices in the horizon (what the margin learns from), and their rows."""

        now_h = hour + TICK_MINUTE / 60.0
        cfg = self.config.judge
        v = self.verdicts.since(now_h - cfg.horizon_h)
        if v["rows"].size == 0:
            return [], np.empty(0, dtype=np.int64)
        mine = (v["version"] == version) & ~v["forced"].astype(bool)
        rows = v["rows"][mine].astype(np.int64)
        out = [
            (
                texts[int(r)],
                self.levels[int(s)],
                self.levels[int(p)] if p >= 0 else None,
                age_weight(now_h - float(t), cfg.half_life_h),
            )
            for r, s, p, t in zip(
                rows, v["served"][mine], v["preferred"][mine], v["served_h"][mine], strict=True
            )
        ]
        return out, rows

    # --- retraining ------------------------------------------------------------------------

    def retrain_due(self, hour: int) -> bool:
        """Whether the scheduled retrain runs at ``hour`` (every ``retrain_every_h`` hours)."""
        every = self.config.retrain_every_h
        return self.config.retrains and hour > 0 and hour % every == 0

    def ledger_examples(
        self,
        hour: int,
        texts: Sequence[str],
        energy_kwh: np.ndarray,
        time_s: np.ndarray,
    ) -> list[Any]:
        """The verdicts gathered so far as training examples, as
        :class:`~sprout.training.sources.LedgerSource` yields them from a ledger: the prompt,
        the judge's preference, each level's recorded cost, the recency weight; no older
        than the source's age limit (8 half-lives)."""

        cfg = self.config.judge
        v = self.verdicts.since(hour - cfg.horizon_h)
        out = []
        for r, p, t in zip(v["rows"], v["preferred"], v["served_h"], strict=True):
            r = int(r)
            out.append(
                TrainingExample(
                    prompt=texts[r],
                    preferred_level=self.levels[int(p)] if p >= 0 else None,
                    energy_kwh=dict(zip(self.levels, energy_kwh[r].tolist(), strict=True)),
                    time_s=dict(zip(self.levels, time_s[r].tolist(), strict=True)),
                    group="ledger",
                    source="ledger",
                    weight=age_weight(hour - float(t), cfg.half_life_h),
                )
            )
        return out


class ExampleSource:
    """Training examples held in memory (the simulator's stand-in for a ledger or the
    bundled recordings), with the source interface :func:`pick_sources` reads."""

    def __init__(self, name: str, examples: Sequence[Any]) -> None:
        self.name = name
        self._examples = list(examples)

    def examples(self) -> list[Any]:
        return self._examples

    def judged(self) -> int:
        return sum(ex.preferred_level is not None for ex in self._examples)


def retrain_policy(
    config: LoopConfig,
    live: ExampleSource,
    bundled: ExampleSource,
    levels: Sequence[str],
    build: Callable[[dict[str, Any]], Any],
    embodied_g_per_s: float,
    max_loss: float | None,
) -> Any:
    """The scheduled retrain: sources picked as live, fitted by :func:`retrain` (its margin
    estimated under the policy's bound ``max_loss``), the policy built from the stored form
    by ``build(params)``."""
    opts = config.retrain
    sources = pick_sources(opts.data, live, bundled)
    # Called through its module, the one the scheduled job uses, so a test can watch it.
    result = retraining.retrain(
        None,
        sources=sources,
        levels=levels,
        split_seed=opts.split_seed,
        held_out_fraction=opts.held_out_fraction,
        refit_all=opts.refit_all,
        embodied_g_per_s=embodied_g_per_s,
        store=False,
        max_loss=max_loss,
    )
    return build(result.params())


__all__ = [
    "DEFAULT_RETRAIN_EVERY_H",
    "ExampleSource",
    "LoopConfig",
    "SimQualityLoop",
    "Verdicts",
    "retrain_policy",
]
