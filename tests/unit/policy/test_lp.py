"""The CI history window, per-level statistics and the Sprout LP policy."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from sprout.data import WorkloadRecord, default_policy_path
from sprout.directives import DirectiveSet
from sprout.errors import OptimizerError
from sprout.policy.base import CarbonContext
from sprout.policy.history import CIWindow
from sprout.policy.sprout_lp import SproutLPPolicy
from sprout.policy.stats import LevelStats, level_stats

T0 = datetime(2023, 3, 1, tzinfo=UTC)
H = timedelta(hours=1)


# --- CIWindow -------------------------------------------------------------------------------


def test_window_is_trailing():
    window = CIWindow(3)
    for i, value in enumerate([10.0, 20.0, 30.0, 40.0, 50.0]):
        window.add(T0 + i * H, value)
    assert len(window) == 3
    ctx = window.context(45.0)
    assert (ctx.ci_min, ctx.ci_max, ctx.ci_mean) == (30.0, 50.0, 40.0)
    assert ctx.ci_g_per_kwh == 45.0


def test_window_same_hour_replaces():
    window = CIWindow(24)
    window.add(T0 + timedelta(minutes=5), 100.0)
    window.add(T0 + timedelta(minutes=40), 200.0)
    assert len(window) == 1
    ctx = window.context(200.0)
    assert (ctx.ci_min, ctx.ci_max, ctx.ci_mean) == (200.0, 200.0, 200.0)


def test_window_late_hour_ignored():
    window = CIWindow(24)
    window.add(T0 + 2 * H, 10.0)
    window.add(T0 + H, 99.0)
    assert len(window) == 1
    assert window.context(10.0).ci_max == 10.0


def test_window_context_includes_the_current_value():
    window = CIWindow(24)
    assert window.context(70.0) == CarbonContext(70.0, 70.0, 70.0, 70.0)  # empty window
    window.add(T0, 10.0)
    window.add(T0 + H, 20.0)
    assert window.context(5.0).ci_min == 5.0
    assert window.context(30.0).ci_max == 30.0
    # the controller adds the current hour, then asks: the mean then covers it once
    window.add(T0 + 2 * H, 60.0)
    ctx = window.context(60.0)
    assert (ctx.ci_min, ctx.ci_max, ctx.ci_mean) == (10.0, 60.0, 30.0)


def test_window_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one hour"):
        CIWindow(0)
    with pytest.raises(ValueError, match="finite"):
        CIWindow(3).add(T0, -1.0)
    with pytest.raises(ValueError, match="finite"):
        CIWindow(3).add(T0, float("nan"))


# --- level statistics -----------------------------------------------------------------------


def _record(i, energy, time_s, sampled, best):
    return WorkloadRecord(
        id=f"p{i}",
        dataset="alpaca",
        index=i,
        instruction=f"question {i}",
        energy_kwh=dict(zip(("L0", "L1", "L2"), energy, strict=True)),
        time_s=dict(zip(("L0", "L1", "L2"), time_s, strict=True)),
        output_tokens={},
        judge_sampled=sampled,
        judge_best=best,
    )


RECORDS = [
    _record(0, (0.004, 0.002, 0.001), (10.0, 6.0, 2.0), True, 0),
    _record(1, (0.006, 0.004, 0.002), (20.0, 8.0, 4.0), True, 1),
    _record(2, (0.002, 0.003, 0.003), (6.0, 4.0, 3.0), True, 1),
    _record(3, (0.004, 0.003, 0.002), (4.0, 6.0, 3.0), False, 2),  # not judged
    _record(4, (0.004, 0.003, 0.002), (10.0, 6.0, 3.0), True, None),  # no clear verdict
]


def test_level_stats_by_hand():
    stats = level_stats(RECORDS)
    assert stats.levels == ("L0", "L1", "L2")
    assert stats.energy_kwh == pytest.approx((0.02 / 5, 0.015 / 5, 0.010 / 5))
    assert stats.time_s == pytest.approx((50 / 5, 30 / 5, 15 / 5))
    assert stats.quality == pytest.approx((1 / 3, 2 / 3, 0.0))
    assert (stats.n_energy, stats.n_judged) == (5, 3)
    assert LevelStats.from_dict(stats.as_dict()) == stats


def test_level_stats_subset_of_levels():
    stats = level_stats(RECORDS, levels=("L0", "L1"))
    assert stats.energy_kwh == pytest.approx((0.004, 0.003))
    assert stats.quality == pytest.approx((1 / 3, 2 / 3))


def test_level_stats_errors():
    with pytest.raises(ValueError, match="no workload records"):
        level_stats([])
    with pytest.raises(ValueError, match="no judged records"):
        level_stats([RECORDS[3], RECORDS[4]])


# --- the Sprout LP policy -------------------------------------------------------------------


@pytest.fixture(scope="module")
def directives():
    return DirectiveSet.load(default_policy_path())


# costs at CI 1000: [3, 1.5, 1]; floor (1 - 0.1) * 0.5 = 0.45 -> mix (0.75, 0.25, 0)
STATS = LevelStats(
    levels=("L0", "L1", "L2"),
    energy_kwh=(0.003, 0.0015, 0.001),
    time_s=(0.0, 0.0, 0.0),
    quality=(0.5, 0.3, 0.2),
    n_energy=100,
    n_judged=100,
)
DIRTY = CarbonContext(ci_g_per_kwh=1000.0, ci_min=0.0, ci_max=1000.0, ci_mean=500.0)


def test_decide_draws_the_mix(directives):
    policy = SproutLPPolicy(directives, STATS, xi=0.1, embodied_g_per_s=0.0)
    rng = random.Random(1234)
    counts = Counter()
    for _ in range(20_000):
        decision = policy.decide("any prompt", DIRTY, rng)
        counts[decision.directive.name] += 1
    assert decision.reason == "lp-mix"
    assert decision.mix == pytest.approx((0.75, 0.25, 0.0), abs=1e-7)
    assert counts["L0"] / 20_000 == pytest.approx(0.75, abs=0.015)
    assert counts["L1"] / 20_000 == pytest.approx(0.25, abs=0.015)
    assert counts["L2"] == 0
    assert decision.directive is directives.get(decision.directive.name)


def test_decide_at_the_cleanest_hour_is_all_baseline(directives):
    policy = SproutLPPolicy(directives, STATS, xi=0.1, embodied_g_per_s=0.0)
    clean = CarbonContext(ci_g_per_kwh=0.0, ci_min=0.0, ci_max=1000.0, ci_mean=500.0)
    rng = random.Random(0)
    names = {policy.decide("q", clean, rng).directive.name for _ in range(500)}
    assert names == {"L0"}


def test_mix_is_cached_per_context(directives):
    policy = SproutLPPolicy(directives, STATS, xi=0.1, embodied_g_per_s=0.0)
    first = policy.mix(DIRTY)
    assert policy.mix(CarbonContext(1000.0, 0.0, 1000.0, 123.0)) is first  # mean not in key
    other = policy.mix(CarbonContext(500.0, 0.0, 1000.0, 500.0))
    assert other is not first
    assert other.x != first.x


def test_stats_level_missing_from_directives(directives):
    stats = LevelStats(("L0", "L9"), (0.002, 0.001), (0.0, 0.0), (0.5, 0.3), 1, 1)
    with pytest.raises(OptimizerError, match=r"\['L9'\].*default\.toml"):
        SproutLPPolicy(directives, stats, xi=0.1, embodied_g_per_s=0.0)


def test_context_can_leave_an_unobserved_value_out_of_the_range():
    from datetime import datetime

    window = CIWindow(hours=24)
    window.add(datetime(2023, 1, 1, 0, tzinfo=UTC), 100.0)
    window.add(datetime(2023, 1, 1, 1, tzinfo=UTC), 200.0)
    ctx = window.context(900.0, include_current=False)
    assert (ctx.ci_min, ctx.ci_max, ctx.ci_g_per_kwh) == (100.0, 200.0, 900.0)
    assert window.context(900.0).ci_max == 900.0
