"""Retraining the per-request policy: fit :func:`~sprout.policy.contextual.fit_model` on
the training part of the examples, evaluate on the held-out part, and store the model as a
new policy version with its metrics (:meth:`Ledger.save_policy_version`, which hashes the
params).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from sprout.accounting import embodied_rate_g_per_s
from sprout.data import LEVELS
from sprout.policy.assign import bounded_cost, choose, expected_carbon_g, multiplier
from sprout.policy.base import (
    CONTEXTUAL_KIND,
    DEFAULT_MAX_LOSS,
)
from sprout.policy.contextual import (
    ContextualModel,
    FeatureConfig,
    LevelPrediction,
    fit_model,
)
from sprout.policy.contextual.features import json_floats as _floats
from sprout.training.dataset import TrainingSet, training_set
from sprout.training.sources import (
    CHECK_CI_G_PER_KWH,
    DEFAULT_HELD_OUT,
    DEFAULT_SPLIT_SEED,
    REFERENCE_PROMPTS,
    TrainingSource,
    choose_sources,
)

if TYPE_CHECKING:
    from sprout.ledger.store import Ledger


log = logging.getLogger("sprout.training")


@dataclass
class Retrained:
    """A fitted model and what is stored with it.

    Attributes:
        model: the model.
        reference: predictions of training prompts (seed the multiplier live).
        metrics: training and held-out figures.
        version: the stored policy version's id (None until stored).
    """

    model: ContextualModel
    reference: LevelPrediction
    metrics: dict[str, Any] = field(default_factory=dict)
    version: int | None = None

    def params(self) -> dict[str, Any]:
        """The policy version's params: the model and the reference predictions."""
        return {
            "model": self.model.to_params(),
            "reference": {
                "pref": _floats(self.reference.pref, 5),
                "energy_kwh": _floats(self.reference.energy_kwh, 5),
                "time_s": _floats(self.reference.time_s, 5),
            },
        }


def heldout_metrics(
    model: ContextualModel,
    data: TrainingSet,
    embodied_g_per_s: float,
    ci_g_per_kwh: float = CHECK_CI_G_PER_KWH,
    max_loss: float | None = DEFAULT_MAX_LOSS,
) -> dict[str, Any]:
    """Figures of ``model`` on the held-out examples.

    Top-1 accuracy and log loss of the preference; log-R² of energy and latency per level;
    and a policy check at one intensity over the held-out prompts as one batch: the
    multiplier meeting ``(1 + margin) * q0^`` in expectation, and the carbon saving and
    normalized preference that choice realises against always-baseline, under the serving
    policy's per-request bound ``max_loss``.
    """
    rows = np.flatnonzero(data.held_out)
    if rows.size == 0:
        return {"n_held_out": 0}
    pred = model.predict([data.prompts[i] for i in rows])
    y = data.preferred[rows]
    n = rows.size
    out: dict[str, Any] = {
        "n_held_out": int(n),
        "accuracy": float((pred.pref.argmax(axis=1) == y).mean()),
        "log_loss": float(-np.log(np.clip(pred.pref[np.arange(n), y], 1e-12, None)).mean()),
    }
    shares = np.bincount(data.preferred[~data.held_out & (data.preferred >= 0)], minlength=3)
    prior = shares / max(1, shares.sum())
    out["prior_log_loss"] = float(-np.log(np.clip(prior[y], 1e-12, None)).mean())
    for what, actual, predicted in (
        ("energy", data.energy_kwh[rows], pred.energy_kwh),
        ("time", data.time_s[rows], pred.time_s),
    ):
        for j, level in enumerate(data.levels):
            ok = np.isfinite(actual[:, j]) & (actual[:, j] > 0)
            if ok.sum() > 1:
                la = np.log(actual[ok, j])
                r2 = 1.0 - np.mean((la - np.log(predicted[ok, j])) ** 2) / max(np.var(la), 1e-12)
                out[f"{what}_log_r2_{level}"] = float(r2)
    measured = np.all(np.isfinite(data.energy_kwh[rows]) & np.isfinite(data.time_s[rows]), 1)
    if measured.sum() > 1:
        p = pred.pref[measured]
        yy = y[measured]
        cost = bounded_cost(
            expected_carbon_g(
                pred.energy_kwh[measured], pred.time_s[measured], ci_g_per_kwh, embodied_g_per_s
            ),
            p,
            max_loss,
        )
        real = expected_carbon_g(
            data.energy_kwh[rows][measured],
            data.time_s[rows][measured],
            ci_g_per_kwh,
            embodied_g_per_s,
        )
        lam = multiplier(cost, p, (1.0 + model.margin) * float(p[:, 0].mean()))
        k = choose(cost, p, lam)
        r = np.arange(k.size)
        out["check"] = {
            "ci_g_per_kwh": ci_g_per_kwh,
            "expected_normalized_preference": float(p[r, k].mean() / p[:, 0].mean()),
            "normalized_preference": float((yy == k).sum() / max(1, (yy == 0).sum())),
            "carbon_saving": float(1.0 - real[r, k].sum() / real[:, 0].sum()),
            "mix": np.bincount(k, minlength=len(data.levels)).tolist(),
        }
    return out


def fit_training_set(
    data: TrainingSet,
    *,
    config: FeatureConfig | None = None,
    embodied_g_per_s: float | None = None,
    refit_all: bool = False,
    max_loss: float | None = DEFAULT_MAX_LOSS,
) -> Retrained:
    """Fit on the training part of ``data`` and evaluate on its held-out part.

    Args:
        data: the examples and their split.
        config: feature and fitting settings.
        embodied_g_per_s: embodied carbon rate (default: Sprout's server).
        refit_all: after evaluating, refit on every example (the stored model then differs
            from the evaluated one; its metrics say so).
        max_loss: the serving policy's per-request bound: the margin and the held-out check
            are of the assignment it makes.
    """

    rate = embodied_rate_g_per_s() if embodied_g_per_s is None else embodied_g_per_s
    config = config or FeatureConfig()
    train = ~data.held_out

    def fit(mask: np.ndarray) -> tuple[ContextualModel, dict[str, Any]]:
        rows = np.flatnonzero(mask)
        model, report = fit_model(
            [data.prompts[i] for i in rows],
            data.preferred[rows],
            data.energy_kwh[rows],
            data.time_s[rows],
            data.levels,
            config=config,
            embodied_g_per_s=rate,
            weights=data.weights[rows],
            info={"sources": list(data.sources), "examples": int(rows.size)},
            max_loss=max_loss,
        )
        return model, report.as_dict()

    model, report = fit(train)
    metrics: dict[str, Any] = {
        "training": report,
        "held_out": heldout_metrics(model, data, rate, max_loss=max_loss),
    }
    if refit_all and data.held_out.any():
        model, metrics["training_all"] = fit(np.ones(data.size, dtype=bool))
        metrics["note"] = "held_out figures are of the model fitted on the training split only"
    rng = np.random.default_rng(config.seed)
    judged_train = np.flatnonzero(train & (data.preferred >= 0))
    ref_rows = rng.permutation(judged_train)[:REFERENCE_PROMPTS]
    reference = model.predict([data.prompts[i] for i in ref_rows])
    metrics["examples"] = {
        "total": data.size,
        "judged": int((data.preferred >= 0).sum()),
        "held_out": int(data.held_out.sum()),
        "sources": list(data.sources),
    }
    return Retrained(model, reference, metrics)


def retrain(
    ledger: Ledger | None,
    *,
    sources: Sequence[TrainingSource] | None = None,
    levels: Sequence[str] | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    held_out_fraction: float = DEFAULT_HELD_OUT,
    config: FeatureConfig | None = None,
    embodied_g_per_s: float | None = None,
    refit_all: bool = False,
    note: str = "",
    data: str = "auto",
    now: datetime | None = None,
    store: bool = True,
    max_loss: float | None = DEFAULT_MAX_LOSS,
) -> Retrained:
    """Rebuild the model and store it as a new policy version (if ``ledger`` is given).

    Args:
        ledger: where the version goes and whose verdicts it learns from (None: fit on the
            bundled data and evaluate only).
        sources: training sources (default: :func:`choose_sources` of ``data``).
        levels: the levels (default: those with verdicts, ``L0, L1, L2``).
        split_seed, held_out_fraction: the split (``held_out_fraction`` 0: no evaluation).
        config: feature and fitting settings.
        embodied_g_per_s: embodied carbon rate (default: Sprout's server).
        refit_all: refit on every example after evaluating.
        note: stored with the version.
        data: which data when ``sources`` is not given (see :func:`choose_sources`).
        now: the time of the ledger examples' recency weights (default: now).
        store: store the model in ``ledger`` (False: learn from it, store nothing).
        max_loss: the serving policy's per-request bound (``policy_max_loss``), under which
            the margin and the held-out check are estimated.

    Raises:
        ConfigError: no usable training data.
        LedgerError: the version could not be stored.
    """

    levels = tuple(levels or LEVELS)
    if sources is None:
        sources = choose_sources(data, ledger, levels, now or datetime.now(UTC))
    examples = [ex for src in sources for ex in src.examples()]
    data = training_set(
        examples,
        levels,
        split_seed=split_seed,
        held_out_fraction=held_out_fraction,
        sources=[s.name for s in sources],
    )
    result = fit_training_set(
        data,
        config=config,
        embodied_g_per_s=embodied_g_per_s,
        refit_all=refit_all,
        max_loss=max_loss,
    )
    result.metrics["split"] = {"seed": split_seed, "held_out_fraction": held_out_fraction}
    if ledger is not None and store:
        result.version = ledger.save_policy_version(
            CONTEXTUAL_KIND,
            result.params(),
            result.metrics,
            note=note or f"contextual model from {', '.join(s.name for s in sources)}",
        )
    return result


# --- serving the newest version -------------------------------------------------------------
