"""Run one method over one setup and grade its decisions, hour by hour.

The grading lives here, not in the methods: carbon comes from the measured costs, quality
from the hour's true verdicts, whatever the method believed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sprout.errors import ConfigError
from sprout.sim.methods.base import (
    Assignment,
    HourInputs,
    Method,
    Shares,
    SimSetup,
    verdict_code,
)


@dataclass(frozen=True)
class MethodSeries:
    """A method's hourly results over a window.

    Attributes:
        name: the method.
        levels: the levels its mix is over.
        carbon_g: (hours,) mean carbon per request.
        quality: (hours,) share of requests served at the judge-preferred level (NaN where
            it cannot be known, e.g. levels without verdicts).
        base_quality: (hours,) that share for always-baseline (``q_0``).
        mix: (hours, levels) share of requests per level.
        per_request: True if the method assigned levels per request.
    """

    name: str
    levels: tuple[str, ...]
    carbon_g: np.ndarray
    quality: np.ndarray
    base_quality: np.ndarray
    mix: np.ndarray
    per_request: bool


def run_method(
    method: Method, setup: SimSetup, inputs: Sequence[HourInputs] | None = None
) -> MethodSeries:
    """Run ``method`` hour by hour over ``setup`` and grade each decision.

    Args:
        method: a fresh method instance.
        setup: the run's setup.
        inputs: ``setup.hour(h)`` for every hour, if already built (shared across methods).
    """
    method.start(setup)
    levels = method.levels(setup)
    cols = np.array([setup.workload.key_index(n) for n in levels])
    codes = [verdict_code(n) for n in levels]
    known = all(c is not None for c in codes)
    code_arr = np.array([-2 if c is None else c for c in codes])  # -2 matches no verdict
    base_code = verdict_code(setup.directives.names[0])
    if base_code is None:
        raise ConfigError(f"baseline directive {setup.directives.names[0]!r} has no verdicts")
    level_carbon = setup.level_carbon_g(levels)
    workload = setup.workload
    hours = setup.hours
    carbon = np.empty(hours)
    quality = np.empty(hours)
    mix = np.empty((hours, len(levels)))
    per_request = False
    for h in range(hours):
        hour = inputs[h] if inputs is not None else setup.hour(h)
        decision = method.decide(hour)
        if isinstance(decision, Shares):
            x = np.asarray(decision.x, dtype=float)
            if x.shape != (len(levels),) or abs(x.sum() - 1.0) > 1e-6 or np.any(x < -1e-9):
                raise ValueError(f"{method.name}: hour {h}: not a mix over {levels}: {x}")
            carbon[h] = float(x @ level_carbon[h])
            quality[h] = float(x @ hour.quality[code_arr]) if known else math.nan
            mix[h] = x
        elif isinstance(decision, Assignment):
            per_request = True
            a = np.asarray(decision.level)
            rows = hour.judged_rows
            if a.shape != rows.shape:
                raise ValueError(
                    f"{method.name}: hour {h}: {a.shape} levels for {rows.shape} prompts"
                )
            c = cols[a]
            carbon[h] = float(
                np.mean(
                    workload.energy_kwh[rows, c] * hour.carbon.ci_g_per_kwh
                    + setup.embodied_g_per_s * workload.time_s[rows, c]
                )
            )
            quality[h] = (
                float(np.mean(workload.verdict[rows] == code_arr[a])) if known else math.nan
            )
            mix[h] = np.bincount(a, minlength=len(levels)) / a.size
        else:
            raise TypeError(f"{method.name}: decide() returned {type(decision).__name__}")
    return MethodSeries(
        name=method.name,
        levels=levels,
        carbon_g=carbon,
        quality=quality,
        base_quality=setup.samples.quality[:, base_code].copy(),
        mix=mix,
        per_request=per_request,
    )
