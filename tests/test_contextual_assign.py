"""The per-request assignment under a quality floor (pure numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sprout.policy.assign import (
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
    # Centred on the mean: no concession at the mean intensity, a gain below it.
    assert floor_fraction(0.1, CarbonContext(250.0, 100.0, 500.0, 250.0), "mean") == 1.0
    assert floor_fraction(0.1, CarbonContext(100.0, 100.0, 500.0, 250.0), "mean") > 1.0
    assert floor_fraction(0.1, ctx, "mean", margin=0.02) == pytest.approx(
        1.0 - 0.1 * (0.5 - 0.375) + 0.02
    )
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
    pacer = QualityPacer(span=2.0, points=5, repay_periods=10.0)
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
