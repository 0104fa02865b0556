"""Training the contextual model, and the safety margin its predictions call for.

:func:`fit_model` fits the featurizer, the calibrated preference model and the cost
regressions on judged (and unjudged) prompts; :func:`estimate_margin` measures, on
out-of-fold predictions, how much more preference the assignment expects than the verdicts
realise (the winner's curse of choosing by predicted preference).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ParamSpec, TypeVar

import numpy as np

from sprout.errors import ConfigError
from sprout.policy.assign import bounded_cost, choose, expected_carbon_g, multiplier
from sprout.policy.contextual.features import FeatureConfig, TextFeatures, prompt_terms
from sprout.policy.contextual.model import (
    Calibration,
    ContextualModel,
    calibrated,
    fit_calibration,
)

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: BLAS threads a fit runs on (None: the libraries' own choice). The fits are many small
#: solves (a few thousand rows and columns), where waking threads costs more than they give:
#: ``benchmarks/simulate_speed.py`` times two weeks of the quality loop both ways.
FIT_BLAS_THREADS: int | None = 1
#: Carbon intensities the margin is estimated at (gCO2e/kWh): clean, typical, dirty grids.
MARGIN_CI_G_PER_KWH: tuple[float, ...] = (100.0, 250.0, 450.0)


@dataclass(frozen=True)
class FitReport:
    """What training saw and out-of-fold figures, for the policy version's metrics.

    Attributes:
        n_judged: prompts with a verdict the preference model was fitted on.
        n_cost: prompts the cost regressions were fitted on.
        n_terms: vocabulary size.
        oof_accuracy, oof_log_loss: out-of-fold top-1 accuracy and log loss (calibrated).
        prior_log_loss: log loss of predicting the training shares for every prompt.
        calibration: the fitted temperature and offsets.
        margin: the chosen safety margin; margin_gap, margin_se: its estimate and error.
        margin_max_loss: the per-request bound the margin was estimated under (None: none).
    """

    n_judged: int
    n_cost: int
    n_terms: int
    oof_accuracy: float
    oof_log_loss: float
    prior_log_loss: float
    calibration: Calibration
    margin: float
    margin_gap: float
    margin_se: float
    margin_max_loss: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        out = asdict(self)
        out["calibration"] = {
            "temperature": self.calibration.temperature,
            "offset": list(self.calibration.offset),
        }
        return out


def estimate_margin(
    pref: np.ndarray,
    y: np.ndarray,
    energy_kwh: np.ndarray,
    time_s: np.ndarray,
    embodied_g_per_s: float,
    *,
    target: float = 1.0,
    z: float = 1.0,
    boot: int = 200,
    seed: int = 0,
    max_loss: float | None = None,
) -> tuple[float, float, float]:
    """How much more normalized preference the assignment expects than it realises.

    On out-of-fold predictions of the training prompts, the floor ``target * q0^`` is met in
    expectation at each of :data:`MARGIN_CI_G_PER_KWH`, and the expected normalized preference
    is compared with the realised one (the verdicts). Choosing each prompt's level by its
    predicted preference favours over-estimates (the winner's curse), so the gap is usually
    positive; the margin is the gap plus ``z`` bootstrap standard errors.

    ``max_loss`` is the serving policy's per-request bound (see
    :func:`sprout.policy.assign.bounded_cost`): the margin is of the assignment the policy
    makes, and a bounded one strays less far from what the verdicts support.

    Returns:
        (margin, gap, standard error), each in units of ``q0`` (0.02 = 2 points).
    """
    rng = np.random.default_rng(seed)
    n = pref.shape[0]
    rows = np.arange(n)
    gaps = []
    boots = []
    for ci in MARGIN_CI_G_PER_KWH:
        cost = bounded_cost(
            expected_carbon_g(energy_kwh, time_s, ci, embodied_g_per_s), pref, max_loss
        )
        q0_hat = float(pref[:, 0].mean())
        lam = multiplier(cost, pref, target * q0_hat)
        k = choose(cost, pref, lam)
        expected = pref[rows, k] / q0_hat  # per prompt, sums to n * expected ratio
        hit = (y == k).astype(float)
        base = (y == 0).astype(float)
        gaps.append(float(expected.mean() - hit.sum() / base.sum()))
        draws = rng.integers(0, n, size=(boot, n))
        boots.append(expected[draws].mean(axis=1) - hit[draws].sum(axis=1) / base[draws].sum(1))
    gap = float(np.mean(gaps))
    se = float(np.std(np.mean(boots, axis=0)))
    return max(0.0, gap + z * se), gap, se


def _on_fit_blas_threads(fit: Callable[_P, _T]) -> Callable[_P, _T]:
    """``fit`` run with the BLAS threads limited to :data:`FIT_BLAS_THREADS` (read at each
    call, so a benchmark can time both settings)."""

    @functools.wraps(fit)
    def limited(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=FIT_BLAS_THREADS, user_api="blas"):
            return fit(*args, **kwargs)

    return limited


@_on_fit_blas_threads
def fit_model(
    texts: Sequence[str],
    preferred: np.ndarray,
    energy_kwh: np.ndarray,
    time_s: np.ndarray,
    levels: Sequence[str],
    *,
    config: FeatureConfig | None = None,
    embodied_g_per_s: float = 0.0,
    margin_z: float = 0.0,
    weights: np.ndarray | None = None,
    info: Mapping[str, Any] | None = None,
    max_loss: float | None = None,
) -> tuple[ContextualModel, FitReport]:
    """Fit the featurizer, the calibrated preference model and the cost regressions.

    Args:
        texts: training prompts.
        preferred: (prompts,) index in ``levels`` of the judge-preferred level, -1 where no
            verdict is known (such prompts train only the cost regressions).
        energy_kwh, time_s: (prompts, levels) measured cost; NaN where not measured.
        levels: the levels, index 0 the baseline.
        config: feature and fitting settings.
        embodied_g_per_s: embodied-carbon rate used when estimating the margin.
        margin_z: standard errors of cushion added to the margin (default 0: the point
            estimate of the optimism; its standard error is reported in the fit report).
        weights: (prompts,) sample weights of the preference and cost fits (e.g. recency);
            the calibration and the margin are estimated unweighted.
        info: notes stored with the model.
        max_loss: the serving policy's per-request bound, under which the margin is
            estimated (stored in the model's notes as ``margin_max_loss``).

    Raises:
        ConfigError: too little data (naming what is missing).
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import StratifiedKFold

    config = config or FeatureConfig()
    k = len(levels)
    preferred = np.asarray(preferred, dtype=np.int64)
    energy_kwh = np.asarray(energy_kwh, dtype=float)
    time_s = np.asarray(time_s, dtype=float)
    n = len(texts)
    if preferred.shape != (n,) or energy_kwh.shape != (n, k) or time_s.shape != (n, k):
        raise ConfigError(
            f"contextual model: {n} prompts but preferred {preferred.shape}, energy "
            f"{energy_kwh.shape}, time {time_s.shape} (expected ({n},) and ({n}, {k}))"
        )
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ConfigError(f"contextual model: weights must be ({n},) finite and >= 0")
    judged = preferred >= 0
    counts = np.bincount(preferred[judged], minlength=k)
    if counts.size > k or np.any(counts < config.cv_folds):
        raise ConfigError(
            f"contextual model: each level needs at least {config.cv_folds} judged prompts "
            f"preferring it; got {dict(zip(levels, counts.tolist(), strict=False))}"
        )
    # Tokenised once: the vocabulary and the matrix are read from the same terms.
    terms = [prompt_terms(t, config.max_tokens, config.ngram_max) for t in texts]
    features = TextFeatures.fit(list(texts), config, terms)
    x = features.matrix(texts, terms)

    xj, yj, wj = x[judged], preferred[judged], w[judged]
    folds = StratifiedKFold(config.cv_folds, shuffle=True, random_state=config.seed)
    # Out-of-fold logits: what the model says of prompts it was not fitted on.
    oof = np.zeros((yj.size, k))
    for fit_rows, pred_rows in folds.split(np.zeros(yj.size), yj):
        fold = LogisticRegression(C=config.c, max_iter=3000)
        fold.fit(xj[fit_rows], yj[fit_rows], sample_weight=wj[fit_rows])
        oof[pred_rows] = fold.decision_function(xj[pred_rows])
    calibration = fit_calibration(oof, yj)
    lr = LogisticRegression(C=config.c, max_iter=3000).fit(xj, yj, sample_weight=wj)
    p_oof = calibrated(oof, calibration)
    rows = np.arange(yj.size)
    oof_ll = float(-np.log(np.clip(p_oof[rows, yj], 1e-12, None)).mean())
    prior = counts / counts.sum()
    prior_ll = float(-np.log(prior[yj]).mean())

    cost_w = np.zeros((features.n_features, 2 * k))
    cost_b = np.zeros(2 * k)
    n_cost = 0
    targets = [energy_kwh[:, i] for i in range(k)] + [time_s[:, i] for i in range(k)]
    for j, target in enumerate(targets):
        ok = np.isfinite(target) & (target > 0)
        if ok.sum() < 2:
            raise ConfigError(
                f"contextual model: too few measured {'energy' if j < k else 'latency'} "
                f"figures at level {levels[j % k]}"
            )
        n_cost = max(n_cost, int(ok.sum()))
        log_y = np.log(target[ok])
        ridge = Ridge(alpha=config.ridge_alpha).fit(x[ok], log_y, sample_weight=w[ok])
        resid = log_y - ridge.predict(x[ok])
        cost_w[:, j] = ridge.coef_
        # Duan's smearing: exp of a mean log under-estimates the mean.
        smear = float(np.average(np.exp(resid), weights=w[ok])) if w[ok].sum() > 0 else 1.0
        cost_b[j] = float(ridge.intercept_) + math.log(smear)

    model = ContextualModel(
        levels=tuple(levels),
        features=features,
        pref_weights=np.ascontiguousarray(lr.coef_.T),
        pref_bias=np.asarray(lr.intercept_, dtype=float),
        calibration=calibration,
        cost_weights=cost_w,
        cost_bias=cost_b,
        info={**(info or {}), "margin_max_loss": max_loss},
    )
    # The margin needs the cost predictions of the judged prompts (in sample: the cost model
    # is not what is being checked) and their out-of-fold preferences.
    cost_pred = model.predict_features(xj)
    margin, gap, se = estimate_margin(
        p_oof,
        yj,
        cost_pred.energy_kwh,
        cost_pred.time_s,
        embodied_g_per_s,
        z=margin_z,
        seed=config.seed,
        max_loss=max_loss,
    )
    model.margin = margin
    model.margin_se = max(se, 1e-4)
    report = FitReport(
        n_judged=int(judged.sum()),
        n_cost=n_cost,
        n_terms=features.n_terms,
        oof_accuracy=float((p_oof.argmax(axis=1) == yj).mean()),
        oof_log_loss=oof_ll,
        prior_log_loss=prior_ll,
        calibration=calibration,
        margin=margin,
        margin_gap=gap,
        margin_se=se,
        margin_max_loss=max_loss,
    )
    return model, report
