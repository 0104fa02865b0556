"""Sprout's directive-mix optimizer: one linear program per carbon-intensity update (pure).

For directive levels k with mean energy ``E_k`` (kWh), mean duration ``T_k`` (s) and judged
quality ``q_k`` (share of prompts whose preferred answer is level k)::

    minimise    sum_k x_k * (E_k * CI + e_emb * T_k)
    subject to  sum_k q_k * x_k >= (1 - xi * (CI - CI_min) / (CI_max - CI_min)) * q_0
                sum_k x_k = 1,   0 <= x_k <= 1

The floor relaxes linearly from ``q_0`` at the cleanest hour to ``(1 - xi) * q_0`` at the
dirtiest; ``xi`` is the largest quality concession the operator accepts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sprout.accounting import carbon_g
from sprout.errors import InfeasibleError, OptimizerError

#: Slack allowed when checking a solution against the floor (solver tolerance).
_FEASIBILITY_TOL = 1e-9


@dataclass(frozen=True)
class MixSolution:
    """The optimizer's answer for one carbon intensity.

    Attributes:
        x: share of requests per level, summing to 1.
        carbon_g: expected carbon per request at this mix, gCO2e.
        quality: expected quality ``sum_k q_k x_k``.
        floor: the quality floor the mix had to meet.
        floor_binds: True when the floor, not carbon alone, decided the mix.
    """

    x: tuple[float, ...]
    carbon_g: float
    quality: float
    floor: float
    floor_binds: bool


def relaxation(ci: float, ci_min: float, ci_max: float) -> float:
    """Where ``ci`` sits between ``ci_min`` (0) and ``ci_max`` (1), clipped to [0, 1].

    A flat history (``ci_max == ci_min``) gives 0: no evidence that this hour is dirty, so no
    quality is conceded.
    """
    span = ci_max - ci_min
    if span <= 0:
        return 0.0
    return min(1.0, max(0.0, (ci - ci_min) / span))


def quality_floor(q0: float, xi: float, ci: float, ci_min: float, ci_max: float) -> float:
    """The LP's quality floor ``(1 - xi * relaxation) * q0``."""
    return (1.0 - xi * relaxation(ci, ci_min, ci_max)) * q0


def _check_vector(name: str, values: Sequence[float], n: int, lo: float, hi: float) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.shape != (n,):
        raise OptimizerError(f"{name}: expected {n} values (one per level), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise OptimizerError(f"{name}: values must be finite, got {list(arr)}")
    if np.any(arr < lo) or np.any(arr > hi):
        raise OptimizerError(f"{name}: values must lie in [{lo}, {hi}], got {list(arr)}")
    return arr


def solve_mix(
    energy_kwh: Sequence[float],
    time_s: Sequence[float],
    quality: Sequence[float],
    ci_g_per_kwh: float,
    ci_min: float,
    ci_max: float,
    xi: float,
    embodied_g_per_s: float,
) -> MixSolution:
    """Solve Sprout's LP for one carbon intensity.

    Args:
        energy_kwh: mean energy per request at each level (index 0 is the baseline L0).
        time_s: mean request duration at each level.
        quality: judged quality per level; ``quality[0]`` anchors the floor.
        ci_g_per_kwh: the current carbon intensity.
        ci_min, ci_max: the carbon-intensity range of the history window.
        xi: the largest relative quality concession, in [0, 1].
        embodied_g_per_s: embodied carbon rate of the server, gCO2e/s.

    Raises:
        OptimizerError: on malformed inputs (naming the argument).
        InfeasibleError: when no mix meets the floor.
    """
    from scipy.optimize import linprog  # scipy is heavy: import on first solve

    n = len(energy_kwh)
    if n == 0:
        raise OptimizerError("energy_kwh: at least one level is required")
    e = _check_vector("energy_kwh", energy_kwh, n, 0.0, math.inf)
    t = _check_vector("time_s", time_s, n, 0.0, math.inf)
    q = _check_vector("quality", quality, n, 0.0, 1.0)
    for name, value in (("ci_g_per_kwh", ci_g_per_kwh), ("ci_min", ci_min), ("ci_max", ci_max)):
        if not math.isfinite(value) or value < 0:
            raise OptimizerError(f"{name}: must be a finite number >= 0, got {value!r}")
    if ci_min > ci_max:
        raise OptimizerError(f"ci_min ({ci_min}) exceeds ci_max ({ci_max})")
    if not (0.0 <= xi <= 1.0):
        raise OptimizerError(f"xi: must lie in [0, 1], got {xi!r}")
    if not math.isfinite(embodied_g_per_s) or embodied_g_per_s < 0:
        raise OptimizerError(f"embodied_g_per_s: must be finite and >= 0, got {embodied_g_per_s!r}")

    cost = carbon_g(e, t, ci_g_per_kwh, embodied_g_per_s)
    floor = quality_floor(float(q[0]), xi, ci_g_per_kwh, ci_min, ci_max)
    if float(q.max()) < floor - _FEASIBILITY_TOL:
        raise InfeasibleError(
            f"no mix reaches the quality floor {floor:.4f}: the best level's quality is "
            f"{float(q.max()):.4f}"
        )
    result = linprog(
        c=cost,
        A_ub=-q[np.newaxis, :],
        b_ub=[-floor],
        A_eq=np.ones((1, n)),
        b_eq=[1.0],
        bounds=[(0.0, 1.0)] * n,
        method="highs",
    )
    if result.status == 2:
        raise InfeasibleError(f"no mix reaches the quality floor {floor:.4f}")
    if not result.success:
        raise OptimizerError(f"linprog failed: {result.message}")
    x = np.clip(result.x, 0.0, 1.0)
    x = x / x.sum()
    unconstrained = float(cost.min())
    carbon = float(cost @ x)
    return MixSolution(
        x=tuple(float(v) for v in x),
        carbon_g=carbon,
        quality=float(q @ x),
        floor=floor,
        floor_binds=carbon > unconstrained + 1e-12 * max(1.0, abs(unconstrained)),
    )
