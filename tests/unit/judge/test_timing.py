"""Sprout's offline-evaluator timing rule."""

from __future__ import annotations

import math

import pytest

from sprout.judge.timing import EvaluatorClock, TimingRule, run_hours


def test_first_hour_runs() -> None:
    assert TimingRule().should_run(0, None, [None, None, 500.0], 100.0)
    assert run_hours([500.0] * 5, 100.0) == [0]


def test_never_within_min_gap_even_at_a_clean_local_minimum() -> None:
    # A deep V at hour 3 under the mean: too soon after the run at hour 0.
    ci = [100.0, 100.0, 50.0, 10.0, 50.0, 100.0]
    assert run_hours(ci, 1000.0) == [0]


def test_forced_once_max_gap_has_passed() -> None:
    ci = [100.0 + h for h in range(200)]  # rising, always above the mean: never chosen
    assert run_hours(ci, 1.0) == [0, 72, 144]


def test_local_minimum_below_mean_runs_at_the_turn() -> None:
    ci = [100.0] * 10 + [80.0, 60.0, 70.0] + [100.0] * 10
    # D falls into hour 11 and rises at hour 12: the turn is seen at hour 12.
    assert run_hours(ci, 90.0) == [0, 12]


def test_local_minimum_above_mean_does_not_run() -> None:
    ci = [100.0] * 10 + [80.0, 60.0, 70.0] + [100.0] * 10
    assert run_hours(ci, 65.0) == [0]  # CI 70 at the turn is not below 65


def test_flat_intensity_counts_as_a_turn() -> None:
    # A change of exactly 0 is both "<= 0" and ">= 0"; with no decay a flat stretch turns.
    rule = TimingRule(decay_per_h=0.0)
    assert run_hours([10.0] * 20, 20.0, rule) == [0, 6, 12, 18]


def test_decay_turns_a_slow_decline_into_a_minimum() -> None:
    # A sharp drop into hour 8, then a slow decline (0.5 %/h): raw CI still falls, but
    # the decay-adjusted intensity rises (2.9 %/h), so hour 9 is the turn.
    ci = [100.0] * 8 + [50.0] + [50.0 * 0.995**k for k in range(1, 10)]
    assert run_hours(ci, 80.0) == [0, 9]
    # Without decay the slow decline never turns.
    assert run_hours(ci, 80.0, TimingRule(decay_per_h=0.0)) == [0]


def test_parameters_are_configurable() -> None:
    rule = TimingRule(min_gap_h=2, max_gap_h=5, decay_per_h=0.0)
    assert run_hours([100.0 + h for h in range(12)], 1.0, rule) == [0, 5, 10]
    with pytest.raises(ValueError):
        TimingRule(min_gap_h=10, max_gap_h=5)


def test_hourly_means_for_causal_use() -> None:
    ci = [100.0] * 10 + [80.0, 60.0, 70.0] + [100.0] * 10
    means = [50.0] * 12 + [90.0] * 11  # the turn at hour 12 compares with its own mean
    assert run_hours(ci, means) == [0, 12]
    with pytest.raises(ValueError):
        run_hours(ci, [1.0, 2.0])


def test_clock_skipped_hour_hides_the_minimum() -> None:
    clock = EvaluatorClock()
    assert clock.step(100, 100.0, 90.0)
    for h in range(101, 110):
        assert not clock.step(h, 100.0, 90.0)
    assert not clock.step(110, 60.0, 90.0)
    # Hour 111 is missing: hour 112 cannot see whether the intensity turned.
    assert not clock.step(112, 70.0, 90.0)
    assert clock.step(113, 75.0, 90.0) is False  # rising, no turn from <= 0
    assert clock.last_run_hour == 100


def test_decay_adjusted_values_match_the_formula() -> None:
    rule = TimingRule()
    # Turn exactly at the boundary: D(t-1) == D(t-2) and D(t) == D(t-1).
    t_last, t = 0, 10
    d = 50.0
    ci = [d / math.exp(0.029 * (h - t_last)) for h in (t - 2, t - 1, t)]
    assert rule.should_run(t, t_last, ci, 1000.0)
