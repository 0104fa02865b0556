"""The per-request policy: each prompt's directive chosen from its text.

A light model, cheap enough to run on every request (tens of microseconds, no GPU), in
modules of one job each:

- :mod:`~sprout.policy.contextual.features`: the prompt as sparse tf-idf and shape features
  (:class:`TextFeatures`, :class:`FeatureConfig`).
- :mod:`~sprout.policy.contextual.model`: the calibrated preference model and the cost
  regressions (:class:`ContextualModel`), stored as plain JSON numbers, never pickled.
- :mod:`~sprout.policy.contextual.fit`: training (:func:`fit_model`) and the safety margin
  its predictions call for (:func:`estimate_margin`).
- :mod:`~sprout.policy.contextual.policy`: :class:`ContextualPolicy`, which decides requests
  under the quality floor with one function for the controller and the simulator.
- :mod:`~sprout.policy.contextual.refit`: the background thread that refits the live
  policies' multipliers.

Core logic only: nothing here imports the judge, the controller, the ledger, the server or
the simulator.
"""

from sprout.policy.contextual.features import (
    DENSE_FEATURES,
    FeatureConfig,
    TextFeatures,
    json_floats,
    prompt_terms,
    shape_features,
)
from sprout.policy.contextual.fit import MARGIN_CI_G_PER_KWH, FitReport, estimate_margin, fit_model
from sprout.policy.contextual.model import (
    DEFAULT_MARGIN_SE,
    PARAMS_FORMAT,
    Calibration,
    ContextualModel,
    LevelPrediction,
    fit_calibration,
)
from sprout.policy.contextual.policy import ContextualPolicy
from sprout.policy.contextual.refit import LIVE_CURVE_ROWS

__all__ = [
    "DEFAULT_MARGIN_SE",
    "DENSE_FEATURES",
    "LIVE_CURVE_ROWS",
    "MARGIN_CI_G_PER_KWH",
    "PARAMS_FORMAT",
    "Calibration",
    "ContextualModel",
    "ContextualPolicy",
    "FeatureConfig",
    "FitReport",
    "LevelPrediction",
    "TextFeatures",
    "estimate_margin",
    "fit_calibration",
    "fit_model",
    "json_floats",
    "prompt_terms",
    "shape_features",
]
