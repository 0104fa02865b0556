"""Carbon accounting formulas and constants."""

from __future__ import annotations

import math

import pytest

from sprout import accounting as acc


def test_constants_are_exact():
    assert acc.KWH_PER_J == 1 / 3_600_000
    assert acc.J_PER_KWH == 3_600_000
    assert acc.SECONDS_PER_YEAR == 31_536_000
    assert acc.G_PER_LB == 453.59237
    assert acc.SPROUT_EMBODIED_G == 26_356.568
    assert acc.SPROUT_LIFETIME_YEARS == 5.0


def test_unit_conversions():
    assert acc.j_to_kwh(3_600_000) == 1.0
    assert acc.j_to_kwh(1800) == pytest.approx(0.0005)
    assert acc.kwh_to_j(0.5) == 1_800_000
    assert acc.kwh_to_j(acc.j_to_kwh(1234.5)) == pytest.approx(1234.5)
    assert acc.lbs_per_mwh_to_g_per_kwh(1000) == pytest.approx(453.59237)
    assert acc.lbs_per_mwh_to_g_per_kwh(0) == 0.0


def test_embodied_rate():
    assert acc.embodied_rate_g_per_s() == pytest.approx(26356.568 / (5 * 365 * 24 * 3600))
    assert acc.embodied_rate_g_per_s() == pytest.approx(1.671522e-4, rel=1e-6)
    assert acc.embodied_rate_g_per_s(1000.0, 1.0) == pytest.approx(1000 / 31_536_000)
    assert acc.embodied_rate_g_per_s(0.0) == 0.0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1.0, 5.0), "embodied carbon"),
        ((math.nan, 5.0), "embodied carbon"),
        ((math.inf, 5.0), "embodied carbon"),
        ((100.0, 0.0), "lifetime"),
        ((100.0, -1.0), "lifetime"),
        ((100.0, math.inf), "lifetime"),
    ],
)
def test_embodied_rate_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        acc.embodied_rate_g_per_s(*args)


def test_request_carbon():
    rate = acc.embodied_rate_g_per_s()
    carbon = acc.request_carbon(
        energy_kwh=0.002, duration_s=10.0, ci_g_per_kwh=400.0, rate_g_per_s=rate
    )
    assert carbon.operational_g == pytest.approx(0.8)
    assert carbon.embodied_g == pytest.approx(10 * 26356.568 / 157_680_000)
    assert carbon.total_g == pytest.approx(0.8 + 10 * rate)
    assert acc.operational_g(0.5, 200) == 100.0
    assert acc.embodied_g(3.0, 0.5) == 1.5


def test_saving():
    assert acc.saving(75.0, 100.0) == pytest.approx(0.25)
    assert acc.saving(100.0, 100.0) == 0.0
    assert acc.saving(120.0, 100.0) == pytest.approx(-0.2)
    for baseline in (0.0, -1.0):
        with pytest.raises(ValueError, match="baseline carbon must be > 0"):
            acc.saving(1.0, baseline)


def test_one_carbon_formula_for_numbers_and_arrays() -> None:
    import numpy as np

    one = acc.request_carbon(0.002, 3.0, 250.0, 1e-4)
    assert acc.carbon_g(0.002, 3.0, 250.0, 1e-4) == pytest.approx(one.total_g)
    energy = np.array([[0.001, 0.002], [0.003, 0.004]])
    time_s = np.array([[1.0, 2.0], [3.0, 4.0]])
    ci = np.array([100.0, 300.0])[:, None]  # one intensity per row, broadcast
    got = acc.carbon_g(energy, time_s, ci, 1e-4)
    for i in range(2):
        for j in range(2):
            want = acc.request_carbon(energy[i, j], time_s[i, j], ci[i, 0], 1e-4).total_g
            assert got[i, j] == pytest.approx(want)
