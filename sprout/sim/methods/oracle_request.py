"""The true per-request optimum: knowing every prompt's verdict and cost, the assignment of
levels that minimises carbon while the share of prompts served at their judge-preferred level
meets the quality floor.

Each prompt adds at most one unit to that share, so the problem is a knapsack with unit
weights and greedy is exact: serve every prompt at its cheapest level; those whose cheapest
level is the preferred one count for free; then, of the rest, move to their preferred level
the ones whose extra carbon is smallest, until the floor is met.
"""

from __future__ import annotations

import math

import numpy as np

from sprout.accounting import carbon_g
from sprout.errors import InfeasibleError
from sprout.policy.optimizer import quality_floor
from sprout.sim.methods.base import (
    Assignment,
    HourInputs,
    Method,
    SimSetup,
    verdict_code,
)


def min_carbon_assignment(carbon_g: np.ndarray, preferred: np.ndarray, required: int) -> np.ndarray:
    """The least-carbon assignment serving at least ``required`` prompts at their preferred
    level.

    Args:
        carbon_g: (prompts, levels) carbon of serving each prompt at each level.
        preferred: (prompts,) index of each prompt's preferred level, -1 if none is offered.
        required: how many prompts must be served at their preferred level.

    Returns:
        (prompts,) the level index per prompt.

    Raises:
        InfeasibleError: if fewer than ``required`` prompts have a preferred level.
    """
    carbon_g = np.asarray(carbon_g, dtype=float)
    preferred = np.asarray(preferred)
    rows = np.arange(carbon_g.shape[0])
    level = carbon_g.argmin(axis=1)
    has = preferred >= 0
    free = has & (level == preferred)
    need = required - int(free.sum())
    if need <= 0:
        return level
    candidates = np.flatnonzero(has & ~free)
    if need > candidates.size:
        raise InfeasibleError(
            f"{required} prompts must be served at their preferred level, but only "
            f"{int(has.sum())} have one"
        )
    extra = (
        carbon_g[candidates, preferred[candidates]] - carbon_g[rows[candidates], level[candidates]]
    )
    chosen = candidates[np.argpartition(extra, need - 1)[:need]]
    level[chosen] = preferred[chosen]
    return level


def required_count(floor: float, prompts: int) -> int:
    """Prompts that must be served at their preferred level for a share of at least
    ``floor`` (with a little slack for floating-point noise)."""
    return max(0, math.ceil(floor * prompts - 1e-9))


class OracleRequest(Method):
    """The per-request optimum under the hour's quality floor, knowing every verdict."""

    name = "oracle_request"
    summary = "per-request optimum knowing every prompt's verdict (realized quality)"

    def start(self, setup: SimSetup) -> None:
        """Precompute each prompt's carbon terms at this method's levels."""
        names = self.levels(setup)
        cols = [setup.workload.key_index(n) for n in names]
        self._energy = setup.workload.energy_kwh[:, cols]
        self._time_s = setup.workload.time_s[:, cols]
        self._embodied_g_per_s = setup.embodied_g_per_s
        # Map verdict codes (0..2 over L0, L1, L2) to this method's level indices.
        to_level = np.full(4, -1, dtype=np.int64)  # index 3 catches NO_VERDICT (-1)
        for i, n in enumerate(names):
            code = verdict_code(n)
            if code is not None:
                to_level[code] = i
        self._verdict = setup.workload.verdict
        self._to_level = to_level
        self._base_code = verdict_code(names[0])
        self._xi = setup.xi

    def decide(self, hour: HourInputs) -> Assignment:
        """Greedy-exact assignment of the hour's judged prompts."""
        rows = hour.judged_rows
        c = hour.carbon
        cost_g = carbon_g(
            self._energy[rows], self._time_s[rows], c.ci_g_per_kwh, self._embodied_g_per_s
        )
        preferred = self._to_level[self._verdict[rows]]
        q0 = float(hour.quality[self._base_code]) if self._base_code is not None else 0.0
        floor = quality_floor(q0, self._xi, c.ci_g_per_kwh, c.ci_min, c.ci_max)
        return Assignment(
            min_carbon_assignment(cost_g, preferred, required_count(floor, rows.size))
        )
