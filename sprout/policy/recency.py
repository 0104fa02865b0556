"""Recency weights of judged requests (pure).

The workload mix drifts: last month's verdicts say less about today's prompts than
yesterday's. A verdict ``age_h`` hours old weighs ``2 ** (-age_h / half_life_h)`` both in the
quality loop's estimates (:mod:`sprout.judge.quality`) and in the per-request policy's
training data (:mod:`sprout.training.verdicts`); the rule lives here, below both, so that
the policy package never imports the judge.
"""

from __future__ import annotations

#: The default half-life: a week.
DEFAULT_HALF_LIFE_H = 168.0


def age_weight(age_h: float, half_life_h: float) -> float:
    """``2 ** (-age_h / half_life_h)``; a verdict from the future weighs 1."""
    if half_life_h <= 0:
        raise ValueError(f"half_life_h must be > 0, got {half_life_h!r}")
    return 2.0 ** (-max(0.0, age_h) / half_life_h)


__all__ = ["DEFAULT_HALF_LIFE_H", "age_weight"]
