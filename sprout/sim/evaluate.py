"""Run one method over one setup and grade its decisions, hour by hour.

The grading lives here, not in the methods: carbon comes from the measured costs, quality
from the hour's true verdicts, whatever the method believed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sprout.accounting import carbon_g
from sprout.errors import ConfigError
from sprout.sim.methods.base import (
    Assignment,
    HourInputs,
    Method,
    Shares,
    SimSetup,
    verdict_code,
)

#: Default energy of one judge call, Wh: an estimate, not a measurement. Epoch AI ("How much
#: energy does ChatGPT use?", J. You, Feb 2025) estimates about 0.3 Wh for a typical
#: GPT-4o query; a judge call carries a prompt and two or three answers, so vary it
#: (``--judge-energy-wh``), e.g. 2.9 Wh, the older per-ChatGPT-request figure of EPRI's
#: "Powering Intelligence" (2024).
JUDGE_ENERGY_WH = 0.3
JUDGE_ENERGY_SOURCE = (
    "estimate: ~0.3 Wh per GPT-4o-class query (Epoch AI, 'How much energy does ChatGPT "
    "use?', Feb 2025)"
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
        overhead_g: (hours,) carbon of the verdicts it bought, in grams for the whole hour
            (answers under the other directives and judge calls, charged to the hour the
            evaluator ran); zeros for a method that learns from no verdict.
        judged: requests it had judged over the window (one judge call each).
        requests_per_hour: requests served per hour (``setup.traffic_per_hour``), which
            turns per-request carbon into the hour's total.
        draws: digest of every hour's requests, equal for methods that saw the same draws.
    """

    name: str
    levels: tuple[str, ...]
    carbon_g: np.ndarray
    quality: np.ndarray
    base_quality: np.ndarray
    mix: np.ndarray
    per_request: bool
    overhead_g: np.ndarray
    judged: int
    requests_per_hour: int
    draws: str


def judging_overhead_g(method: Method, setup: SimSetup, levels: tuple[str, ...]) -> np.ndarray:
    """(hours,) grams the verdicts ``method`` recorded cost: per judged request, its answers
    under every directive but the served one (recorded energy x the run hour's CI, plus the
    embodied rate x recorded latency) and one judge call of ``setup.judge_energy_wh``."""
    overhead = np.zeros(setup.hours)
    cols = [setup.workload.key_index(n) for n in levels]
    w = setup.workload
    judge_kwh = setup.judge_energy_wh / 1000.0
    # A per-request sample stands for a share of the traffic: scaled to the served requests.
    traffic_scale = setup.traffic_per_hour / int(setup.samples.judged_rows.shape[1])
    for event in method.judge_events():
        scale = traffic_scale if event.share_of_traffic else 1.0
        ci = float(setup.carbon.ci_g_per_kwh[event.hour])
        rows = event.rows
        per_level = carbon_g(
            w.energy_kwh[np.ix_(rows, cols)],
            w.time_s[np.ix_(rows, cols)],
            ci,
            setup.embodied_g_per_s,
        )
        if event.served_level is not None:
            served = per_level[np.arange(rows.size), event.served_level]
            extra = float(per_level.sum() - served.sum())
        elif event.served_mix is not None:
            extra = float((per_level @ (1.0 - event.served_mix)).sum())
        else:
            extra = float(per_level.sum())
        overhead[event.hour] += scale * (extra + rows.size * judge_kwh * ci)
    return overhead


def judged_requests(method: Method, setup: SimSetup) -> int:
    """Requests ``method`` had judged (a per-request sample scaled to the traffic)."""
    traffic_scale = setup.traffic_per_hour / int(setup.samples.judged_rows.shape[1])
    events = method.judge_events()
    return round(sum(e.rows.size * (traffic_scale if e.share_of_traffic else 1.0) for e in events))


def draws_digest(rows_per_hour: Sequence[np.ndarray]) -> str:
    """A short digest of the requests of every hour, in order."""
    h = hashlib.sha256()
    for rows in rows_per_hour:
        h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


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
    seen_rows: list[np.ndarray] = []
    base_quality = setup.samples.quality[:, base_code].copy()
    for h in range(hours):
        hour = inputs[h] if inputs is not None else setup.hour(h)
        seen_rows.append(hour.judged_rows)
        # Quality is graded on the graded rows only (all of the hour's judged prompts by
        # default; see sprout.sim.loop on a retraining loop's separate half).
        graded = (
            np.ones(hour.judged_rows.size, dtype=bool)
            if setup.graded is None
            else setup.graded[hour.judged_rows]
        )
        verdicts = workload.verdict[hour.judged_rows[graded]]
        hour_quality = (
            hour.quality
            if setup.graded is None
            else np.array([(verdicts == k).mean() for k in range(hour.quality.size)])
        )
        base_quality[h] = hour_quality[base_code]
        decision = method.decide(hour)
        if isinstance(decision, Shares):
            x = np.asarray(decision.x, dtype=float)
            if x.shape != (len(levels),) or abs(x.sum() - 1.0) > 1e-6 or np.any(x < -1e-9):
                raise ValueError(f"{method.name}: hour {h}: not a mix over {levels}: {x}")
            carbon[h] = float(x @ level_carbon[h])
            quality[h] = float(x @ hour_quality[code_arr]) if known else math.nan
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
                    carbon_g(
                        workload.energy_kwh[rows, c],
                        workload.time_s[rows, c],
                        hour.carbon.ci_g_per_kwh,
                        setup.embodied_g_per_s,
                    )
                )
            )
            quality[h] = float(np.mean(verdicts == code_arr[a[graded]])) if known else math.nan
            mix[h] = np.bincount(a, minlength=len(levels)) / a.size
        else:
            raise TypeError(f"{method.name}: decide() returned {type(decision).__name__}")
    return MethodSeries(
        name=method.name,
        levels=levels,
        carbon_g=carbon,
        quality=quality,
        base_quality=base_quality,
        mix=mix,
        per_request=per_request,
        overhead_g=judging_overhead_g(method, setup, levels),
        judged=judged_requests(method, setup),
        requests_per_hour=setup.traffic_per_hour,
        draws=draws_digest(seen_rows),
    )
