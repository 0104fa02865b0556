"""The per-request assignment under a quality floor (pure numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sprout.policy.assign import (
    MarginEstimate,
    QualityPacer,
    assign,
    choose,
    expected_carbon_g,
    floor_fraction,
    multiplier,
    preference_curve,
)
from sprout.policy.base import CarbonContext
from sprout.policy.optimizer import quality_floor


def _batch(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pref = rng.dirichlet([2.0, 2.0, 2.0], n)
    cost = np.sort(rng.uniform(0.01, 1.0, (n, 3)), axis=1)[:, ::-1].copy()  # L0 dearest
    return cost, pref


def test_expected_carbon_is_operational_plus_embodied() -> None:
    assert expected_carbon_g(np.array([0.001]), np.array([10.0]), 200.0, 0.01)[0] == (
        pytest.approx(0.2 + 0.1)
    )


def test_lp_floor_matches_the_optimizer() -> None:
    ctx = CarbonContext(300.0, 100.0, 500.0, 250.0)
    assert floor_fraction(0.1, ctx, "lp") * 0.4 == pytest.approx(
        quality_floor(0.4, 0.1, 300.0, 100.0, 500.0)
    )
    # The mean anchor holds the baseline's quality in every hour (met on average by the
    # pacer), whatever the intensity and its history: no drift with the grid's trend.
    for ci in (100.0, 250.0, 500.0):
        assert floor_fraction(0.1, CarbonContext(ci, 100.0, 500.0, 250.0), "mean") == 1.0
    assert floor_fraction(0.1, ctx, "mean", margin=0.02) == pytest.approx(1.02)
    assert floor_fraction(0.1, ctx, "lp", margin=0.02) == pytest.approx(1.0 - 0.05 + 0.02)
    with pytest.raises(ValueError, match="anchor"):
        floor_fraction(0.1, ctx, "median")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), target=st.floats(0.2, 0.7))
def test_multiplier_meets_the_floor_at_least_cost(seed: int, target: float) -> None:
    cost, pref = _batch(200, seed)
    lam = multiplier(cost, pref, target)
    k = choose(cost, pref, lam)
    rows = np.arange(200)
    best = float(pref.max(axis=1).mean())
    if target > best:
        assert math.isinf(lam)
        return
    assert pref[rows, k].mean() >= target - 1e-12
    if lam > 0:  # a slightly smaller multiplier would miss the floor
        k2 = choose(cost, pref, lam * (1 - 1e-3))
        assert pref[rows, k2].mean() < target or cost[rows, k2].sum() >= cost[rows, k].sum()


def test_multiplier_edge_cases() -> None:
    cost, pref = _batch()
    assert multiplier(cost, pref, 0.0) == 0.0  # the cheapest choice already meets it
    assert math.isinf(multiplier(cost, pref, 1.01))
    levels, _ = assign(cost, pref, 1.01)
    np.testing.assert_array_equal(levels, pref.argmax(axis=1))  # the best there is
    with pytest.raises(ValueError, match="expected equal"):
        multiplier(cost, pref[:, :2], 0.5)


def test_preference_curve_is_monotone_and_matches_choose() -> None:
    cost, pref = _batch()
    lams = np.geomspace(1e-3, 1e2, 30)
    curve = preference_curve(cost, pref, lams)
    assert np.all(np.diff(curve) >= -1e-12)
    rows = np.arange(cost.shape[0])
    k = choose(cost, pref, float(lams[7]))
    assert curve[7] == pytest.approx(pref[rows, k].sum() / pref[:, 0].sum())


def test_pacer_solves_for_the_mean_curve_and_repays() -> None:
    pacer = QualityPacer(span=2.0, points=5, repay_periods=10.0, half_life=math.inf)
    assert pacer.solve(3.0) == 3.0  # no history: the base multiplier
    # Curves over exp([-2, -1, 0, 1, 2]) * nu0.
    pacer.record(np.array([0.8, 0.9, 1.0, 1.1, 1.2]), floor=1.0, achieved=1.0)
    pacer.record(np.array([0.6, 0.7, 0.8, 0.9, 1.0]), floor=1.0, achieved=1.0)
    # The mean curve, 0.7 .. 1.1, reaches the floor 1.0 at offset 1.
    assert pacer.solve(1.0) == pytest.approx(math.e)
    pacer.record(np.array([0.8, 0.9, 1.0, 1.1, 1.2]), floor=1.0, achieved=0.5)  # a shortfall
    assert pacer.target() == pytest.approx(1.0 + 0.5 / 10)
    # Mean curve now 0.733 .. 1.133: 1.05 lies between offsets 1 and 2 (1.0333, 1.1333).
    assert pacer.solve(2.0) == pytest.approx(2.0 * math.exp(1 + (1.05 - 1.0333333) / 0.1))
    pacer.record(np.array([np.nan] * 5), floor=1.0, achieved=1.0)  # ignored
    assert pacer.periods == 3


def test_pacer_weighs_recent_periods_more() -> None:
    old, new = np.array([0.8, 0.9, 1.0, 1.1, 1.2]), np.array([0.6, 0.7, 0.8, 0.9, 1.0])
    flat = QualityPacer(span=2.0, points=5, repay_periods=1e9, half_life=math.inf)
    recent = QualityPacer(span=2.0, points=5, repay_periods=1e9, half_life=1.0)
    for pacer in (flat, recent):
        for curve in (old, old, old, new):  # the traffic just changed
            pacer.record(curve, floor=1.0, achieved=1.0)
    # Unweighted, the old periods outvote the new one; weighted, the new traffic leads.
    assert recent.solve(1.0) > flat.solve(1.0)
    with pytest.raises(ValueError):
        QualityPacer(half_life=0.0)


def test_pacer_applies_the_margin_to_every_period_served() -> None:
    pacer = QualityPacer(span=2.0, points=5, repay_periods=10.0, half_life=math.inf)
    for _ in range(4):
        pacer.record(np.array([0.8, 0.9, 1.0, 1.1, 1.2]), floor=1.0, achieved=1.0)
    assert pacer.target() == pytest.approx(1.0)
    # A margin learnt now is owed by the four periods already served as well.
    assert pacer.target(margin=0.02) == pytest.approx(1.02 + 4 * 0.02 / 10)
    assert pacer.solve(1.0, margin=0.02) > pacer.solve(1.0)


def test_margin_estimate_combines_the_verdicts_gap_with_the_prior() -> None:
    est = MarginEstimate(prior=0.02, prior_se=0.02, z=0.0, bound=0.5)
    assert est.value == 0.02 and est.gap() is None
    # Predicted 0.5 for the served level and 0.4 for the baseline: expected ratio 1.25.
    pref = np.tile([0.4, 0.5, 0.1], (100, 1))
    served = np.ones(100, dtype=int)
    # The judge preferred the served level in 40 and the baseline in 40: realised 1.0.
    preferred = np.array([1] * 40 + [0] * 40 + [2] * 10 + [-1] * 10)
    assert est.record(pref, served, preferred) == 90  # ties and no verdicts skipped
    measured = est.gap()
    assert measured is not None
    gap, se = measured
    assert gap == pytest.approx(1.25 - 1.0, abs=0.03)  # linearised around the prediction
    assert 0.1 < se < 0.4
    w_prior, w_gap = 1 / 0.02**2, 1 / se**2
    assert est.value == pytest.approx((w_prior * 0.02 + w_gap * gap) / (w_prior + w_gap))
    # A cushion of z standard errors of the combination.
    cushioned = MarginEstimate(prior=0.02, prior_se=0.02, z=1.0, bound=0.5)
    cushioned.record(pref, served, preferred)
    assert cushioned.value == pytest.approx(est.value + (w_prior + w_gap) ** -0.5)
    # Scaling the weights adds no evidence (they are relative: recency); more verdicts do.
    scaled = MarginEstimate(prior=0.02, prior_se=0.02, z=0.0, bound=0.5)
    scaled.record(pref, served, preferred, weights=np.full(100, 1e4))
    assert scaled.value == pytest.approx(est.value)
    weak = MarginEstimate(prior=0.0, prior_se=1.0, z=0.0, bound=0.5)
    tight = MarginEstimate(prior=0.0, prior_se=1.0, z=0.0, bound=0.1)
    for _ in range(50):
        weak.record(pref, served, preferred)
        tight.record(pref, served, preferred)
    assert weak.value == pytest.approx(gap, abs=0.01)
    assert tight.value == 0.1  # clipped
    with pytest.raises(ValueError, match="rows"):
        est.record(pref, served[:5], preferred)
    with pytest.raises(ValueError):
        MarginEstimate(prior=math.nan)


def test_margin_estimate_reads_each_verdict_against_its_period() -> None:
    # Two hours of different traffic; quality is scored as the mean of the hours' ratios.
    pref = np.vstack([np.tile([0.3, 0.7], (50, 1)), np.tile([0.6, 0.4], (50, 1))])
    served = np.ones(100, dtype=int)
    preferred = np.array([1] * 34 + [0] * 16 + [1] * 19 + [0] * 31)
    # Hour A: expected 0.7 / 0.3, realised 34 / 16; hour B: 0.4 / 0.6 and 19 / 31.
    hourly_gap = ((0.7 / 0.3 - 34 / 16) + (0.4 / 0.6 - 19 / 31)) / 2
    pooled_gap = 55 / 45 - 53 / 47
    per_hour = MarginEstimate(prior=0.0)
    per_hour.record(
        pref,
        served,
        preferred,
        base_mean=np.repeat([0.3, 0.6], 50),
        ratio=np.repeat([0.7 / 0.3, 0.4 / 0.6], 50),
    )
    pooled = MarginEstimate(prior=0.0)
    pooled.record(pref, served, preferred)
    hourly, together = per_hour.gap(), pooled.gap()
    assert hourly is not None and together is not None
    assert hourly[0] == pytest.approx(hourly_gap, abs=0.02)
    assert together[0] == pytest.approx(pooled_gap, abs=0.02)
    assert abs(hourly_gap - pooled_gap) > 0.03  # the two questions differ


def test_a_pessimistic_model_earns_a_negative_margin() -> None:
    est = MarginEstimate(prior=0.0, prior_se=1.0, z=0.0)
    pref = np.tile([0.5, 0.5], (10, 1))
    # Expected ratio 1.0; realised: served preferred 6 times, the baseline 4: 1.5.
    est.record(pref, np.ones(10, dtype=int), np.array([1] * 6 + [0] * 4))
    assert est.value < 0
