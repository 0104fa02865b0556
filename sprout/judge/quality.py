"""Quality estimates from verdicts, and the guard that keeps quality above the floor (pure).

**Estimates.** The quality of directive ``k`` is, as in Sprout, the share of judged requests
whose preferred answer is ``k``'s. Verdicts are weighted by age, ``w = 2 ** (-age / half_life)``
(the workload mix drifts: last month's prompts say less about today's than yesterday's),
and shrunk toward a prior (the bundled GPT-4 judgments) worth ``prior_weight`` verdicts, so
that a handful of verdicts cannot swing the optimizer::

    q_k = (prior_weight * prior_k + sum_i w_i [preferred_i == k]) / (prior_weight + sum_i w_i)

Ties and "no verdict" carry no preference and are left out, like unjudged prompts.

A directive the judge cannot judge (``unjudged``: the replay judge and a directive outside
its recordings) keeps its prior: the verdicts are shares over the directives judged, and
counting them against one that never took part would drive its estimate to 0.

**The guard.** The optimizer promises a normalized preference (the share of requests served
the directive the judge prefers, over that share for always-L0) of at least ``1 - xi``. The
verdicts measure what it delivers: ``P = sum w [preferred == served] / sum w [preferred ==
L0]``, over the requests the policy itself chose (not those the guard forced to L0). When,
with enough evidence (``min_weight``), ``P`` falls below the floor, a share ``beta`` of
requests is served L0, the smallest that brings the expected preference back to the floor:
``beta + (1 - beta) * P = floor``. L0 requests score 1 by definition, so the blend recovers
the promise whatever went wrong with the estimates; the guard lifts itself once ``P`` is
back above the floor.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sprout.directives import Directive
from sprout.policy.base import CarbonContext, Decision, Policy
from sprout.policy.recency import DEFAULT_HALF_LIFE_H, age_weight
from sprout.policy.stats import LevelStats

#: Decision reason of requests the guard serves at the baseline directive.
GUARD_REASON = "quality-guard"
#: Defaults (the half-life is :data:`sprout.policy.recency.DEFAULT_HALF_LIFE_H`, a week): the
#: prior worth 100 verdicts, the guard needing 50 (fewer verdicts are too noisy: a share of
#: ~40% estimated from 50 has a standard error of ~7 points).
DEFAULT_PRIOR_WEIGHT = 100.0
DEFAULT_MIN_WEIGHT = 50.0


@dataclass(frozen=True)
class Observation:
    """One verdict, as the estimate uses it.

    Attributes:
        time: when the judged request was served (its age sets its weight).
        served: the directive it was served.
        preferred: the directive the judge preferred (None: tie or no verdict).
        forced: the quality guard chose the directive (left out of the policy's preference).
    """

    time: datetime
    served: str
    preferred: str | None
    forced: bool = False


@dataclass(frozen=True)
class QualityEstimate:
    """Per-directive quality and the guard's state, at ``at``.

    Attributes:
        levels: directive names, the baseline first.
        quality: estimated share of requests whose preferred answer is each level's.
        at: when it was estimated.
        n_verdicts: verdicts with a preference that were used.
        weight: their summed age weights (the effective number of verdicts).
        preference: decayed normalized preference of the policy's own choices (None: no
            verdict preferred the baseline yet, or none was the policy's).
        floor: the normalized preference the optimizer promises.
        l0_share: share of requests the guard serves at the baseline (0: guard off).
    """

    levels: tuple[str, ...]
    quality: tuple[float, ...]
    at: datetime
    n_verdicts: int
    weight: float
    preference: float | None
    floor: float
    l0_share: float

    @property
    def below_floor(self) -> bool:
        """Whether the guard is engaged."""
        return self.l0_share > 0.0

    def warning(self) -> str | None:
        """The warning the guard's engagement deserves, or None."""
        if not self.below_floor or self.preference is None:
            return None
        return (
            f"estimated quality below the floor: normalized preference {self.preference:.1%} "
            f"< {self.floor:.1%} over {self.weight:.1f} effective verdicts; serving "
            f"{self.l0_share:.1%} of requests at {self.levels[0]} until it recovers"
        )

    def as_params(self) -> dict[str, object]:
        """JSON-safe form (stored as a policy version)."""
        return {
            "levels": list(self.levels),
            "quality": list(self.quality),
            "at": self.at.isoformat(),
            "n_verdicts": self.n_verdicts,
            "weight": self.weight,
            "preference": self.preference,
            "floor": self.floor,
            "l0_share": self.l0_share,
        }

    @classmethod
    def from_params(cls, raw: dict[str, object]) -> QualityEstimate:
        """Inverse of :meth:`as_params`.

        Raises:
            ValueError: malformed params.
        """
        try:
            preference = raw["preference"]
            return cls(
                levels=tuple(str(x) for x in raw["levels"]),  # type: ignore[attr-defined]
                quality=tuple(float(x) for x in raw["quality"]),  # type: ignore[attr-defined]
                at=datetime.fromisoformat(str(raw["at"])),
                n_verdicts=int(raw["n_verdicts"]),  # type: ignore[call-overload]
                weight=float(raw["weight"]),  # type: ignore[arg-type]
                preference=None if preference is None else float(preference),  # type: ignore[arg-type]
                floor=float(raw["floor"]),  # type: ignore[arg-type]
                l0_share=float(raw["l0_share"]),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed quality estimate: {e!r}") from e


def guard_share(preference: float | None, floor: float) -> float:
    """The smallest baseline share ``beta`` with ``beta + (1 - beta) * preference >= floor``.

    0 when the preference meets the floor (or is unknown); 1 when even that cannot make it.
    """
    if preference is None or preference >= floor:
        return 0.0
    if preference >= 1.0:  # a floor above 1: serving L0 cannot raise the preference
        return 0.0
    return min(1.0, max(0.0, (floor - preference) / (1.0 - preference)))


def estimate_quality(
    observations: Iterable[Observation],
    levels: Sequence[str],
    now: datetime,
    *,
    prior: Sequence[float] | None = None,
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    half_life_h: float = DEFAULT_HALF_LIFE_H,
    floor: float = 0.9,
    min_weight: float = DEFAULT_MIN_WEIGHT,
    unjudged: Collection[str] = (),
) -> QualityEstimate:
    """Quality per directive and the guard's baseline share from verdicts (see the module).

    Args:
        observations: verdicts; those preferring a directive outside ``levels`` are ignored.
        levels: directive names, the baseline first.
        now: the time ages are measured at.
        prior: prior quality per level (default: uniform).
        prior_weight: how many verdicts the prior is worth (>= 0).
        half_life_h: age at which a verdict weighs half.
        floor: normalized preference the guard keeps.
        min_weight: effective verdicts (of the policy's own choices) the guard needs to act.
        unjudged: levels the judge cannot judge: their quality is their prior.

    Raises:
        ValueError: bad levels, prior or weights.
    """
    levels = tuple(levels)
    n = len(levels)
    if n < 1 or len(set(levels)) != n:
        raise ValueError(f"levels must be distinct and non-empty, got {levels}")
    if prior is None:
        prior = [1.0 / n] * n
    if len(prior) != n or any(not math.isfinite(p) or p < 0 for p in prior):
        raise ValueError(f"prior must give {n} finite shares >= 0, got {list(prior)}")
    if prior_weight < 0 or min_weight < 0:
        raise ValueError("prior_weight and min_weight must be >= 0")
    index = {name: k for k, name in enumerate(levels)}
    wins = [0.0] * n
    weight = 0.0
    used = 0
    own_weight = own_served = own_base = 0.0
    for obs in observations:
        k = index.get(obs.preferred) if obs.preferred is not None else None
        if k is None:
            continue
        w = age_weight((now - obs.time).total_seconds() / 3600.0, half_life_h)
        wins[k] += w
        weight += w
        used += 1
        if not obs.forced:
            own_weight += w
            own_served += w * (obs.preferred == obs.served)
            own_base += w * (k == 0)
    total = prior_weight + weight
    if total > 0:
        quality = tuple((prior_weight * p + s) / total for p, s in zip(prior, wins, strict=True))
    else:
        quality = tuple(float(p) for p in prior)
    if unjudged:
        quality = tuple(
            float(p) if name in unjudged else q
            for name, p, q in zip(levels, prior, quality, strict=True)
        )
    preference = own_served / own_base if own_base > 0 else None
    share = guard_share(preference, floor) if own_weight >= min_weight else 0.0
    return QualityEstimate(
        levels=levels,
        quality=quality,
        at=now,
        n_verdicts=used,
        weight=weight,
        preference=preference,
        floor=floor,
        l0_share=share,
    )


def refreshed_stats(stats: LevelStats, estimate: QualityEstimate) -> LevelStats:
    """``stats`` with the estimate's quality (levels matched by name; others keep theirs)."""
    by_name = dict(zip(estimate.levels, estimate.quality, strict=True))
    quality = tuple(
        by_name.get(name, q) for name, q in zip(stats.levels, stats.quality, strict=True)
    )
    return replace(stats, quality=quality, n_judged=max(stats.n_judged, estimate.n_verdicts))


class QualityGuardPolicy(Policy):
    """Serves a share of requests at the baseline directive, the rest as ``inner`` decides.

    The quality loop wraps the live policy in it while the estimated quality is below the
    floor (see the module); such requests are recorded with the reason ``quality-guard``.
    """

    def __init__(self, inner: Policy, baseline: Directive, l0_share: float) -> None:
        if not 0.0 <= l0_share <= 1.0:
            raise ValueError(f"l0_share must lie in [0, 1], got {l0_share!r}")
        self.inner = inner
        self.baseline = baseline
        self.l0_share = l0_share
        self.kind = inner.kind

    def decide(self, prompt: str, carbon: CarbonContext, rng: random.Random) -> Decision:
        """The baseline with probability ``l0_share``, else ``inner``'s choice."""
        if self.l0_share > 0.0 and rng.random() < self.l0_share:
            return Decision(self.baseline, GUARD_REASON)
        return self.inner.decide(prompt, carbon, rng)


def unwrap(policy: Policy) -> Policy:
    """The policy inside any quality guard."""
    while isinstance(policy, QualityGuardPolicy):
        policy = policy.inner
    return policy


def rewrap(old: Policy, new: Policy) -> Policy:
    """``new`` inside the quality guards ``old`` is inside (none: ``new`` itself).

    A retrained policy swapped in keeps the guard until the next estimate says otherwise:
    the verdicts that engaged it are the only evidence there is, and the guard errs on the
    side of quality.
    """
    guards: list[QualityGuardPolicy] = []
    while isinstance(old, QualityGuardPolicy):
        guards.append(old)
        old = old.inner
    for guard in reversed(guards):
        new = QualityGuardPolicy(new, guard.baseline, guard.l0_share)
    return new


__all__ = [
    "DEFAULT_MIN_WEIGHT",
    "DEFAULT_PRIOR_WEIGHT",
    "GUARD_REASON",
    "Observation",
    "QualityEstimate",
    "QualityGuardPolicy",
    "estimate_quality",
    "guard_share",
    "refreshed_stats",
    "rewrap",
    "unwrap",
]
