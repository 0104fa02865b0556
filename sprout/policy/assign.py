"""Per-request assignment under a quality floor: a Lagrangian threshold (pure numpy).

For prompts ``i`` and levels ``k`` with expected carbon ``c[i, k]`` (gCO2e) and predicted
chance ``p[i, k]`` that the judge prefers level ``k``, the assignment

    minimise  sum_i c[i, k_i]   subject to   mean_i p[i, k_i] >= floor

is solved through its Lagrangian: every prompt takes ``argmin_k c[i, k] - lam * p[i, k]``,
with one multiplier ``lam`` (gCO2e per unit of preference) for all of them. The expected
preference of that choice never falls as ``lam`` grows, so the smallest ``lam`` meeting the
floor is found by bisection. A multiplier fitted on a sample of recent prompts is then a
threshold each new request is decided against on its own, in microseconds.

The floor follows Sprout's LP (:func:`sprout.policy.optimizer.quality_floor`): it relaxes
linearly with where the hour's intensity sits in the history's range, by at most ``xi``.
:func:`contextual_floor` can also centre it on the history's mean intensity, so that quality
conceded in dirtier-than-average hours is paid back in cleaner ones and none is lost on
average: brevity moves to the high-carbon hours.
"""

from __future__ import annotations

import math

import numpy as np

from sprout.policy.base import CarbonContext
from sprout.policy.optimizer import relaxation

#: How a floor is anchored: ``lp`` is Sprout's floor (full quality at the cleanest hour,
#: conceding up to ``xi`` towards the dirtiest); ``mean`` centres it on the mean intensity.
ANCHORS: tuple[str, ...] = ("lp", "mean")

#: Most halvings of the multiplier's bracket per phase of the search.
_BISECTIONS = 200


def expected_carbon_g(
    energy_kwh: np.ndarray, time_s: np.ndarray, ci_g_per_kwh: float, embodied_g_per_s: float
) -> np.ndarray:
    """Carbon ``E * CI + e_emb * T`` elementwise, gCO2e (operational plus embodied)."""
    return np.asarray(energy_kwh) * ci_g_per_kwh + embodied_g_per_s * np.asarray(time_s)


def floor_fraction(
    xi: float, carbon: CarbonContext, anchor: str = "lp", margin: float = 0.0
) -> float:
    """The floor as a multiple of the baseline's preference ``q0``.

    ``lp``: ``1 - xi * r`` (Sprout's LP), with ``r`` the relaxation of the current intensity
    in the history's range. ``mean``: ``1 - xi * (r - r_mean)``, ``r_mean`` the relaxation of
    the history's mean intensity (the mean of ``r`` over the history, as ``r`` is linear in
    the intensity). ``margin`` is added in both cases: a safety margin for the prediction's
    optimism.

    Raises:
        ValueError: for an unknown anchor.
    """
    if anchor not in ANCHORS:
        raise ValueError(f"unknown floor anchor {anchor!r}; choose one of: {', '.join(ANCHORS)}")
    r = relaxation(carbon.ci_g_per_kwh, carbon.ci_min, carbon.ci_max)
    if anchor == "mean":
        r -= relaxation(carbon.ci_mean, carbon.ci_min, carbon.ci_max)
    return 1.0 - xi * r + margin


def choose(cost: np.ndarray, pref: np.ndarray, lam: float) -> np.ndarray:
    """Per row, the level minimising ``cost - lam * pref`` (ties: the lower index)."""
    if math.isinf(lam):  # preference alone decides; carbon breaks ties
        best = pref.max(axis=1, keepdims=True)
        return np.where(pref >= best, cost, np.inf).argmin(axis=1)
    return (cost - lam * pref).argmin(axis=1)


def _mean_pref(cost: np.ndarray, pref: np.ndarray, lam: float) -> float:
    k = choose(cost, pref, lam)
    return float(pref[np.arange(pref.shape[0]), k].mean())


def multiplier(cost: np.ndarray, pref: np.ndarray, floor: float, rtol: float = 1e-6) -> float:
    """The smallest multiplier whose choice meets ``floor`` in expected mean preference.

    Args:
        cost: (n, levels) expected carbon of each prompt at each level.
        pref: (n, levels) chance the judge prefers each level.
        floor: the required mean expected preference.
        rtol: relative precision of the multiplier.

    Returns:
        ``0.0`` when the cheapest choice already meets the floor; ``inf`` when no choice
        does (then every prompt takes its most likely preferred level, the best there is).
    """
    cost = np.asarray(cost, dtype=float)
    pref = np.asarray(pref, dtype=float)
    if cost.shape != pref.shape or cost.ndim != 2 or cost.shape[0] == 0:
        raise ValueError(f"cost {cost.shape} and pref {pref.shape}: expected equal (n, levels)")
    if _mean_pref(cost, pref, 0.0) >= floor:
        return 0.0
    if _mean_pref(cost, pref, math.inf) < floor:
        return math.inf
    # Above ``hi``, every preference gap outweighs every carbon gap, so the floor is met.
    dp = np.diff(np.sort(pref.ravel()))
    smallest_gap = float(dp[dp > 0].min()) if np.any(dp > 0) else 1.0
    hi = float(np.ptp(cost, axis=1).max()) / smallest_gap + 1.0
    # Halve down to the right power of two first (the bound can be loose by many orders of
    # magnitude), then bisect the last factor of two to ``rtol``.
    for _ in range(_BISECTIONS):
        if _mean_pref(cost, pref, 0.5 * hi) < floor:
            break
        hi *= 0.5
    lo = 0.5 * hi
    for _ in range(_BISECTIONS):
        if hi - lo <= rtol * hi:
            break
        mid = 0.5 * (lo + hi)
        if _mean_pref(cost, pref, mid) >= floor:
            hi = mid
        else:
            lo = mid
    return hi


def assign(cost: np.ndarray, pref: np.ndarray, floor: float) -> tuple[np.ndarray, float]:
    """The Lagrangian assignment of a batch meeting ``floor``: (levels, multiplier)."""
    lam = multiplier(cost, pref, floor)
    return choose(np.asarray(cost, float), np.asarray(pref, float), lam), lam


def preference_curve(cost: np.ndarray, pref: np.ndarray, lams: np.ndarray) -> np.ndarray:
    """Expected normalized preference of the choice at each multiplier in ``lams``.

    Returns:
        (multipliers,) ``sum_i p[i, k_i] / sum_i p[i, 0]`` with ``k_i`` chosen at each one.
    """
    cost = np.asarray(cost, dtype=float)
    pref = np.asarray(pref, dtype=float)
    lams = np.asarray(lams, dtype=float)
    k = (cost[None] - lams[:, None, None] * pref[None]).argmin(axis=2)  # (multipliers, n)
    chosen = pref[np.arange(pref.shape[0])[None, :], k]
    return chosen.sum(axis=1) / max(float(pref[:, 0].sum()), 1e-12)


class QualityPacer:
    """Chooses one multiplier for all hours so that the mean over hours of the expected
    normalized preference meets the floor.

    One multiplier for every hour is what minimises carbon when quality counts as the mean
    over hours (as the Sprout protocol measures it): each unit of preference is then bought
    where it costs the least carbon, so brevity moves to dirty hours and to hours whose
    prompts lose little by it. A floor met hour by hour instead buys quality dearly in hours
    of open instructions and math, and cheap quality in hours of factoid questions is left
    unbought.

    Which multiplier meets the floor on average depends on traffic and intensity still to
    come, so it is estimated from the past (a sample-average approximation): at the end of
    each period (an hour) the pacer stores the period's preference curve, the expected
    normalized preference its prompts would have had at each multiplier of a fixed
    logarithmic grid, and the next multiplier is the smallest at which the mean curve of the
    last ``memory`` periods meets the mean floor. What earlier periods fell short of (or
    exceeded) their floor is repaid over ``repay_periods`` periods, so the running mean over
    the periods served tracks the floor.

    The grid is in units of a base multiplier ``nu0`` (see :meth:`grid`); with no history,
    ``nu0`` itself is the answer.

    Args:
        span: the grid covers ``nu0 * exp(-span) .. nu0 * exp(span)``.
        points: grid points.
        memory: periods remembered.
        repay_periods: periods over which a running deficit is repaid.
    """

    def __init__(
        self,
        span: float = 4.0,
        points: int = 81,
        memory: int = 720,
        repay_periods: float = 720.0,
    ) -> None:
        if span <= 0 or points < 2 or memory < 1 or repay_periods <= 0:
            raise ValueError("pacer: span, repay_periods > 0, points >= 2, memory >= 1")
        self.offsets = np.linspace(-span, span, points)
        self.memory = memory
        self.repay_periods = repay_periods
        self._curves: list[np.ndarray] = []
        self._floors: list[float] = []
        self.deficit = 0.0

    @property
    def periods(self) -> int:
        """Periods remembered."""
        return len(self._curves)

    def grid(self, nu0: float) -> np.ndarray:
        """The multipliers the curves are evaluated at, for base ``nu0``."""
        return nu0 * np.exp(self.offsets)

    def record(self, curve: np.ndarray, floor: float, achieved: float) -> None:
        """Close a period: its preference ``curve`` over :meth:`grid`, its ``floor`` and the
        expected normalized preference it ``achieved`` with the multiplier it was served at
        (all in units of ``q0``)."""
        curve = np.asarray(curve, dtype=float)
        if curve.shape != self.offsets.shape or not np.all(np.isfinite(curve)):
            return
        if not (math.isfinite(floor) and math.isfinite(achieved)):
            return
        self._curves.append(curve)
        self._floors.append(floor)
        if len(self._curves) > self.memory:
            del self._curves[0], self._floors[0]
        self.deficit += floor - achieved

    def target(self) -> float:
        """The mean expected normalized preference the next periods must reach."""
        return float(np.mean(self._floors)) + self.deficit / self.repay_periods

    def solve(self, nu0: float) -> float:
        """The multiplier for the next period (``nu0`` without history)."""
        if not self._curves:
            return nu0
        mean = np.mean(self._curves, axis=0)
        need = self.target()
        ok = np.flatnonzero(mean >= need)
        if ok.size == 0:
            return float(nu0 * math.exp(self.offsets[-1]))
        j = int(ok[0])
        if j == 0:
            return float(nu0 * math.exp(self.offsets[0]))
        # Interpolate the log multiplier between the last grid point short of the need and
        # the first meeting it.
        lo, hi = mean[j - 1], mean[j]
        frac = (need - lo) / (hi - lo) if hi > lo else 1.0
        off = self.offsets[j - 1] + frac * (self.offsets[j] - self.offsets[j - 1])
        return float(nu0 * math.exp(off))
