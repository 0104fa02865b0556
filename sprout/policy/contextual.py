"""The per-request policy: each prompt's directive chosen from its text.

A light model, cheap enough to run on every request (tens of microseconds, no GPU):

- **Features** (:class:`TextFeatures`): sublinear tf-idf of the prompt's word 1- and 2-grams
  over a compact vocabulary (L2-normalised), plus a few standardised shape features (length,
  lines, answer options, a question mark, digits). Only the prompt text: never a dataset
  label. Prompts are cut to their first :attr:`FeatureConfig.max_tokens` tokens, in training
  and in serving alike, so the cost of a decision is bounded.
- **Preference** (:class:`ContextualModel`): a multinomial logistic regression predicting
  which level the judge prefers, calibrated by vector scaling (a temperature and per-level
  offsets) fitted on out-of-fold logits of the training data.
- **Cost**: ridge regressions of log energy and log latency per level on the same features,
  with Duan's smearing factor so that ``exp`` of the prediction estimates the mean.

A fitted model is plain numbers (:meth:`ContextualModel.to_params`): a vocabulary, weights,
biases and settings, stored as JSON in a policy version, hashed by the ledger and checked
before use. No pickle: loading a stored model runs no code.

:class:`ContextualPolicy` serves it: it keeps the predictions of recent requests, fits the
Lagrange multiplier of the quality floor on them for the current carbon intensity (see
:mod:`sprout.policy.assign`), and decides each request against that threshold. The simulator
drives the same object.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

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
    choose,
    expected_carbon_g,
    finite_spread,
    floor_fraction,
    multiplier,
    preference_curve,
)
from sprout.policy.base import CONTEXTUAL_KIND, CarbonContext, Decision, Policy

if TYPE_CHECKING:
    from scipy import sparse

#: Version of the parameter format written by :meth:`ContextualModel.to_params`.
PARAMS_FORMAT = 1
#: Standard error assumed for a stored margin that carries none (in units of ``q0``).
DEFAULT_MARGIN_SE = 0.02

# scikit-learn's default token pattern, lower-cased: words of two or more characters.
_TOKEN = re.compile(r"\b\w\w+\b")
# A line that opens an answer option: "(A): ...", "A) ...", "B. ...".
_OPTION = re.compile(r"\n[ \t]{0,3}\(?[A-Ha-h][ \t]?[):.]")
#: Shape features appended after the vocabulary, in this order.
DENSE_FEATURES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "options",
    "question_mark",
    "digit_share",
)
# Characters of a prompt that are scanned for tokens (the token cap binds long before this)
# and for the shape features: bounded, so that a decision costs the same on any prompt.
_CHARS_PER_TOKEN = 16
_SHAPE_CHARS = 512
#: The ASCII digits, counted one by one with str.count (C loops; str.translate is slow on
#: non-ASCII text).
_DIGITS = "0123456789"


@dataclass(frozen=True)
class FeatureConfig:
    """How prompts become features, and how the model is fitted.

    Attributes:
        max_tokens: tokens of a prompt that are read (bounds the cost of a decision).
        ngram_max: longest word n-gram.
        min_df: fewest training prompts a term must occur in.
        max_features: vocabulary size (the most frequent terms).
        c: inverse regularisation of the preference model.
        ridge_alpha: regularisation of the energy and latency regressions.
        cv_folds: folds of the out-of-fold predictions used for calibration and the margin.
        seed: seed of the folds and of anything else random in training.
    """

    max_tokens: int = 64
    ngram_max: int = 2
    min_df: int = 2
    max_features: int = 8000
    c: float = 0.1
    ridge_alpha: float = 1.0
    cv_folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("max_tokens", self.max_tokens >= 1),
            ("ngram_max", 1 <= self.ngram_max <= 3),
            ("min_df", self.min_df >= 1),
            ("max_features", self.max_features >= 1),
            ("c", self.c > 0),
            ("ridge_alpha", self.ridge_alpha > 0),
            ("cv_folds", self.cv_folds >= 2),
        )
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"contextual model: {name}={getattr(self, name)!r} is invalid")


def prompt_terms(text: str, max_tokens: int, ngram_max: int) -> list[str]:
    """The word n-grams of a prompt's first ``max_tokens`` tokens (lower-cased)."""
    # Tokens average well under 16 characters: the prefix holds the first max_tokens.
    tokens = _TOKEN.findall(text[: max_tokens * _CHARS_PER_TOKEN].lower())[:max_tokens]
    terms = list(tokens)
    if ngram_max >= 2:
        terms.extend([a + " " + b for a, b in itertools.pairwise(tokens)])
    for n in range(3, ngram_max + 1):
        terms.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return terms


def shape_features(text: str) -> list[float]:
    """The raw values of :data:`DENSE_FEATURES` for one prompt (all but the length from its
    first characters)."""
    head = text[:_SHAPE_CHARS]
    digits = sum(map(head.count, _DIGITS))
    return [
        math.log1p(len(text)),
        math.log1p(len(head.split())),
        math.log1p(head.count("\n")),
        float(len(_OPTION.findall("\n" + head)) >= 2),
        float(head.rstrip().endswith("?")),
        digits / max(1, len(head)),
    ]


@dataclass(frozen=True)
class TextFeatures:
    """A fitted featurizer: vocabulary, idf weights and the shape features' scaling.

    Attributes:
        vocabulary: term -> column.
        idf: (terms,) inverse document frequency per column.
        dense_mean, dense_scale: (shape features,) standardisation.
        config: the settings it was fitted with.
    """

    vocabulary: Mapping[str, int]
    idf: np.ndarray
    dense_mean: np.ndarray
    dense_scale: np.ndarray
    config: FeatureConfig
    # Python copies of the arrays for the per-request path (set in __post_init__).
    _idf_list: list[float] = field(init=False, repr=False, compare=False)
    _mean_list: list[float] = field(init=False, repr=False, compare=False)
    _scale_list: list[float] = field(init=False, repr=False, compare=False)

    @property
    def n_terms(self) -> int:
        """Vocabulary size."""
        return int(self.idf.shape[0])

    @property
    def n_features(self) -> int:
        """Columns of a feature vector: the vocabulary, then the shape features."""
        return self.n_terms + len(DENSE_FEATURES)

    @classmethod
    def fit(cls, texts: Sequence[str], config: FeatureConfig) -> TextFeatures:
        """Choose the vocabulary and scalings from training prompts."""
        if not texts:
            raise ConfigError("contextual model: no training prompts")
        df: dict[str, int] = {}
        for text in texts:
            for term in set(prompt_terms(text, config.max_tokens, config.ngram_max)):
                df[term] = df.get(term, 0) + 1
        kept = sorted((t for t, n in df.items() if n >= config.min_df), key=lambda t: (-df[t], t))
        kept = sorted(kept[: config.max_features])  # sorted: a stable, readable column order
        n = len(texts)
        idf = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in kept])
        dense = np.array([shape_features(t) for t in texts])
        scale = dense.std(axis=0)
        return cls(
            vocabulary={t: j for j, t in enumerate(kept)},
            idf=idf,
            dense_mean=dense.mean(axis=0),
            dense_scale=np.where(scale > 1e-12, scale, 1.0),
            config=config,
        )

    def vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One prompt's sparse feature vector: (column indices, values)."""
        # Plain Python on a few dozen terms: cheaper than numpy's per-call overhead.
        cfg = self.config
        terms = prompt_terms(text, cfg.max_tokens, cfg.ngram_max)
        # Terms outside the vocabulary count under -1, dropped after: no Python-level filter.
        counts = Counter(map(self.vocabulary.get, terms, itertools.repeat(-1, len(terms))))
        counts.pop(-1, None)
        idf = self._idf_list
        idx = list(counts)
        tf = self._sublinear  # 1 + log(count), tabulated
        val = [tf[c] * idf[j] for j, c in counts.items()]
        norm = math.hypot(*val)
        if norm > 0:
            val = [v / norm for v in val]
        n_terms = len(idf)
        idx.extend(range(n_terms, n_terms + len(DENSE_FEATURES)))
        val.extend(
            (v - m) / sc
            for v, m, sc in zip(
                shape_features(text), self._mean_list, self._scale_list, strict=True
            )
        )
        return np.array(idx, dtype=np.int64), np.array(val)

    def __post_init__(self) -> None:
        # Python copies for the per-request path.
        object.__setattr__(self, "_idf_list", [float(v) for v in self.idf])
        object.__setattr__(self, "_mean_list", [float(v) for v in self.dense_mean])
        object.__setattr__(self, "_scale_list", [float(v) for v in self.dense_scale])
        # A prompt has at most max_tokens * ngram_max terms, so no count exceeds that.
        most = self.config.max_tokens * self.config.ngram_max
        object.__setattr__(
            self, "_sublinear", [0.0] + [1.0 + math.log(c) for c in range(1, most + 1)]
        )

    def matrix(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Feature vectors of many prompts as a sparse matrix (the same values as
        :meth:`vector`, row by row)."""
        from scipy import sparse

        indptr = [0]
        indices: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for text in texts:
            idx, val = self.vector(text)
            indices.append(idx)
            values.append(val)
            indptr.append(indptr[-1] + idx.size)
        return sparse.csr_matrix(
            (
                np.concatenate(values) if values else np.empty(0),
                np.concatenate(indices) if indices else np.empty(0, dtype=np.int64),
                np.array(indptr),
            ),
            shape=(len(texts), self.n_features),
        )

    def to_params(self) -> dict[str, Any]:
        """JSON-safe form (terms in column order)."""
        terms = [""] * self.n_terms
        for term, j in self.vocabulary.items():
            terms[j] = term
        return {
            "config": asdict(self.config),
            "terms": terms,
            "idf": _floats(self.idf),
            "dense_features": list(DENSE_FEATURES),
            "dense_mean": _floats(self.dense_mean),
            "dense_scale": _floats(self.dense_scale),
        }

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> TextFeatures:
        """Inverse of :meth:`to_params`.

        Raises:
            ConfigError: the parameters are malformed.
        """
        try:
            config = FeatureConfig(**raw["config"])
            terms = [str(t) for t in raw["terms"]]
            idf = np.asarray(raw["idf"], dtype=float)
            mean = np.asarray(raw["dense_mean"], dtype=float)
            scale = np.asarray(raw["dense_scale"], dtype=float)
            dense_names = tuple(raw["dense_features"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"contextual model: malformed features ({e!r})") from e
        if dense_names != DENSE_FEATURES:
            raise ConfigError(
                f"contextual model: shape features {list(dense_names)} differ from this "
                f"version's {list(DENSE_FEATURES)}; retrain the model"
            )
        n_dense = (len(DENSE_FEATURES),)
        if idf.shape != (len(terms),) or mean.shape != n_dense or scale.shape != n_dense:
            raise ConfigError("contextual model: feature arrays do not match the vocabulary")
        if len(set(terms)) != len(terms):
            raise ConfigError("contextual model: the vocabulary repeats a term")
        return cls({t: j for j, t in enumerate(terms)}, idf, mean, scale, config)


def _floats(values: Any, digits: int = 7) -> list[Any]:
    """Nested lists of floats rounded to ``digits`` significant digits (compact JSON)."""
    arr = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ValueError("non-finite model parameter")
    return np.vectorize(lambda v: float(f"{v:.{digits}g}"), otypes=[float])(arr).tolist()


@dataclass(frozen=True)
class LevelPrediction:
    """A model's predictions for prompts, per level (arrays over prompts x levels).

    Attributes:
        pref: chance the judge prefers each level (rows sum to 1).
        energy_kwh: expected energy of the request at each level.
        time_s: expected latency at each level.
    """

    pref: np.ndarray
    energy_kwh: np.ndarray
    time_s: np.ndarray


@dataclass(frozen=True)
class Calibration:
    """Vector scaling of the preference logits: ``softmax(z / temperature + offset)``."""

    temperature: float = 1.0
    offset: tuple[float, ...] = ()


@dataclass
class ContextualModel:
    """Predicts, per directive level, the judge's preference and the request's cost.

    Attributes:
        levels: the levels, index 0 the baseline (the floor's anchor).
        features: the featurizer.
        pref_weights: (features, levels) logistic-regression weights.
        pref_bias: (levels,) intercepts.
        calibration: the preference logits' calibration.
        cost_weights: (features, 2 * levels) ridge weights of log energy, then log latency.
        cost_bias: (2 * levels,) intercepts, smearing factors folded in.
        margin: the safety margin on the floor the training data call for (the preference
            the assignment expects beyond what it realises, out of fold).
        margin_se: the margin's standard error (how far verdicts may revise it).
        info: what it was trained on (counts, sources), for people.
    """

    levels: tuple[str, ...]
    features: TextFeatures
    pref_weights: np.ndarray
    pref_bias: np.ndarray
    calibration: Calibration
    cost_weights: np.ndarray
    cost_bias: np.ndarray
    margin: float = 0.0
    margin_se: float = DEFAULT_MARGIN_SE
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k, d = len(self.levels), self.features.n_features
        shapes = (
            ("pref_weights", self.pref_weights.shape, (d, k)),
            ("pref_bias", self.pref_bias.shape, (k,)),
            ("cost_weights", self.cost_weights.shape, (d, 2 * k)),
            ("cost_bias", self.cost_bias.shape, (2 * k,)),
            ("calibration.offset", (len(self.calibration.offset),), (k,)),
        )
        for name, got, want in shapes:
            if got != want:
                raise ConfigError(f"contextual model: {name} has shape {got}, expected {want}")
        if not self.calibration.temperature > 0:
            raise ConfigError("contextual model: calibration temperature must be > 0")
        # Serving form: one weight matrix for everything, calibration folded in.
        t = self.calibration.temperature
        self._weights = np.ascontiguousarray(np.hstack([self.pref_weights / t, self.cost_weights]))
        self._bias = np.concatenate(
            [self.pref_bias / t + np.asarray(self.calibration.offset), self.cost_bias]
        )

    def _outputs(self, scores: np.ndarray) -> LevelPrediction:
        k = len(self.levels)
        logits = scores[..., :k]
        logits = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        # Clip the log costs: a wild prompt must not overflow exp into inf carbon.
        cost = np.exp(np.clip(scores[..., k:], -50.0, 50.0))
        return LevelPrediction(
            pref=e / e.sum(axis=-1, keepdims=True),
            energy_kwh=cost[..., :k],
            time_s=cost[..., k:],
        )

    def predict_one(self, text: str) -> LevelPrediction:
        """Predictions for one prompt (1-D arrays over levels)."""
        pref, energy, time = self.predict_lists(text)
        return LevelPrediction(np.array(pref), np.array(energy), np.array(time))

    def predict_lists(self, text: str) -> tuple[list[float], list[float], list[float]]:
        """Predictions for one prompt as Python lists: (preference, energy, latency).

        The per-request path: one gather and one product in numpy, the rest on three
        numbers each in plain Python.
        """
        idx, val = self.features.vector(text)
        scores = (val @ self._weights[idx] + self._bias).tolist()
        k = len(self.levels)
        top = max(scores[:k])
        e = [math.exp(z - top) for z in scores[:k]]
        total = sum(e)
        cost = [math.exp(min(50.0, max(-50.0, z))) for z in scores[k:]]
        return [v / total for v in e], cost[:k], cost[k:]

    def predict(self, texts: Sequence[str]) -> LevelPrediction:
        """Predictions for many prompts ((prompts, levels) arrays)."""
        x = self.features.matrix(texts)
        return self._outputs(np.asarray(x @ self._weights) + self._bias)

    def to_params(self) -> dict[str, Any]:
        """Everything needed to rebuild the model, as JSON-safe data."""
        return {
            "format": PARAMS_FORMAT,
            "levels": list(self.levels),
            "features": self.features.to_params(),
            "pref_weights": _floats(self.pref_weights),
            "pref_bias": _floats(self.pref_bias),
            "calibration": {
                "temperature": float(self.calibration.temperature),
                "offset": _floats(self.calibration.offset),
            },
            "cost_weights": _floats(self.cost_weights),
            "cost_bias": _floats(self.cost_bias),
            "margin": float(self.margin),
            "margin_se": float(self.margin_se),
            "info": self.info,
        }

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> ContextualModel:
        """Rebuild a model from :meth:`to_params` output (e.g. a stored policy version).

        Raises:
            ConfigError: the parameters are malformed or of another format.
        """
        if not isinstance(raw, Mapping) or raw.get("format") != PARAMS_FORMAT:
            got = raw.get("format") if isinstance(raw, Mapping) else type(raw).__name__
            raise ConfigError(
                f"contextual model: parameter format {got!r} is not {PARAMS_FORMAT}; retrain"
            )
        try:
            cal = raw["calibration"]
            model = cls(
                levels=tuple(str(v) for v in raw["levels"]),
                features=TextFeatures.from_params(raw["features"]),
                pref_weights=np.asarray(raw["pref_weights"], dtype=float),
                pref_bias=np.asarray(raw["pref_bias"], dtype=float),
                calibration=Calibration(
                    float(cal["temperature"]), tuple(float(v) for v in cal["offset"])
                ),
                cost_weights=np.asarray(raw["cost_weights"], dtype=float),
                cost_bias=np.asarray(raw["cost_bias"], dtype=float),
                margin=float(raw.get("margin", 0.0)),
                margin_se=float(raw.get("margin_se", DEFAULT_MARGIN_SE)),
                info=dict(raw.get("info") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"contextual model: malformed parameters ({e!r})") from e
        if not (np.all(np.isfinite(model._weights)) and np.all(np.isfinite(model._bias))):
            raise ConfigError("contextual model: parameters are not finite")
        return model


# --- training ---------------------------------------------------------------------------


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


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fit_calibration(logits: np.ndarray, y: np.ndarray) -> Calibration:
    """Vector scaling fitted by maximum likelihood on held-out logits (Guo et al. 2017).

    The offset of level 0 is fixed at 0 (softmax is shift-invariant).
    """
    from scipy.optimize import minimize

    n, k = logits.shape
    rows = np.arange(n)

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = math.exp(theta[0])
        b = np.concatenate([[0.0], theta[1:]])
        lp = _log_softmax(logits / t + b)
        p = np.exp(lp)
        onehot = np.zeros_like(p)
        onehot[rows, y] = 1.0
        g = (p - onehot) / n  # d nll / d (scaled logits)
        grad_t = float(np.sum(g * (-logits / t)))  # d/d log t = t * d/dt
        return float(-lp[rows, y].mean()), np.concatenate([[grad_t], g.sum(axis=0)[1:]])

    res = minimize(nll, np.zeros(k), jac=True, method="L-BFGS-B")
    theta = res.x if np.all(np.isfinite(res.x)) else np.zeros(k)
    return Calibration(math.exp(float(theta[0])), (0.0, *(float(v) for v in theta[1:])))


def _apply(logits: np.ndarray, cal: Calibration) -> np.ndarray:
    return np.exp(_log_softmax(logits / cal.temperature + np.asarray(cal.offset)))


#: Carbon intensities the margin is estimated at (gCO2e/kWh): clean, typical, dirty grids.
MARGIN_CI_G_PER_KWH: tuple[float, ...] = (100.0, 250.0, 450.0)


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
    features = TextFeatures.fit(list(texts), config)
    x = features.matrix(texts)

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
    p_oof = _apply(oof, calibration)
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
    cost_pred = model._outputs(np.asarray(xj @ model._weights) + model._bias)
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


# --- serving ------------------------------------------------------------------------------


#: Requests of a closed period whose preference curve a background refit computes.
LIVE_CURVE_ROWS = 256


@dataclass(frozen=True)
class _Refit:
    """A closed period and the next period's opening, handed to the refit."""

    rows: np.ndarray | None  # the closed period's predictions (pref, energy, time)
    ci: float  # its intensity
    q0: float  # the q0^ it was served with
    floor: float  # its floor (without margin)
    achieved: float  # its expected normalized preference
    next_q0: float  # q0^ of the next period
    carbon: CarbonContext  # the next period's carbon context


_WORKER_LOCK = threading.Lock()
_WORKER: queue.SimpleQueue[Callable[[], None]] | None = None


def _refit_worker() -> queue.SimpleQueue[Callable[[], None]]:
    """The queue of the process's refit thread (one daemon thread, started on first use,
    shared by every policy: refits are rare, hourly, and must run in order)."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

            def run() -> None:
                while True:
                    job = jobs.get()
                    try:
                        job()
                    except Exception:  # a failed refit keeps the last multiplier
                        logging.getLogger("sprout.policy").exception("multiplier refit failed")

            threading.Thread(target=run, name="sprout-policy-refit", daemon=True).start()
            _WORKER = jobs
        return _WORKER


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
    :meth:`multiplier`); each request costs one sparse dot product and an argmin.

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

    def observe(self, prediction: LevelPrediction, level: np.ndarray | int | None = None) -> None:
        """Add predictions of prompts (1-D: one, 2-D: many) to the recent window; with the
        ``level`` chosen for them, also to the open period's expected preference."""
        pref = np.atleast_2d(prediction.pref)
        rows = np.hstack(
            [pref, np.atleast_2d(prediction.energy_kwh), np.atleast_2d(prediction.time_s)]
        )
        if level is not None:
            chosen = np.atleast_1d(np.asarray(level))
            self._period_chosen += float(pref[np.arange(pref.shape[0]), chosen].sum())
            self._period_base += float(pref[:, 0].sum())
            self._period_count += pref.shape[0]
        size = self._recent.shape[0]
        n = rows.shape[0]
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

    def _close_period(self, job: _Refit) -> None:
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
        job = _Refit(
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
            _refit_worker().put(lambda: self._refit(job))
        else:  # the first fit is inline: there is no multiplier to serve with yet
            self._refit(job)
        return self._lam

    def _refit(self, job: _Refit) -> None:
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
        _refit_worker().put(done.set)
        return done.wait(timeout_s)

    # Decisions ---------------------------------------------------------------------------

    def choose(self, prediction: LevelPrediction, carbon: CarbonContext) -> np.ndarray:
        """Level index per prompt of ``prediction`` (2-D), against the current multiplier.

        The simulator's entry point: it decides a whole hour with the multiplier of the
        requests before it, then :meth:`observe` s them with their levels, as the controller
        does one request at a time.
        """
        lam = self.multiplier(carbon)
        pref = np.atleast_2d(prediction.pref)
        cost = self._cost(
            pref,
            np.atleast_2d(prediction.energy_kwh),
            np.atleast_2d(prediction.time_s),
            carbon.ci_g_per_kwh,
        )
        return choose(cost, pref, lam)

    def decide(self, prompt: str, carbon: CarbonContext, rng: random.Random) -> Decision:
        """The directive for ``prompt`` (``rng`` is not used: the choice is deterministic).

        The same choice as :meth:`choose` and :meth:`observe`, on three numbers per level in
        plain Python (numpy's per-call overhead would dominate at this size).
        """
        pref, energy, time = self.model.predict_lists(prompt)
        lam = self.multiplier(carbon)
        ci, emb = carbon.ci_g_per_kwh, self.embodied_g_per_s
        cost = [carbon_g(e, t, ci, emb) for e, t in zip(energy, time, strict=True)]
        if self.max_loss is not None:  # bounded_cost, on three numbers
            least = pref[0] - self.max_loss
            cost = [c if p >= least else math.inf for c, p in zip(cost, pref, strict=True)]
        levels = range(len(pref))
        if math.isinf(lam):  # the likeliest preferred level, the cheapest among equals
            level = max(levels, key=lambda j: (pref[j], -cost[j]))
        else:
            level = min(levels, key=lambda j: cost[j] - lam * pref[j])
        self._observe_one(pref + energy + time, pref[level], pref[0])
        return Decision(self._directive[level], "contextual")

    def _observe_one(self, row: list[float], chosen: float, base: float) -> None:
        """:meth:`observe` of one decided request (its predictions side by side)."""
        self._recent[self._next] = row
        self._next = (self._next + 1) % self._recent.shape[0]
        self._filled = min(self._recent.shape[0], self._filled + 1)
        self._since_fit += 1
        self._period_chosen += chosen
        self._period_base += base
        self._period_count += 1
