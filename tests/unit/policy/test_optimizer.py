"""Sprout's LP, checked against mixes worked out by hand."""

from __future__ import annotations

import itertools
import math
import types

import numpy as np
import pytest
import scipy.optimize

from sprout.errors import InfeasibleError, OptimizerError
from sprout.policy import optimizer
from sprout.policy.optimizer import quality_floor, relaxation, solve_mix

ABS = 1e-7


def test_floor_does_not_bind_at_ci_max():
    # xi = 1 at CI = ci_max: the floor is 0, so everything goes to the cheapest level.
    # cost_k = E_k * CI + e_emb * T_k = [2.1, 1.06, 0.54]
    sol = solve_mix(
        energy_kwh=[0.004, 0.002, 0.001],
        time_s=[10, 6, 4],
        quality=[0.4, 0.35, 0.25],
        ci_g_per_kwh=500,
        ci_min=100,
        ci_max=500,
        xi=1.0,
        embodied_g_per_s=0.01,
    )
    assert sol.x == pytest.approx((0.0, 0.0, 1.0), abs=ABS)
    assert sol.carbon_g == pytest.approx(0.001 * 500 + 0.01 * 4)
    assert sol.quality == pytest.approx(0.25)
    assert sol.floor == 0.0
    assert sol.floor_binds is False


def test_cheap_level_above_a_nonzero_floor_takes_everything():
    # xi = 0.5 at ci_max: floor 0.5 * 0.4 = 0.2 <= q2 = 0.25, so still all L2
    sol = solve_mix([0.004, 0.002, 0.001], [0, 0, 0], [0.4, 0.35, 0.25], 500, 100, 500, 0.5, 0.0)
    assert sol.floor == pytest.approx(0.2)
    assert sol.x == pytest.approx((0.0, 0.0, 1.0), abs=ABS)
    assert sol.carbon_g == pytest.approx(0.5)
    assert not sol.floor_binds


def test_floor_binds_two_levels():
    # floor = (1 - 0.1 * 1) * 0.5 = 0.45  ->  0.5 x0 + 0.3 (1 - x0) = 0.45  ->  x0 = 0.75
    sol = solve_mix([0.002, 0.001], [0, 0], [0.5, 0.3], 400, 100, 400, 0.1, 0.0)
    assert sol.floor == pytest.approx(0.45)
    assert sol.x == pytest.approx((0.75, 0.25), abs=ABS)
    assert sol.quality == pytest.approx(sol.floor, abs=ABS)
    assert sol.carbon_g == pytest.approx(0.75 * 0.8 + 0.25 * 0.4)
    assert sol.floor_binds is True


def test_floor_binds_half_way_up_the_range():
    # CI = 250 in [100, 400]: relaxation 0.5, floor 0.95 * 0.5 = 0.475, x0 = 0.175 / 0.2
    sol = solve_mix([0.002, 0.001], [0, 0], [0.5, 0.3], 250, 100, 400, 0.1, 0.0)
    assert sol.floor == pytest.approx(0.475)
    assert sol.x == pytest.approx((0.875, 0.125), abs=ABS)
    assert sol.carbon_g == pytest.approx(0.875 * 0.5 + 0.125 * 0.25)


def test_floor_binds_three_levels_picks_the_cheaper_pair():
    # costs [3, 1.5, 1], floor 0.45. Mixing L0 with L1: x = (0.75, 0.25, 0), cost 2.625;
    # with L2: x0 = 0.25 / 0.3, cost 2.667; L1 with L2 cannot reach 0.45. So L0/L1 wins.
    sol = solve_mix([0.003, 0.0015, 0.001], [0, 0, 0], [0.5, 0.3, 0.2], 1000, 0, 1000, 0.1, 0.0)
    assert sol.x == pytest.approx((0.75, 0.25, 0.0), abs=ABS)
    assert sol.carbon_g == pytest.approx(2.625)
    assert sol.quality == pytest.approx(0.45)
    assert sol.floor_binds


def test_at_ci_min_floor_is_q0_and_best_baseline_takes_all():
    sol = solve_mix([0.003, 0.002, 0.001], [5, 4, 3], [0.5, 0.3, 0.2], 100, 100, 400, 0.3, 0.01)
    assert sol.floor == pytest.approx(0.5)
    assert sol.x == pytest.approx((1.0, 0.0, 0.0), abs=ABS)
    assert sol.carbon_g == pytest.approx(0.3 + 0.05)
    assert sol.floor_binds


def test_at_ci_min_a_better_cheaper_level_is_used():
    # q0 = 0.4 is not the best: L1 (0.5) and L2 (0.1) mixed to exactly 0.4 is cheapest:
    # 0.5 x1 + 0.1 (1 - x1) = 0.4 -> x1 = 0.75; cost 0.75 * 2 + 0.25 * 1 = 1.75 (L1 alone: 2)
    sol = solve_mix([0.003, 0.002, 0.001], [0, 0, 0], [0.4, 0.5, 0.1], 1000, 1000, 2000, 0.2, 0.0)
    assert sol.floor == pytest.approx(0.4)
    assert sol.x == pytest.approx((0.0, 0.75, 0.25), abs=ABS)
    assert sol.carbon_g == pytest.approx(1.75)


def test_flat_history_concedes_nothing():
    sol = solve_mix([0.002, 0.001], [0, 0], [0.5, 0.3], 300, 300, 300, 1.0, 0.0)
    assert sol.floor == pytest.approx(0.5)
    assert sol.x == pytest.approx((1.0, 0.0), abs=ABS)


def test_single_level():
    sol = solve_mix([0.002], [3], [0.7], 250, 100, 400, 0.1, 0.01)
    assert sol.x == (1.0,)
    assert sol.carbon_g == pytest.approx(0.53)
    assert not sol.floor_binds


def test_relaxation_and_floor():
    assert relaxation(300, 100, 500) == 0.5
    assert relaxation(50, 100, 500) == 0.0
    assert relaxation(900, 100, 500) == 1.0
    assert relaxation(100, 100, 500) == 0.0
    assert relaxation(500, 100, 500) == 1.0
    assert relaxation(300, 200, 200) == 0.0  # flat history
    assert quality_floor(0.5, 0.1, 500, 100, 500) == pytest.approx(0.45)
    assert quality_floor(0.5, 0.1, 50, 100, 500) == 0.5
    assert quality_floor(0.5, 0.0, 500, 100, 500) == 0.5


GOOD = {
    "energy_kwh": [0.002, 0.001],
    "time_s": [1.0, 1.0],
    "quality": [0.5, 0.3],
    "ci_g_per_kwh": 200.0,
    "ci_min": 100.0,
    "ci_max": 300.0,
    "xi": 0.1,
    "embodied_g_per_s": 0.001,
}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"energy_kwh": []}, "energy_kwh: at least one level"),
        ({"time_s": [1.0]}, "time_s: expected 2 values"),
        ({"quality": [0.5, 0.3, 0.1]}, "quality: expected 2 values"),
        ({"energy_kwh": [0.002, math.nan]}, "energy_kwh: values must be finite"),
        ({"time_s": [1.0, math.inf]}, "time_s: values must be finite"),
        ({"energy_kwh": [0.002, -0.001]}, "energy_kwh: values must lie in"),
        ({"quality": [1.2, 0.3]}, "quality: values must lie in"),
        ({"quality": [0.5, -0.1]}, "quality: values must lie in"),
        ({"ci_g_per_kwh": math.nan}, "ci_g_per_kwh: must be a finite number"),
        ({"ci_g_per_kwh": -1.0}, "ci_g_per_kwh: must be a finite number"),
        ({"ci_min": -1.0}, "ci_min: must be"),
        ({"ci_max": math.inf}, "ci_max: must be"),
        ({"ci_min": 400.0}, r"ci_min \(400.0\) exceeds ci_max \(300.0\)"),
        ({"xi": 1.5}, "xi: must lie in"),
        ({"xi": -0.1}, "xi: must lie in"),
        ({"xi": math.nan}, "xi: must lie in"),
        ({"embodied_g_per_s": -1.0}, "embodied_g_per_s"),
        ({"embodied_g_per_s": math.nan}, "embodied_g_per_s"),
    ],
)
def test_invalid_inputs_name_the_argument(change, match):
    with pytest.raises(OptimizerError, match=match) as info:
        solve_mix(**{**GOOD, **change})
    assert not isinstance(info.value, InfeasibleError)


# With validated inputs the floor (1 - xi * r) * q0 never exceeds q0 <= max(q), so x0 = 1 is
# always feasible and InfeasibleError cannot arise from real inputs. Its two code paths are
# exercised by patching.


def test_infeasible_precheck(monkeypatch):
    monkeypatch.setattr(optimizer, "quality_floor", lambda *args: 0.9)
    with pytest.raises(InfeasibleError, match=r"floor 0\.9000.*best level's quality is 0\.5000"):
        solve_mix(**GOOD)


def test_infeasible_from_linprog_status(monkeypatch):
    def fake(**kwargs):
        return types.SimpleNamespace(status=2, success=False, message="infeasible", x=None)

    monkeypatch.setattr(scipy.optimize, "linprog", fake)
    with pytest.raises(InfeasibleError, match=r"no mix reaches the quality floor 0\.4750"):
        solve_mix(**GOOD)


def test_linprog_other_failure(monkeypatch):
    def fake(**kwargs):
        return types.SimpleNamespace(status=4, success=False, message="numerical trouble", x=None)

    monkeypatch.setattr(scipy.optimize, "linprog", fake)
    with pytest.raises(OptimizerError, match="linprog failed: numerical trouble") as info:
        solve_mix(**GOOD)
    assert not isinstance(info.value, InfeasibleError)


def _brute_force(cost, q, floor):
    """Cheapest vertex: a single level meeting the floor, or a pair mixed to exactly it."""
    best = math.inf
    for k in range(len(q)):
        if q[k] >= floor - 1e-12:
            best = min(best, cost[k])
    for i, j in itertools.combinations(range(len(q)), 2):
        if q[i] != q[j]:
            a = (floor - q[j]) / (q[i] - q[j])
            if 0 <= a <= 1:
                best = min(best, a * cost[i] + (1 - a) * cost[j])
    return best


def test_random_cases_match_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(2, 5))
        e = rng.uniform(0.0005, 0.005, n)
        t = rng.uniform(1, 20, n)
        q = rng.uniform(0, 1, n)
        lo, hi = sorted(rng.uniform(0, 600, 2))
        ci = float(rng.uniform(0, 700))
        xi = float(rng.uniform(0, 1))
        sol = solve_mix(e, t, q, ci, lo, hi, xi, 0.0002)
        cost = e * ci + 0.0002 * t
        assert sum(sol.x) == pytest.approx(1.0)
        assert min(sol.x) >= 0
        assert sol.quality >= sol.floor - 1e-7
        assert sol.carbon_g == pytest.approx(_brute_force(cost, q, sol.floor), rel=1e-7)
