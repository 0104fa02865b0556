"""The Sprout policy: each request's directive drawn from the LP's population mix."""

from __future__ import annotations

import random
from collections import OrderedDict

from sprout.directives import DirectiveSet
from sprout.errors import OptimizerError
from sprout.policy.base import LP_KIND, CarbonContext, Decision, Policy
from sprout.policy.optimizer import MixSolution, solve_mix
from sprout.policy.stats import LevelStats

_CACHE_SIZE = 256


class SproutLPPolicy(Policy):
    """Sprout's policy: solve the LP for the current carbon context, sample the mix.

    The same object serves the live controller and the simulator. Solutions are cached by
    carbon context, since the intensity changes hourly while requests arrive far faster.
    """

    kind = LP_KIND

    def __init__(
        self,
        directives: DirectiveSet,
        stats: LevelStats,
        xi: float,
        embodied_g_per_s: float,
    ) -> None:
        missing = [name for name in stats.levels if name not in directives.names]
        if missing:
            raise OptimizerError(
                f"level statistics name directive(s) {missing} that the policy file "
                f"({directives.source}) does not define"
            )
        self.directives = directives
        self.stats = stats
        self.xi = xi
        self.embodied_g_per_s = embodied_g_per_s
        self._cache: OrderedDict[tuple[object, ...], MixSolution] = OrderedDict()

    def mix(self, carbon: CarbonContext) -> MixSolution:
        """The LP's mix over ``stats.levels`` for ``carbon``."""
        # The statistics and xi are in the key: a retrain (or the simulator) replaces
        # ``stats``, and a mix solved for the old statistics must not be served for the new.
        key = (self.stats, self.xi, carbon.ci_g_per_kwh, carbon.ci_min, carbon.ci_max)
        solution = self._cache.get(key)
        if solution is None:
            solution = solve_mix(
                self.stats.energy_kwh,
                self.stats.time_s,
                self.stats.quality,
                carbon.ci_g_per_kwh,
                carbon.ci_min,
                carbon.ci_max,
                self.xi,
                self.embodied_g_per_s,
            )
            self._cache[key] = solution
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return solution

    def decide(self, prompt: str, carbon: CarbonContext, rng: random.Random) -> Decision:
        """Draw a directive from the mix for ``carbon`` (the prompt is not used)."""
        solution = self.mix(carbon)
        u = rng.random()
        acc = 0.0
        chosen = len(solution.x) - 1
        for k, share in enumerate(solution.x):
            acc += share
            if u < acc:
                chosen = k
                break
        name = self.stats.levels[chosen]
        return Decision(self.directives.get(name), "lp-mix", solution.x)
