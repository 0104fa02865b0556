"""The fitted model: per level, the judge's preference and the request's cost.

- **Preference**: a multinomial logistic regression predicting which level the judge
  prefers, calibrated by vector scaling (a temperature and per-level offsets, see
  :func:`fit_calibration`) fitted on out-of-fold logits of the training data.
- **Cost**: ridge regressions of log energy and log latency per level on the same features,
  with Duan's smearing factor so that ``exp`` of the prediction estimates the mean.

A fitted model is plain numbers (:meth:`ContextualModel.to_params`): a vocabulary, weights,
biases and settings, stored as JSON in a policy version, hashed by the ledger and checked
before use. No pickle: loading a stored model runs no code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sprout.errors import ConfigError
from sprout.policy.contextual.features import TextFeatures, json_floats

if TYPE_CHECKING:
    from scipy import sparse

#: Version of the parameter format written by :meth:`ContextualModel.to_params`.
PARAMS_FORMAT = 1
#: Standard error assumed for a stored margin that carries none (in units of ``q0``).
DEFAULT_MARGIN_SE = 0.02


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


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log softmax of (n, levels) logits."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def calibrated(logits: np.ndarray, cal: Calibration) -> np.ndarray:
    """Preferences of (n, levels) logits under the calibration ``cal``."""
    return np.exp(log_softmax(logits / cal.temperature + np.asarray(cal.offset)))


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
        lp = log_softmax(logits / t + b)
        p = np.exp(lp)
        onehot = np.zeros_like(p)
        onehot[rows, y] = 1.0
        g = (p - onehot) / n  # d nll / d (scaled logits)
        grad_t = float(np.sum(g * (-logits / t)))  # d/d log t = t * d/dt
        return float(-lp[rows, y].mean()), np.concatenate([[grad_t], g.sum(axis=0)[1:]])

    res = minimize(nll, np.zeros(k), jac=True, method="L-BFGS-B")
    theta = res.x if np.all(np.isfinite(res.x)) else np.zeros(k)
    return Calibration(math.exp(float(theta[0])), (0.0, *(float(v) for v in theta[1:])))


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
        return self.predict_features(self.features.matrix(texts))

    def predict_features(self, x: sparse.csr_matrix) -> LevelPrediction:
        """Predictions for rows of :meth:`TextFeatures.matrix` ((rows, levels) arrays)."""
        return self._outputs(np.asarray(x @ self._weights) + self._bias)

    def to_params(self) -> dict[str, Any]:
        """Everything needed to rebuild the model, as JSON-safe data."""
        return {
            "format": PARAMS_FORMAT,
            "levels": list(self.levels),
            "features": self.features.to_params(),
            "pref_weights": json_floats(self.pref_weights),
            "pref_bias": json_floats(self.pref_bias),
            "calibration": {
                "temperature": float(self.calibration.temperature),
                "offset": json_floats(self.calibration.offset),
            },
            "cost_weights": json_floats(self.cost_weights),
            "cost_bias": json_floats(self.cost_bias),
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
