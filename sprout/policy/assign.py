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
:func:`floor_fraction` can instead hold it at the baseline's quality (the ``mean`` anchor):
met on average over hours with one multiplier for all of them (:class:`QualityPacer`), it
lets quality conceded in dirty hours be paid back in clean ones, so that none is lost on
average and brevity moves to the high-carbon hours.
"""

from __future__ import annotations

import math

import numpy as np

from sprout.accounting import carbon_g
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
    """Carbon ``E * CI + e_emb * T`` elementwise, gCO2e (:func:`sprout.accounting.carbon_g`
    on arrays)."""
    return carbon_g(np.asarray(energy_kwh), np.asarray(time_s), ci_g_per_kwh, embodied_g_per_s)


def floor_fraction(
    xi: float, carbon: CarbonContext, anchor: str = "lp", margin: float = 0.0
) -> float:
    """The floor as a multiple of the baseline's preference ``q0``.

    ``lp``: ``1 - xi * r`` (Sprout's LP), with ``r`` the relaxation of the current intensity
    in the history's range. ``mean``: ``1`` in every hour, the baseline's quality, to be met
    on average over hours (see :class:`QualityPacer`). One multiplier for all hours already
    moves brevity to the dirty ones (carbon gaps grow with the intensity while the
    multiplier stays), so ``xi`` does not enter: an hourly floor centred on the history's
    mean intensity would, in causal mode, drift with the trend of the grid (a window dirtier
    than its trailing history would concede quality on average). ``margin`` is added in both
    cases: a safety margin for the prediction's optimism.

    Raises:
        ValueError: for an unknown anchor.
    """
    if anchor not in ANCHORS:
        raise ValueError(f"unknown floor anchor {anchor!r}; choose one of: {', '.join(ANCHORS)}")
    if anchor == "mean":
        return 1.0 + margin
    return 1.0 - xi * relaxation(carbon.ci_g_per_kwh, carbon.ci_min, carbon.ci_max) + margin


def bounded_cost(cost: np.ndarray, pref: np.ndarray, max_loss: float | None) -> np.ndarray:
    """``cost`` with each level that would give up more than ``max_loss`` of a prompt's
    chance of preference against the baseline (level 0) priced out (``inf``).

    The floor is met on the mean over prompts, so without a bound it is met by trading:
    prompts that lose little by brevity pay for others that lose much. When traffic shifts
    towards the losers, or the model is wrong about a kind of prompt, the mean goes with
    them. The bound keeps every prompt's expected loss small whatever the mix (``None``:
    no bound). The baseline is always allowed.
    """
    cost = np.asarray(cost, dtype=float)
    if max_loss is None:
        return cost
    pref = np.asarray(pref, dtype=float)
    return np.where(pref >= pref[..., :1] - max_loss, cost, np.inf)


def finite_spread(cost: np.ndarray) -> np.ndarray:
    """Per row, the range of the finite costs (priced-out levels ignored)."""
    finite = np.isfinite(cost)
    hi = np.where(finite, cost, -np.inf).max(axis=1)
    lo = np.where(finite, cost, np.inf).min(axis=1)
    return np.where(finite.any(axis=1), hi - lo, 0.0)


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
    hi = float(finite_spread(cost).max()) / smallest_gap + 1.0
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
    last ``memory`` periods meets their mean floor plus the current safety ``margin``. The
    mean weighs a period by ``2 ** (-age / half_life)``: the traffic's mix drifts (in the
    Sprout protocol it changes about daily), and the recent periods are the best guide to
    the next. What earlier periods fell short of (or exceeded) their floor plus that margin
    is repaid over ``repay_periods`` periods, so the running mean over the periods served
    tracks the floor. The margin is applied at solve time, to every period served so far,
    so that a margin revised by the verdicts (see :class:`MarginEstimate`) also revises
    what the past owes.

    The grid is in units of a base multiplier ``nu0`` (see :meth:`grid`); with no history,
    ``nu0`` itself is the answer.

    Args:
        span: the grid covers ``nu0 * exp(-span) .. nu0 * exp(span)``.
        points: grid points.
        memory: periods remembered.
        repay_periods: periods over which a running deficit is repaid.
        half_life: age (in periods) at which a period's curve weighs half (``inf``: all
            remembered periods alike).
    """

    def __init__(
        self,
        span: float = 4.0,
        points: int = 81,
        memory: int = 720,
        repay_periods: float = 48.0,
        half_life: float = math.inf,
    ) -> None:
        if span <= 0 or points < 2 or memory < 1 or repay_periods <= 0 or half_life <= 0:
            raise ValueError("pacer: span, repay_periods, half_life > 0, points >= 2, memory >= 1")
        self.half_life = half_life
        self.offsets = np.linspace(-span, span, points)
        self.memory = memory
        self.repay_periods = repay_periods
        self._curves: list[np.ndarray] = []
        self._floors: list[float] = []
        self.deficit = 0.0
        self.served = 0

    @property
    def periods(self) -> int:
        """Periods remembered."""
        return len(self._curves)

    def grid(self, nu0: float) -> np.ndarray:
        """The multipliers the curves are evaluated at, for base ``nu0``."""
        return nu0 * np.exp(self.offsets)

    def record(self, curve: np.ndarray, floor: float, achieved: float) -> None:
        """Close a period: its preference ``curve`` over :meth:`grid`, its ``floor`` (without
        margin) and the expected normalized preference it ``achieved`` with the multiplier it
        was served at (all in units of ``q0``)."""
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
        self.served += 1

    def _weights(self) -> np.ndarray:
        age = np.arange(len(self._curves))[::-1]
        return np.asarray(0.5 ** (age / self.half_life), dtype=float)

    def target(self, margin: float = 0.0) -> float:
        """The mean expected normalized preference the next periods must reach (NaN before
        any period is recorded)."""
        if not self._floors:
            return math.nan
        owed = self.deficit + self.served * margin
        floor = float(np.average(self._floors, weights=self._weights()))
        return floor + margin + owed / self.repay_periods

    def solve(self, nu0: float, margin: float = 0.0) -> float:
        """The multiplier for the next period (``nu0`` without history)."""
        if not self._curves:
            return nu0
        mean = np.average(self._curves, axis=0, weights=self._weights())
        need = self.target(margin)
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


#: Standard errors of cushion on a margin revised by verdicts.
DEFAULT_MARGIN_Z = 0.0


class MarginEstimate:
    """The safety margin, revised by the judge's verdicts on the policy's own choices.

    The margin is how much more normalized preference the predictions expect than the
    judge's verdicts realise (choosing each prompt by its predicted preference favours
    over-estimates). Training estimates it on out-of-fold predictions: ``prior``, with
    standard error ``prior_se``. Served traffic measures it. For a judged request ``i``
    with ``e_i`` the predicted preference of its served level, ``b_i`` that of the baseline,
    and the verdict saying whether the served level (``hit_i``) and the baseline
    (``base_i``) were preferred, the linearised gap of the normalized preference is

        d_i = ((e_i - hit_i) - r_i * (b_i - base_i)) / q0_i

    where ``q0_i`` and ``r_i`` are the expected baseline preference and expected normalized
    preference of the period the request was served in (its hour, when quality is scored as
    a mean over hours; all requests pooled otherwise). The weighted mean of ``d`` estimates
    the gap, its spread the gap's standard error; the two estimates are combined by their
    precisions, and the margin is the combination plus ``z`` of its standard errors,
    clipped to ``[-bound, bound]`` so that a run of odd verdicts cannot swing it far.

    Args:
        prior: the training margin.
        prior_se: its standard error (> 0).
        z: standard errors of cushion (>= 0).
        bound: the largest margin either way (> 0).
    """

    def __init__(
        self,
        prior: float,
        prior_se: float = 0.02,
        *,
        z: float = DEFAULT_MARGIN_Z,
        bound: float = 0.2,
    ) -> None:
        if not (math.isfinite(prior) and prior_se > 0 and z >= 0 and bound > 0):
            raise ValueError("margin: prior finite, prior_se and bound > 0, z >= 0")
        self.prior = prior
        self.prior_se = prior_se
        self.z = z
        self.bound = bound
        # Weighted sums of d: weight, weight squared, w * d, w * d^2.
        self._sums = np.zeros(4)

    def fresh(self) -> MarginEstimate:
        """The same prior and settings, no verdicts."""
        return MarginEstimate(self.prior, self.prior_se, z=self.z, bound=self.bound)

    @property
    def verdicts(self) -> float:
        """Weight of the verdicts recorded."""
        return float(self._sums[0])

    def record(
        self,
        pref: np.ndarray,
        served: np.ndarray,
        preferred: np.ndarray,
        weights: np.ndarray | None = None,
        *,
        base_mean: np.ndarray | None = None,
        ratio: np.ndarray | None = None,
    ) -> int:
        """Add verdicts: ``pref`` (n, levels) predicted at decision time, ``served`` (n,)
        the level served, ``preferred`` (n,) the judge's (-1: tie or none, skipped).
        ``base_mean`` and ``ratio`` (n,) are each request's period's ``q0`` and expected
        normalized preference (default: these verdicts pooled).

        Returns:
            verdicts used.
        """
        pref = np.atleast_2d(np.asarray(pref, dtype=float))
        n = pref.shape[0]
        served = np.asarray(served, dtype=np.int64).ravel()
        preferred = np.asarray(preferred, dtype=np.int64).ravel()
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=float).ravel()
        extra = [np.asarray(a, dtype=float).ravel() for a in (base_mean, ratio) if a is not None]
        if any(a.shape != (n,) for a in (served, preferred, w, *extra)):
            raise ValueError(f"verdicts: pref has {n} rows; served, preferred, weights differ")
        ok = (preferred >= 0) & (served >= 0) & (served < pref.shape[1]) & np.isfinite(w)
        ok &= np.all(np.isfinite(pref), axis=1) & (w > 0)
        if not ok.any():
            return 0
        p, k, y, w = pref[ok], served[ok], preferred[ok], w[ok]
        e = p[np.arange(p.shape[0]), k]
        b = p[:, 0]
        q0 = (
            np.full(e.shape, float(w @ b) / float(w.sum()))
            if base_mean is None
            else (np.asarray(base_mean, dtype=float).ravel()[ok])
        )
        r = (
            np.full(e.shape, float(w @ e) / float(w @ b))
            if ratio is None
            else (np.asarray(ratio, dtype=float).ravel()[ok])
        )
        d = ((e - (y == k)) - r * (b - (y == 0))) / np.maximum(q0, 1e-6)
        self._sums += [float(w.sum()), float(w @ w), float(w @ d), float(w @ (d * d))]
        return int(ok.sum())

    def gap(self) -> tuple[float, float] | None:
        """The verdicts' gap and its standard error (None: fewer than two verdicts)."""
        sw, sw2, swd, swd2 = self._sums
        if sw <= 0 or sw2 <= 0:
            return None
        n_eff = sw * sw / sw2
        if n_eff < 2:
            return None
        mean = swd / sw
        var = max(0.0, swd2 / sw - mean * mean) * n_eff / (n_eff - 1)
        return float(mean), float(math.sqrt(var / n_eff))

    @property
    def value(self) -> float:
        """The margin now: the estimates combined, plus ``z`` standard errors."""
        prec = 1.0 / self.prior_se**2
        total = prec * self.prior
        measured = self.gap()
        if measured is not None:
            gap, se = measured
            p = 1.0 / max(se, 1e-6) ** 2
            prec += p
            total += p * gap
        m = total / prec + self.z / math.sqrt(prec)
        return float(min(self.bound, max(-self.bound, m)))
