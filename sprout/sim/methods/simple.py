"""Methods that need no optimizer: always the baseline, always the lowest-carbon level."""

from __future__ import annotations

import numpy as np

from sprout.accounting import carbon_g
from sprout.sim.methods.base import HourInputs, Method, Shares, SimSetup


class Base(Method):
    """Always the baseline directive (L0): the yardstick of every saving."""

    name = "base"
    summary = "always the baseline directive (L0)"

    def start(self, setup: SimSetup) -> None:
        """Fix the one-hot mix."""
        self._x = np.zeros(len(self.levels(setup)))
        self._x[0] = 1.0

    def decide(self, hour: HourInputs) -> Shares:
        """Always the baseline."""
        return Shares(self._x)


class Co2Opt(Method):
    """Every request at the level with the least carbon per request this hour (L2)."""

    name = "co2_opt"
    summary = "always the lowest-carbon level"

    def start(self, setup: SimSetup) -> None:
        """Note which recorded columns the levels use."""
        self._cols = [setup.workload.key_index(n) for n in self.levels(setup)]
        self._embodied = setup.embodied_g_per_s

    def decide(self, hour: HourInputs) -> Shares:
        """One-hot on the cheapest level by the hour's mean costs."""
        cost = carbon_g(
            hour.energy_kwh[self._cols],
            hour.time_s[self._cols],
            hour.carbon.ci_g_per_kwh,
            self._embodied,
        )
        x = np.zeros(len(self._cols))
        x[int(np.argmin(cost))] = 1.0
        return Shares(x)
