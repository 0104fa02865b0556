"""The live contextual policy: each request's directive chosen from its prompt's predictions.

:class:`ContextualPolicy` serves a :class:`~sprout.policy.contextual.model.ContextualModel`:
it keeps the predictions of recent requests, fits the Lagrange multiplier of the quality
floor on them for the current carbon intensity (see :mod:`sprout.policy.assign`), and
decides requests against that threshold. One function decides, for a batch of any size:
the simulator calls it with an hour's requests (:meth:`ContextualPolicy.decide_batch`), the
controller with the one request it serves (:meth:`ContextualPolicy.decide`).
"""

from __future__ import annotations

import copy
import math
import random
import threading
from collections.abc import Callable, Sequence

import numpy as np

from sprout.accounting import carbon_g
from sprout.directives import DirectiveSet
from sprout.errors import ConfigError, OptimizerError
from sprout.policy.assign import (
    ANCHORS,
    DEFAULT_MARGIN_Z,
    MarginEstimate,
    QualityPacer,
    bounded_cost,
    expected_carbon_g,
    finite_spread,
    floor_fraction,
    multiplier,
    preference_curve,
)
from sprout.policy.base import CONTEXTUAL_KIND, CarbonContext, Decision, Policy
from sprout.policy.contextual.model import ContextualModel, LevelPrediction
from sprout.policy.contextual.refit import LIVE_CURVE_ROWS, RefitJob, refit_worker


class ContextualPolicy(Policy):
    """Decides each request's directive from its prompt, under Sprout's quality floor.

    Each request takes the level minimising ``c_k - lam * p_k``: ``c_k`` its predicted carbon
    at level ``k`` in the current intensity (operational and embodied), ``p_k`` the predicted
    chance that the judge prefers ``k``. The multiplier is one for all hours, in the units
    that make it so for the quality the Sprout protocol measures (the mean over hours of the
    hour's preferred share over the baseline's, ``q0``)::

        lam = nu / q0^

    ``q0^`` is the mean predicted baseline preference of the last ``window`` requests (it
    turns a unit of preference into a unit of the hour's normalized preference). ``nu``
    (gCO2e per unit of normalized preference) comes from the
    :class:`~sprout.policy.assign.QualityPacer`: the value at which the hours served so far
    would, on average, have met the floor ``floor_fraction(xi, carbon, anchor)`` plus the
    safety margin in expected normalized preference, plus the repayment of any running
    shortfall; before any hour has been served it is ``nu0``, fitted on the reference
    prompts (or the first requests) to meet the floor at a mean hour. The floor is thus met
    on average over hours rather than in each one, which lets brevity go where it saves the
    most carbon per unit of quality: dirty hours (carbon gaps grow with the intensity while
    ``nu`` stays), and hours whose prompts lose little by it. With the ``mean`` anchor (the
    default) the floor is the baseline's own quality: no quality is lost on average, and
    ``xi`` does not enter.

    The safety margin starts at the model's (estimated on out-of-fold predictions in
    training) and is revised by the judge's verdicts on the policy's own choices
    (:meth:`record_verdicts`, :meth:`learn_verdicts`; see
    :class:`~sprout.policy.assign.MarginEstimate`): the quality loop measures what the
    predictions promise and what they deliver, and the pacer repays any difference.

    The multiplier is refitted when the carbon context changes (hourly) or after
    ``refit_every`` requests, on a worker thread with ``background`` (see
    :meth:`multiplier`); each request costs one sparse dot product and an argmin, in
    :meth:`_decide_rows`, whether it comes alone (:meth:`decide`, the controller) or with
    an hour's requests (:meth:`decide_batch`, the simulator).

    Args:
        model: the fitted model.
        directives: the directive set; it must define the model's levels, the first of them
            its baseline.
        xi: largest relative quality concession of the floor.
        embodied_g_per_s: embodied carbon rate of the serving hardware.
        anchor: ``mean`` (the baseline's quality on average: concede in dirty hours, pay
            back in clean ones) or ``lp`` (Sprout's floor, relaxed by up to ``xi``).
        margin: safety margin on the floor before any verdict (default: the model's).
        learn_margin: revise the margin from verdicts (False: keep ``margin``).
        margin_z: standard errors of the revised margin added to it (a one-sided cushion).
        reference: predictions of prompts to fit ``nu0`` on before requests arrive.
        window: recent requests kept for ``q0^`` (and ``nu0`` without a reference).
        refit_every: requests after which the multiplier is refitted at the latest.
        pacer: the pacer (default: a new one with its defaults).
        background: refit the multiplier on a worker thread, off the request path (the
            live controller); False refits inline (the simulator: deterministic).
        max_loss: most a request's predicted chance of preference may fall below the
            baseline's (see :func:`~sprout.policy.assign.bounded_cost`; None: no bound).
    """

    kind = CONTEXTUAL_KIND

    def __init__(
        self,
        model: ContextualModel,
        directives: DirectiveSet,
        xi: float,
        embodied_g_per_s: float,
        *,
        anchor: str = "mean",
        margin: float | None = None,
        learn_margin: bool = True,
        margin_z: float = DEFAULT_MARGIN_Z,
        reference: LevelPrediction | None = None,
        window: int = 1000,
        refit_every: int = 1000,
        pacer: QualityPacer | None = None,
        background: bool = False,
        max_loss: float | None = None,
    ) -> None:
        missing = [name for name in model.levels if name not in directives.names]
        if missing:
            raise OptimizerError(
                f"the contextual model chooses among {list(model.levels)}, but the policy file "
                f"({directives.source}) does not define {missing}"
            )
        if model.levels[0] != directives.baseline.name:
            raise OptimizerError(
                f"the contextual model's baseline level {model.levels[0]!r} is not the policy "
                f"file's baseline directive {directives.baseline.name!r}"
            )
        if anchor not in ANCHORS:
            raise ConfigError(f"unknown floor anchor {anchor!r}; choose one of {ANCHORS}")
        if not 0.0 <= xi <= 1.0:
            raise ConfigError(f"xi must lie in [0, 1], got {xi!r}")
        if window < 1 or refit_every < 1:
            raise ConfigError("window and refit_every must be >= 1")
        if max_loss is not None and not (0.0 <= max_loss <= 1.0):
            raise ConfigError(f"max_loss must lie in [0, 1] (or be unset), got {max_loss!r}")
        self.max_loss = max_loss
        self.model = model
        self.directives = directives
        self.xi = xi
        self.embodied_g_per_s = embodied_g_per_s
        self.anchor = anchor
        self.margin_estimate = MarginEstimate(
            model.margin if margin is None else margin, model.margin_se, z=margin_z
        )
        self.learn_margin = learn_margin
        self.pacer = pacer or QualityPacer()
        self.background = background
        self._refit_lock = threading.Lock()
        self._directive = [directives.get(name) for name in model.levels]
        k = len(model.levels)
        self._k = k
        # A ring buffer of recent predictions: pref, energy, time side by side.
        self._recent = np.zeros((window, 3 * k))
        self._filled = 0
        self._next = 0
        self._since_fit = 0
        self._refit_every = refit_every
        self._nu0: float | None = None
        self._lam_key: tuple[float, ...] | None = None
        self._lam = math.inf
        # The open period: its floor and carbon, the q0^ it is served with, how many
        # requests it decided, and the sums of their chosen and baseline preference.
        self._period_floor = math.nan
        self._period_ci = 0.0
        self._period_q0 = 1.0
        self._period_count = 0
        self._period_chosen = 0.0
        self._period_base = 0.0
        if reference is not None and reference.pref.shape[0] > 0:
            self.observe(reference)

    # State ----------------------------------------------------------------------------------

    def take_over(self, previous: Policy) -> None:
        """Continue the quality pacing of ``previous``, the contextual policy this one
        replaces (a retrained version): its pacer (the periods' curves and the running
        deficit), the base multiplier ``nu0`` its grid is scaled by, its recent requests and
        its open period. A retrain thus neither forgets a shortfall still owed nor restarts
        the multiplier from the reference prompts, and the floor is met on average over all
        hours served, not over each version's. The recent predictions are the previous
        model's until requests replace them. Nothing is taken from another kind of policy,
        from itself, or from one that has not decided a request yet; the recent window and
        open period only when the two windows have the same layout.
        """
        if previous is self or not isinstance(previous, ContextualPolicy):
            return
        with previous._refit_lock:
            if previous._nu0 is None:
                return
            self.pacer = copy.deepcopy(previous.pacer)
            self._nu0 = previous._nu0
            if previous._recent.shape == self._recent.shape:
                self._recent = previous._recent.copy()
                self._filled, self._next = previous._filled, previous._next
                self._since_fit = previous._since_fit
                self._period_floor = previous._period_floor
                self._period_ci = previous._period_ci
                self._period_q0 = previous._period_q0
                self._period_count = previous._period_count
                self._period_chosen = previous._period_chosen
                self._period_base = previous._period_base
        # The next request refits the multiplier on the pacer taken over.
        self._lam_key = None

    def observe(self, prediction: LevelPrediction, level: np.ndarray | int | None = None) -> None:
        """Add predictions of prompts (1-D: one, 2-D: many) to the recent window; with the
        ``level`` chosen for them, also to the open period's expected preference."""
        rows = _rows(prediction)
        levels = None if level is None else np.atleast_1d(np.asarray(level)).tolist()
        if levels is not None and len(levels) != len(rows):
            raise ValueError(f"{len(levels)} levels for {len(rows)} predictions")
        self._record(rows, levels)

    def _record(self, rows: list[list[float]], levels: list[int] | None) -> None:
        """:meth:`observe` of requests given as rows of the recent window's layout."""
        n = len(rows)
        if levels is not None:
            # map, not a comprehension: this runs on every live request.
            self._period_chosen += _total(list(map(list.__getitem__, rows, levels)))
            self._period_base += _total([row[0] for row in rows])
            self._period_count += n
        size = self._recent.shape[0]
        if n >= size:
            self._recent[:] = rows[-size:]
            self._next, self._filled = 0, size
        else:
            end = self._next + n
            if end <= size:
                self._recent[self._next : end] = rows
            else:
                cut = size - self._next
                self._recent[self._next :] = rows[:cut]
                self._recent[: end - size] = rows[cut:]
            self._next = end % size
            self._filled = min(size, self._filled + n)
        self._since_fit += n

    @property
    def margin(self) -> float:
        """The safety margin now (in units of ``q0``)."""
        return self.margin_estimate.value if self.learn_margin else self.margin_estimate.prior

    def floor_fraction(self, carbon: CarbonContext) -> float:
        """The floor as a multiple of ``q0`` in ``carbon`` (margin included)."""
        return floor_fraction(self.xi, carbon, self.anchor, self.margin)

    def record_verdicts(
        self,
        pref: np.ndarray,
        served: np.ndarray,
        preferred: np.ndarray,
        weights: np.ndarray | None = None,
        **period: np.ndarray,
    ) -> int:
        """Learn from the judge's verdicts on requests this policy decided: ``pref`` (n,
        levels) their predicted preferences, ``served`` (n,) the level each was served,
        ``preferred`` (n,) the judge's (-1: tie or no verdict); ``period``: ``base_mean``
        and ``ratio`` as :meth:`MarginEstimate.record`. Returns the verdicts used; the
        margin they revise applies from the next refit of the multiplier."""
        return self.margin_estimate.record(pref, served, preferred, weights, **period)

    def learn_verdicts(
        self,
        verdicts: Sequence[tuple[str, str, str | None, float]],
        *,
        replace: bool = False,
        predict: Callable[[Sequence[str]], LevelPrediction] | None = None,
    ) -> int:
        """:meth:`record_verdicts` from ``(prompt, served, preferred, weight)`` with directive
        names (the quality loop's verdicts, predicted again from the prompt); those naming a
        directive outside the model's levels are skipped. ``replace``: forget the verdicts
        learnt before (the caller passes them all again). ``predict``: this model's
        predictions of prompts, where the caller keeps them (default: ``model.predict``).
        Returns the verdicts used."""
        index = {name: i for i, name in enumerate(self.model.levels)}
        kept = [v for v in verdicts if v[1] in index]
        estimate = self.margin_estimate.fresh() if replace else self.margin_estimate
        used = 0
        if kept:
            pred = (predict or self.model.predict)([v[0] for v in kept])
            used = estimate.record(
                pred.pref,
                np.array([index[v[1]] for v in kept]),
                np.array([index.get(v[2], -1) if v[2] is not None else -1 for v in kept]),
                np.array([v[3] for v in kept], dtype=float),
            )
        # One assignment: a request deciding now sees the old estimate or the new one.
        self.margin_estimate = estimate
        return used

    def _close_period(self, job: RefitJob) -> None:
        """Record the period that ends in the pacer: its curve, floor and achievement."""
        if job.rows is None or self._nu0 is None:
            return
        k = self._k
        pref = job.rows[:, :k]
        cost = self._cost(pref, job.rows[:, k : 2 * k], job.rows[:, 2 * k :], job.ci)
        lams = self.pacer.grid(self._nu0) / job.q0
        self.pacer.record(preference_curve(cost, pref, lams), job.floor, job.achieved)

    def _cost(
        self, pref: np.ndarray, energy_kwh: np.ndarray, time_s: np.ndarray, ci: float
    ) -> np.ndarray:
        """Expected carbon per prompt and level, levels beyond ``max_loss`` priced out."""
        cost = expected_carbon_g(energy_kwh, time_s, ci, self.embodied_g_per_s)
        return bounded_cost(cost, pref, self.max_loss)

    def _fit_nu0(self, recent: np.ndarray, carbon: CarbonContext, ci_ref: float) -> float:
        """``nu0``: the multiplier meeting the floor of a mean hour on ``recent`` prompts."""
        k = self._k
        pref = recent[:, :k]
        cost = self._cost(pref, recent[:, k : 2 * k], recent[:, 2 * k :], ci_ref)
        mean_hour = CarbonContext(ci_ref, carbon.ci_min, carbon.ci_max, carbon.ci_mean)
        q0 = float(pref[:, 0].mean())
        lam = multiplier(cost, pref, self.floor_fraction(mean_hour) * q0)
        # The exchange rate at which carbon and preference gaps are alike for a typical
        # prompt: the scale to fall back on where the floor is out of reach, and a lower
        # bound (the pacer's grid is relative to nu0, so nu0 must not be 0 even when the
        # floor does not bind on these prompts).
        typical = float(np.median(finite_spread(cost))) / max(
            1e-9, float(np.median(np.ptp(pref, axis=1)))
        )
        if not math.isfinite(lam):
            lam = typical
        return max(lam, 0.05 * typical, 1e-12) * q0

    def multiplier(self, carbon: CarbonContext) -> float:
        """The Lagrange multiplier in ``carbon`` (gCO2e per unit of expected preference).

        When the carbon context changes (or after ``refit_every`` requests) the period ends:
        its requests are copied and the next period opened here, and the pacer records the
        period and solves for the next multiplier in :meth:`_refit`, inline or (with
        ``background``) on a worker thread, the requests meanwhile served with the last
        multiplier (the pacer's multiplier moves slowly: it does not depend on the hour's
        intensity).
        """
        key = (carbon.ci_g_per_kwh, carbon.ci_min, carbon.ci_max, carbon.ci_mean)
        if key == self._lam_key and self._since_fit < self._refit_every:
            return self._lam
        if self._filled == 0:
            # Nothing seen yet: the most likely preferred level, and a fit at the next call.
            self._lam_key = None
            self._lam = math.inf
            return self._lam
        # Close the period: copy its requests (the last n of the ring buffer).
        n = min(self._period_count, self._filled)
        rows = None
        if n > 0 and self._period_base > 0:
            ago = np.arange(n)
            if self.background and n > LIVE_CURVE_ROWS:
                # Live, the period's curve is read on an even sample of its requests: the
                # pacer averages curves over many periods, and a smaller refit holds the GIL
                # for less time, away from the requests being served.
                ago = np.linspace(0, n - 1, LIVE_CURVE_ROWS).astype(np.int64)
            rows = self._recent[(self._next - n + ago) % self._recent.shape[0]]
        job = RefitJob(
            rows=rows,
            ci=self._period_ci,
            q0=self._period_q0,
            floor=self._period_floor,
            achieved=self._period_chosen / self._period_base if self._period_base > 0 else 0.0,
            next_q0=max(1e-6, float(self._recent[: self._filled, 0].mean())),
            carbon=carbon,
        )
        # Open the next one.
        self._lam_key = key
        self._since_fit = 0
        self._period_count = 0
        self._period_chosen = self._period_base = 0.0
        self._period_floor = floor_fraction(self.xi, carbon, self.anchor)
        self._period_ci = carbon.ci_g_per_kwh
        self._period_q0 = job.next_q0
        if self.background and self._nu0 is not None:
            refit_worker().put(lambda: self._refit(job))
        else:  # the first fit is inline: there is no multiplier to serve with yet
            self._refit(job)
        return self._lam

    def _refit(self, job: RefitJob) -> None:
        """Record the closed period in the pacer and solve for the next multiplier."""
        with self._refit_lock:
            self._close_period(job)
            if self._nu0 is None:
                recent = self._recent[: self._filled]
                # nu0 is fitted at the history's mean intensity (a mean hour).
                c = job.carbon
                ci_ref = c.ci_mean if c.ci_mean > 0 else c.ci_g_per_kwh
                self._nu0 = self._fit_nu0(recent, c, ci_ref)
            self._lam = self.pacer.solve(self._nu0, self.margin) / job.next_q0

    def wait_refits(self, timeout_s: float = 10.0) -> bool:
        """Wait for the background refits queued so far (tests, benchmarks); True if done."""
        if not self.background:
            return True
        done = threading.Event()
        refit_worker().put(done.set)
        return done.wait(timeout_s)

    # Decisions ---------------------------------------------------------------------------

    def decide_batch(self, prediction: LevelPrediction, carbon: CarbonContext) -> np.ndarray:
        """Decide requests from their predictions (2-D: one row per request): the level
        index of each, recorded as :meth:`observe` records them. The simulator's entry point
        (an hour's requests at a time); see :meth:`_decide_rows`."""
        return np.array(self._decide_rows(_rows(prediction), carbon), dtype=np.int64)

    def decide(self, prompt: str, carbon: CarbonContext, rng: random.Random) -> Decision:
        """The directive for ``prompt`` (``rng`` is not used: the choice is deterministic):
        :meth:`_decide_rows` on its predictions, a batch of one."""
        pref, energy_kwh, time_s = self.model.predict_lists(prompt)
        level = self._decide_rows([pref + energy_kwh + time_s], carbon)[0]
        return Decision(self._directive[level], "contextual")

    def _decide_rows(self, rows: list[list[float]], carbon: CarbonContext) -> list[int]:
        """The one decision function, for a batch of requests of any size: the level index
        of each request, then their bookkeeping (:meth:`_record`). A row holds a request's
        predictions side by side, as the recent window does: preference, energy and
        latency, each over the levels.

        Each request takes the level minimising ``c_k - lam * p_k``, its levels that would
        lose more than ``max_loss`` priced out: :func:`~sprout.policy.assign.bounded_cost`
        and :func:`~sprout.policy.assign.choose` row by row, with the same floating-point
        operations, so the same levels. ``lam`` is the multiplier of the requests before
        the batch, which is never decided on its own predictions.

        Plain Python on a few numbers per request: the live path decides one request at a
        time, where numpy's per-call overhead would cost several times the arithmetic.
        """
        lam = self.multiplier(carbon)
        k = self._k
        ci, emb, max_loss = carbon.ci_g_per_kwh, self.embodied_g_per_s, self.max_loss
        levels = range(k)
        chosen: list[int] = []
        for row in rows:
            pref, energy, time = row[:k], row[k : 2 * k], row[2 * k :]
            cost = [carbon_g(e, t, ci, emb) for e, t in zip(energy, time, strict=True)]
            if max_loss is not None:
                least = pref[0] - max_loss
                cost = [c if p >= least else math.inf for c, p in zip(cost, pref, strict=True)]
            if math.isinf(lam):  # the likeliest preferred level, the cheapest among equals
                chosen.append(max(levels, key=lambda j: (pref[j], -cost[j])))
            else:
                chosen.append(min(levels, key=lambda j: cost[j] - lam * pref[j]))
        self._record(rows, chosen)
        return chosen


def _rows(prediction: LevelPrediction) -> list[list[float]]:
    """Predictions (1-D: one prompt, 2-D: many) as rows of the recent window's layout."""
    return np.hstack(
        [
            np.atleast_2d(prediction.pref),
            np.atleast_2d(prediction.energy_kwh),
            np.atleast_2d(prediction.time_s),
        ]
    ).tolist()


def _total(values: list[float]) -> float:
    """The sum of a batch's values: numpy's pairwise sum (accurate on an hour's requests);
    one value as it is, which is what that sum gives, without numpy's per-call cost."""
    return values[0] if len(values) == 1 else float(np.add.reduce(np.array(values)))
