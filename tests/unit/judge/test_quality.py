"""Quality estimates from verdicts, weighted by recency, and the quality guard (pure)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from sprout.directives import Directive
from sprout.judge.quality import (
    GUARD_REASON,
    Observation,
    QualityEstimate,
    QualityGuardPolicy,
    estimate_quality,
    guard_share,
    refreshed_stats,
    unwrap,
)
from sprout.policy.base import CarbonContext, Decision, Policy
from sprout.policy.recency import age_weight
from sprout.policy.stats import LevelStats

NOW = datetime(2023, 6, 13, 12, tzinfo=UTC)
LEVELS = ("L0", "L1", "L2")


def _obs(hours_ago: float, served: str, preferred: str | None, forced: bool = False):
    return Observation(NOW - timedelta(hours=hours_ago), served, preferred, forced)


def test_age_weight_halves_every_half_life() -> None:
    assert age_weight(0, 24) == 1.0
    assert age_weight(24, 24) == pytest.approx(0.5)
    assert age_weight(72, 24) == pytest.approx(0.125)
    assert age_weight(-5, 24) == 1.0  # clocks disagree: never more than full weight
    with pytest.raises(ValueError):
        age_weight(1, 0)


def test_recent_verdicts_outweigh_old_ones() -> None:
    # A week ago the judge preferred L0; today L2. With a 1-day half-life today wins.
    obs = [_obs(168, "L0", "L0")] * 50 + [_obs(1, "L2", "L2")] * 10
    e = estimate_quality(obs, LEVELS, NOW, prior_weight=0, half_life_h=24)
    assert e.quality[2] > 0.9 > e.quality[0]
    slow = estimate_quality(obs, LEVELS, NOW, prior_weight=0, half_life_h=1e6)
    assert slow.quality[0] == pytest.approx(50 / 60, rel=1e-4)
    assert sum(e.quality) == pytest.approx(1.0)


def test_the_prior_shrinks_a_few_verdicts() -> None:
    prior = (0.45, 0.33, 0.22)
    none = estimate_quality([], LEVELS, NOW, prior=prior, prior_weight=100)
    assert none.quality == prior and none.n_verdicts == 0 and none.preference is None
    few = estimate_quality([_obs(0, "L2", "L2")] * 5, LEVELS, NOW, prior=prior, prior_weight=100)
    assert few.quality[2] == pytest.approx((100 * 0.22 + 5) / 105)
    assert few.n_verdicts == 5 and few.weight == pytest.approx(5.0)


def test_ties_no_verdicts_and_unknown_directives_carry_no_preference() -> None:
    obs = [_obs(0, "L0", None), _obs(0, "L1", "L9"), _obs(0, "L1", "L1")]
    e = estimate_quality(obs, LEVELS, NOW, prior_weight=0)
    assert e.n_verdicts == 1 and e.quality == (0.0, 1.0, 0.0)


def test_guard_share_restores_the_floor_in_expectation() -> None:
    assert guard_share(None, 0.9) == 0.0
    assert guard_share(0.95, 0.9) == 0.0
    beta = guard_share(0.6, 0.9)
    assert beta + (1 - beta) * 0.6 == pytest.approx(0.9)
    assert guard_share(0.0, 0.9) == pytest.approx(0.9)
    assert guard_share(-1.0, 0.9) <= 1.0


def test_below_the_floor_the_guard_engages_with_a_warning() -> None:
    # The policy served L2 to 60 requests whose judge preferred L0: preference far below.
    obs = [_obs(2, "L2", "L0")] * 60 + [_obs(2, "L0", "L0")] * 20 + [_obs(2, "L2", "L2")] * 20
    e = estimate_quality(obs, LEVELS, NOW, floor=0.9, min_weight=50)
    # served-preferred 40 over L0-preferred 80: 50%.
    assert e.preference == pytest.approx(0.5, rel=1e-6)
    assert e.below_floor and e.l0_share == pytest.approx(0.8, rel=1e-6)
    assert "below the floor" in e.warning() and "80.0% of requests at L0" in e.warning()


def test_too_few_verdicts_do_not_move_the_guard() -> None:
    obs = [_obs(2, "L2", "L0")] * 10
    e = estimate_quality(obs, LEVELS, NOW, floor=0.9, min_weight=50)
    assert e.preference == 0.0 and not e.below_floor and e.warning() is None


def test_the_guard_lifts_once_quality_recovers_and_ignores_its_own_requests() -> None:
    good = [_obs(1, "L1", "L1")] * 40 + [_obs(1, "L0", "L0")] * 40
    e = estimate_quality(good, LEVELS, NOW, floor=0.9, min_weight=50)
    assert e.preference == pytest.approx(2.0) and e.l0_share == 0.0
    # Guard-forced L0 requests do not count as the policy's: its own choices are still bad.
    forced = [_obs(1, "L0", "L0", forced=True)] * 200
    bad = [_obs(1, "L2", "L0")] * 60 + [_obs(1, "L0", "L0")] * 20
    e = estimate_quality(forced + bad, LEVELS, NOW, floor=0.9, min_weight=50)
    assert e.preference == pytest.approx(0.25) and e.below_floor


def test_estimate_round_trips_through_params() -> None:
    e = estimate_quality([_obs(3, "L1", "L1")] * 3, LEVELS, NOW, prior_weight=1)
    assert QualityEstimate.from_params(e.as_params()) == e
    with pytest.raises(ValueError):
        QualityEstimate.from_params({"levels": ["L0"]})


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        estimate_quality([], ("L0", "L0"), NOW)
    with pytest.raises(ValueError):
        estimate_quality([], LEVELS, NOW, prior=(1.0, 0.0))
    with pytest.raises(ValueError):
        estimate_quality([], LEVELS, NOW, prior_weight=-1)


def test_refreshed_stats_replace_quality_by_name() -> None:
    stats = LevelStats(LEVELS, (1.0, 0.5, 0.2), (10.0, 5.0, 2.0), (0.4, 0.35, 0.25), 100, 60)
    e = estimate_quality([_obs(0, "L1", "L1")] * 10, LEVELS, NOW, prior_weight=0)
    new = refreshed_stats(stats, e)
    assert new.quality == (0.0, 1.0, 0.0)
    assert new.energy_kwh == stats.energy_kwh and new.time_s == stats.time_s


class _Always(Policy):
    kind = "always"

    def __init__(self, directive: Directive) -> None:
        self.directive = directive

    def decide(self, prompt: str, carbon: CarbonContext, rng: random.Random) -> Decision:
        return Decision(self.directive, "always")


def test_guard_policy_serves_its_share_at_the_baseline() -> None:
    l0, l2 = Directive("L0"), Directive("L2", system_prompt="Always answer very briefly")
    inner = _Always(l2)
    guard = QualityGuardPolicy(inner, l0, 0.3)
    carbon = CarbonContext(300.0, 100.0, 400.0, 250.0)
    rng = random.Random(0)
    decisions = [guard.decide("q", carbon, rng) for _ in range(4000)]
    share = sum(d.reason == GUARD_REASON for d in decisions) / len(decisions)
    assert share == pytest.approx(0.3, abs=0.03)
    assert all(d.directive == l0 for d in decisions if d.reason == GUARD_REASON)
    assert guard.kind == "always" and unwrap(QualityGuardPolicy(guard, l0, 0.1)) is inner
    # An idle guard draws nothing: the inner policy's randomness is untouched.
    rng_a, rng_b = random.Random(5), random.Random(5)
    QualityGuardPolicy(inner, l0, 0.0).decide("q", carbon, rng_a)
    assert rng_a.random() == rng_b.random()
    with pytest.raises(ValueError):
        QualityGuardPolicy(inner, l0, 1.5)
