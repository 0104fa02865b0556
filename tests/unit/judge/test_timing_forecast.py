"""The forecast-aware timing rule and its clock (beside Sprout's rule in sprout.judge.timing)."""

from __future__ import annotations

import math

import pytest

from sprout.judge.timing import (
    EvaluatorClock,
    ForecastEvaluatorClock,
    ForecastTimingRule,
    TimingRule,
)

RULE = ForecastTimingRule()


def _fc(start: int, values: list[float]) -> list[tuple[int, float]]:
    return [(start + k, v) for k, v in enumerate(values)]


def test_runs_now_when_no_forecast_hour_before_the_deadline_is_cleaner() -> None:
    # Last run at 0, now 10 (past the 6 h gap); the forecast only rises: now is the low.
    assert RULE.should_run_forecast(10, 0, 100.0, _fc(11, [120.0] * 80), 500.0) is True


def test_waits_for_a_cleaner_forecast_hour() -> None:
    forecast = _fc(11, [90.0, 60.0, 90.0] + [120.0] * 80)
    assert RULE.should_run_forecast(10, 0, 100.0, forecast, 500.0) is False
    # ... and runs at that hour, when it comes.
    assert RULE.should_run_forecast(12, 0, 60.0, forecast[2:], 500.0) is True


def test_the_decay_makes_a_slightly_cleaner_hour_much_later_not_worth_waiting_for() -> None:
    # 2% cleaner 20 h later: exp(0.029 * 20) = 1.79, so D(later) > D(now).
    forecast = _fc(11, [120.0] * 19 + [98.0] + [120.0] * 60)
    assert RULE.should_run_forecast(10, 0, 100.0, forecast, 500.0) is True
    no_decay = ForecastTimingRule(decay_per_h=0.0)
    assert no_decay.should_run_forecast(10, 0, 100.0, forecast, 500.0) is False


def test_hours_beyond_the_deadline_do_not_count() -> None:
    forecast = _fc(11, [120.0] * 5 + [10.0] + [120.0] * 60)  # the clean hour is at 16
    assert RULE.should_run_forecast(10, 0, 100.0, forecast, 500.0, deadline_hour=14) is True
    assert RULE.should_run_forecast(10, 0, 100.0, forecast, 500.0, deadline_hour=20) is False


def test_the_deadline_forces_a_run_even_within_the_minimum_gap() -> None:
    assert RULE.should_run_forecast(3, 0, 900.0, _fc(4, [1.0] * 10), 10.0, deadline_hour=3)
    assert not RULE.should_run_forecast(3, 0, 900.0, _fc(4, [1.0] * 10), 10.0, deadline_hour=4)


def test_min_and_max_gap_and_first_run_as_in_sprouts_rule() -> None:
    assert RULE.should_run_forecast(0, None, 500.0, [], 1.0) is True
    assert RULE.should_run_forecast(5, 0, 1.0, _fc(6, [500.0] * 80), 1000.0) is False
    assert RULE.should_run_forecast(72, 0, 500.0, _fc(73, [1.0] * 10), 1.0) is True


def test_a_forecast_short_of_the_deadline_also_needs_an_hour_below_the_mean() -> None:
    short = _fc(11, [120.0] * 5)  # 5 h of forecast; the deadline (72) is far beyond it
    assert RULE.should_run_forecast(10, 0, 100.0, short, 90.0) is False  # above the mean
    assert RULE.should_run_forecast(10, 0, 100.0, short, 110.0) is True
    assert RULE.should_run_forecast(10, 0, 100.0, short, 90.0, deadline_hour=15) is True


def test_no_usable_forecast_defers_to_sprouts_rule() -> None:
    assert RULE.should_run_forecast(10, 0, 100.0, [], 500.0) is None
    assert RULE.should_run_forecast(10, 0, 100.0, _fc(2, [1.0] * 5), 500.0) is None  # past


def test_clock_without_forecasts_matches_sprouts_clock() -> None:
    ci = [100.0 + 30 * math.sin(h / 3.0) for h in range(200)]
    plain, fore = EvaluatorClock(TimingRule()), ForecastEvaluatorClock()
    assert [h for h in range(200) if plain.step(h, ci[h], 100.0)] == [
        h for h in range(200) if fore.step(h, ci[h], 100.0)
    ]


def test_clock_with_a_perfect_forecast_runs_at_the_forecast_low() -> None:
    ci = [200.0] * 10 + [150.0, 120.0, 80.0, 110.0] + [200.0] * 100
    clock = ForecastEvaluatorClock(last_run_hour=0)
    runs = [h for h in range(40) if clock.step(h, ci[h], 150.0, _fc(h + 1, ci[h + 1 : h + 49]))]
    assert runs[0] == 12  # the low itself, not the hour after it as Sprout's rule sees it
    sprout = EvaluatorClock(last_run_hour=0)
    assert next(h for h in range(40) if sprout.step(h, ci[h], 150.0)) == 13


def test_clock_deadline_forces_a_run() -> None:
    clock = ForecastEvaluatorClock(last_run_hour=0)
    assert not clock.step(2, 500.0, 100.0)
    assert clock.step(3, 500.0, 100.0, deadline_hour=3)
    assert clock.last_run_hour == 3


def test_clock_accepts_a_plain_rule() -> None:
    clock = ForecastEvaluatorClock(TimingRule(min_gap_h=1), last_run_hour=0)
    assert clock.step(2, 10.0, 100.0, _fc(3, [50.0] * 70))


def test_rule_validation_is_inherited() -> None:
    with pytest.raises(ValueError):
        ForecastTimingRule(min_gap_h=10, max_gap_h=5)
