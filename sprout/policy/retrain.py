"""Retraining the per-request policy, storing it, and serving the newest stored version.

- **Training data** is a stream of :class:`TrainingExample` from :class:`TrainingSource`
  objects. :class:`LedgerSource` yields the quality loop's judged live requests: the kept
  prompt, the judge's preferred directive and each directive's measured (or recorded) energy
  and latency, recency-weighted (:mod:`sprout.judge.training`). :class:`BundledSource` (the
  recorded workloads: measured energy and latency at every level, GPT-4 verdicts on the
  judged prompts) is what a fresh install trains on. :func:`choose_sources` picks between
  them: by default the ledger's verdicts, with the bundled data beside them until the
  ledger holds :data:`MIN_LEDGER_EXAMPLES` judged requests of its own.
- :func:`retrain` splits the examples (the simulator's split: the same seed and fraction
  hold out the same bundled prompts), fits :func:`~sprout.policy.contextual.fit_model` on
  the training part, evaluates on the held-out part and stores the model as a new policy
  version with its metrics (:meth:`Ledger.save_policy_version`, which hashes the params).
- :func:`load_policy` rebuilds a :class:`ContextualPolicy` from the newest stored version
  (the ledger checks its hash first); :class:`PolicyWatcher` polls for a newer version on a
  background thread and swaps it into a running controller, keeping the current policy when
  a load fails.
- :func:`schedule_retrain` adds the retraining job to an APScheduler 3.x scheduler on a
  crontab expression.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sprout.errors import ConfigError, SproutError
from sprout.policy.assign import bounded_cost, choose, expected_carbon_g, multiplier
from sprout.policy.base import (
    CONTEXTUAL_KIND,
    DATA_CHOICES,
    DEFAULT_MAX_LOSS,
    MIN_LEDGER_EXAMPLES,
)
from sprout.policy.contextual import (
    ContextualModel,
    ContextualPolicy,
    FeatureConfig,
    LevelPrediction,
    _floats,
    fit_model,
)

if TYPE_CHECKING:
    from apscheduler.job import Job
    from apscheduler.schedulers.base import BaseScheduler

    from sprout.directives import DirectiveSet
    from sprout.ledger.store import Ledger

log = logging.getLogger("sprout.policy.retrain")

#: The default split: seed and share of each group's judged prompts held out (the same as
#: ``sprout simulate --split-seed 0 --held-out 0.5``).
DEFAULT_SPLIT_SEED = 0
DEFAULT_HELD_OUT = 0.5
#: Training prompts whose predictions are stored with a model, to fit the multiplier on
#: before live requests arrive.
REFERENCE_PROMPTS = 500
#: Intensity of the held-out policy check stored in the metrics, gCO2e/kWh.
CHECK_CI_G_PER_KWH = 300.0


@dataclass(frozen=True)
class RetrainOptions:
    """How the scheduled retrain fits (``sprout retrain``'s defaults; the simulator's loop
    retrains with the same).

    Attributes:
        data: which data (see :func:`pick_sources`).
        split_seed, held_out_fraction: the held-out split its metrics are measured on.
        refit_all: store the model refitted on every example (else the one fitted on the
            training part, whose held-out figures are stored with it).
    """

    data: str = "auto"
    split_seed: int = DEFAULT_SPLIT_SEED
    held_out_fraction: float = DEFAULT_HELD_OUT
    refit_all: bool = False

    def __post_init__(self) -> None:
        if self.data not in DATA_CHOICES:
            raise ConfigError(
                f"training data {self.data!r}: choose one of {', '.join(DATA_CHOICES)}"
            )
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ConfigError(f"--held-out: {self.held_out_fraction!r} is outside [0, 1)")


@dataclass(frozen=True)
class TrainingExample:
    """One prompt with what is known about serving it.

    Attributes:
        prompt: the prompt text (the model's only input).
        preferred_level: the level the judge preferred, None if not judged (or no clear
            winner): such examples train only the cost regressions.
        energy_kwh: measured energy per level (levels not measured are absent).
        time_s: measured latency per level.
        group: a stratum for splitting (e.g. the workload); never a feature.
        source: where the example came from (``bundled``, ``ledger``...).
        weight: how much the example counts in the fits (e.g. a recency weight).
    """

    prompt: str
    preferred_level: str | None
    energy_kwh: Mapping[str, float]
    time_s: Mapping[str, float]
    group: str = ""
    source: str = ""
    weight: float = 1.0


class TrainingSource(Protocol):
    """Something that yields training examples."""

    #: Short name, recorded in the policy version's metrics.
    name: str

    def examples(self) -> Iterable[TrainingExample]:
        """The examples, in a stable order (the split depends on it)."""
        ...


class BundledSource:
    """The bundled recorded workloads (what a fresh install trains on).

    Args:
        datasets: the workloads to use (default: all six).
    """

    name = "bundled"

    def __init__(self, datasets: Sequence[str] | None = None) -> None:
        from sprout.data import DATASETS

        self.datasets = tuple(datasets or DATASETS)

    def examples(self) -> Iterable[TrainingExample]:
        """Every bundled prompt; judged ones carry their verdict."""
        from sprout.data import LEVELS, load_workload

        for r in load_workload(self.datasets):
            best = r.judge_best
            judged = r.judge_sampled and best is not None and 0 <= best < len(LEVELS)
            yield TrainingExample(
                prompt=r.instruction,
                preferred_level=LEVELS[best] if judged and best is not None else None,
                energy_kwh=r.energy_kwh,
                time_s=r.time_s,
                group=r.dataset,
                source=self.name,
            )


#: Energy sources a ledger example's energy is trained on: measurements and recordings.
#: An estimate is derived from the tokens, so it teaches the cost model nothing new; a
#: level whose energy was estimated trains only the latency regression.
TRAINABLE_ENERGY_SOURCES: tuple[str, ...] = ("measured-nvml", "measured-rapl", "recorded")


class LedgerSource:
    """The ledger's judged live requests as training examples.

    Each verdict whose prompt is still kept (:class:`sprout.judge.training.LedgerVerdictSource`)
    gives one example: the prompt, the judge's preferred directive (None for a tie or no
    verdict: such an example trains only the cost regressions), each directive's energy
    where it was measured or recorded (NaN where estimated, see
    :data:`TRAINABLE_ENERGY_SOURCES`) and its latency, with the verdict's recency weight.

    Args:
        ledger: the ledger.
        levels: the directive names the model chooses among.
        now: the time the recency weights are taken at.
        half_life_h, max_age_h: as :class:`~sprout.judge.training.LedgerVerdictSource`.
    """

    name = "ledger"

    def __init__(
        self,
        ledger: Ledger,
        levels: Sequence[str],
        now: datetime,
        *,
        half_life_h: float | None = None,
        max_age_h: float | None = None,
    ) -> None:
        from sprout.judge.training import LedgerVerdictSource

        options: dict[str, float] = {} if half_life_h is None else {"half_life_h": half_life_h}
        self.levels = tuple(levels)
        self.now = now
        self._verdicts = LedgerVerdictSource(ledger, self.levels, max_age_h=max_age_h, **options)
        self._examples: list[TrainingExample] | None = None

    def examples(self) -> Iterable[TrainingExample]:
        """The examples, oldest first (read once, then kept).

        Raises:
            LedgerError: the ledger cannot be read.
        """
        if self._examples is None:
            self._examples = [self._example(ex) for ex in self._verdicts.examples(self.now)]
        return self._examples

    def judged(self) -> int:
        """Examples that carry a verdict."""
        return sum(ex.preferred_level is not None for ex in self.examples())

    def _example(self, ex: Any) -> TrainingExample:
        r = ex.record
        energy = {
            level: r.energy_kwh[level]
            if ex.energy_sources.get(level) in TRAINABLE_ENERGY_SOURCES
            else math.nan
            for level in self.levels
        }
        best = r.judge_best
        return TrainingExample(
            prompt=r.instruction,
            preferred_level=self.levels[best] if best is not None else None,
            energy_kwh=energy,
            time_s=dict(r.time_s),
            group=self.name,
            source=self.name,
            weight=ex.weight,
        )


def choose_sources(
    data: str,
    ledger: Ledger | None,
    levels: Sequence[str],
    now: datetime,
    *,
    min_ledger_examples: int = MIN_LEDGER_EXAMPLES,
) -> list[TrainingSource]:
    """The training sources for ``data`` (see :func:`pick_sources`), the ledger's judged
    requests read as :class:`LedgerSource`.

    Raises:
        ConfigError: an unknown choice, ``ledger`` without a ledger or with no judged
            requests in it.
        LedgerError: the ledger cannot be read.
    """
    if data not in DATA_CHOICES:
        raise ConfigError(f"training data {data!r}: choose one of {', '.join(DATA_CHOICES)}")
    if ledger is None:
        if data == "ledger":
            raise ConfigError("training data 'ledger' needs a ledger (--db), not --no-store")
        return [BundledSource()]
    if data == "bundled":
        return [BundledSource()]
    return pick_sources(
        data, LedgerSource(ledger, levels, now), BundledSource(), min_ledger_examples
    )


def pick_sources(
    data: str,
    live: TrainingSource,
    bundled: TrainingSource,
    min_ledger_examples: int = MIN_LEDGER_EXAMPLES,
) -> list[TrainingSource]:
    """Which of the live verdicts and the bundled recordings to train on (pure; the
    scheduled retrain and the simulator's both decide here):

    - ``auto``: the live verdicts, plus the bundled recordings while there are fewer than
      ``min_ledger_examples`` judged examples (a fresh install: the bundled alone);
    - ``ledger``: the live verdicts alone; ``bundled``: the recordings alone; ``both``: both.

    ``live`` must have ``judged()``: its examples that carry a verdict.

    Raises:
        ConfigError: an unknown choice, or ``ledger`` with no judged example.
    """
    if data not in DATA_CHOICES:
        raise ConfigError(f"training data {data!r}: choose one of {', '.join(DATA_CHOICES)}")
    if data == "bundled":
        return [bundled]
    judged = live.judged()  # type: ignore[attr-defined]
    if data == "ledger":
        if judged == 0:
            raise ConfigError(
                "training data 'ledger': the ledger has no judged requests with kept prompts "
                "(enable the quality loop: judge_sample_share > 0, then `sprout judge run`)"
            )
        return [live]
    if judged >= min_ledger_examples and data == "auto":
        return [live]
    has_any = bool(list(live.examples()))  # unjudged ones still train the cost model
    return [live, bundled] if has_any else [bundled]


@dataclass(frozen=True)
class TrainingSet:
    """Examples as arrays, with the held-out mask.

    Attributes:
        levels: the levels (columns), index 0 the baseline.
        prompts: the prompt texts.
        preferred: (n,) index of the preferred level, -1 if unjudged.
        energy_kwh, time_s: (n, levels) measured cost, NaN where not measured.
        groups: (n,) the stratum of each example.
        weights: (n,) the examples' weights.
        held_out: (n,) the judged examples held out for evaluation.
        sources: names of the sources the examples came from.
    """

    levels: tuple[str, ...]
    prompts: tuple[str, ...]
    preferred: np.ndarray
    energy_kwh: np.ndarray
    time_s: np.ndarray
    groups: tuple[str, ...]
    weights: np.ndarray
    held_out: np.ndarray
    sources: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Number of examples."""
        return len(self.prompts)


def held_out_mask(
    groups: Sequence[str], judged: np.ndarray, seed: int, fraction: float
) -> np.ndarray:
    """Which judged examples are held out: ``fraction`` of each group's, chosen by ``seed``.

    The same draw as :meth:`sprout.sim.workload.PromptSplit.evaluated` (groups in order of
    first appearance, one generator across them), so the bundled data split alike here and
    in the simulator.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"held-out fraction must lie in (0, 1], got {fraction!r}")
    judged = np.asarray(judged, dtype=bool)
    if fraction >= 1.0:
        return judged.copy()
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(groups), dtype=bool)
    order: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        order.setdefault(g, []).append(i)
    for members in order.values():
        rows = np.array([i for i in members if judged[i]], dtype=np.int64)
        n_held = max(1, round(fraction * len(rows)))
        if rows.size:
            mask[rng.permutation(rows)[:n_held]] = True
    return mask


def training_set(
    examples: Iterable[TrainingExample],
    levels: Sequence[str],
    *,
    split_seed: int = DEFAULT_SPLIT_SEED,
    held_out_fraction: float = DEFAULT_HELD_OUT,
    sources: Sequence[str] = (),
) -> TrainingSet:
    """Arrays of ``examples`` over ``levels`` with a held-out split.

    Raises:
        ConfigError: no examples.
    """
    prompts: list[str] = []
    preferred: list[int] = []
    energy: list[list[float]] = []
    time: list[list[float]] = []
    groups: list[str] = []
    weights: list[float] = []
    index = {name: i for i, name in enumerate(levels)}
    for ex in examples:
        prompts.append(ex.prompt)
        preferred.append(index.get(ex.preferred_level, -1) if ex.preferred_level else -1)
        energy.append([float(ex.energy_kwh.get(n, math.nan)) for n in levels])
        time.append([float(ex.time_s.get(n, math.nan)) for n in levels])
        groups.append(ex.group)
        weights.append(float(ex.weight))
    if not prompts:
        raise ConfigError("retrain: no training examples")
    pref = np.array(preferred, dtype=np.int64)
    return TrainingSet(
        levels=tuple(levels),
        prompts=tuple(prompts),
        preferred=pref,
        energy_kwh=np.array(energy, dtype=float),
        time_s=np.array(time, dtype=float),
        groups=tuple(groups),
        weights=np.array(weights, dtype=float),
        held_out=held_out_mask(groups, pref >= 0, split_seed, held_out_fraction)
        if held_out_fraction > 0
        else np.zeros(len(prompts), dtype=bool),
        sources=tuple(sources),
    )


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
    from sprout.accounting import embodied_rate_g_per_s

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
    from sprout.data import LEVELS

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


def policy_from_params(
    params: Mapping[str, Any],
    directives: DirectiveSet,
    xi: float,
    embodied_g_per_s: float,
    **options: Any,
) -> ContextualPolicy:
    """A :class:`ContextualPolicy` from a stored version's params.

    Raises:
        ConfigError: the params are malformed.
        OptimizerError: the model's levels do not fit ``directives``.
    """
    try:
        model = ContextualModel.from_params(params["model"])
        ref = params.get("reference") or {}
        reference = (
            LevelPrediction(
                np.asarray(ref["pref"], dtype=float),
                np.asarray(ref["energy_kwh"], dtype=float),
                np.asarray(ref["time_s"], dtype=float),
            )
            if ref
            else None
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"contextual policy version: malformed params ({e!r})") from e
    k = len(model.levels)
    if reference is not None and not (
        reference.pref.ndim == 2
        and reference.pref.shape[1] == k
        and reference.energy_kwh.shape == reference.pref.shape == reference.time_s.shape
    ):
        raise ConfigError("contextual policy version: reference predictions are malformed")
    return ContextualPolicy(model, directives, xi, embodied_g_per_s, reference=reference, **options)


def load_policy(
    ledger: Ledger,
    directives: DirectiveSet,
    xi: float,
    embodied_g_per_s: float,
    **options: Any,
) -> tuple[ContextualPolicy, int] | None:
    """The newest stored contextual policy and its version id, or None if none is stored.

    The ledger verifies the version's SHA-256 before returning it.

    Raises:
        LedgerError: the ledger cannot be read or the version was altered.
        ConfigError, OptimizerError: the version cannot serve these directives.
    """
    record = ledger.latest_policy_version(CONTEXTUAL_KIND)
    if record is None:
        return None
    policy = policy_from_params(record.params, directives, xi, embodied_g_per_s, **options)
    return policy, record.id


class PolicyWatcher:
    """Swaps the newest stored contextual policy into a running controller.

    Every ``interval_s`` a daemon thread reads the newest contextual policy version; when
    its id differs from the one being served, the version is loaded (its hash verified by
    the ledger) and handed to ``swap(policy, version_id)``. Requests never wait on it. A
    failed read or load is logged and the current policy kept; the same broken version is
    not retried until a newer one appears.

    Args:
        ledger: the ledger to watch.
        load: builds ``(policy, id)`` of the newest version, or None (see :func:`load_policy`).
        swap: installs a policy (e.g. :meth:`Controller.swap_policy`).
        current: the version id being served (None: none).
        interval_s: seconds between checks.
    """

    def __init__(
        self,
        ledger: Ledger,
        load: Callable[[], tuple[Any, int] | None],
        swap: Callable[[Any, int], None],
        *,
        current: int | None = None,
        interval_s: float = 300.0,
    ) -> None:
        if not interval_s > 0:
            raise ConfigError(f"policy refresh interval must be > 0, got {interval_s!r}")
        self.ledger = ledger
        self._load = load
        self._swap = swap
        self.current = current
        self.interval_s = interval_s
        self._failed: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Look for a newer version now; True if one was swapped in."""
        try:
            record = self.ledger.latest_policy_version(CONTEXTUAL_KIND)
        except SproutError as e:
            log.warning("policy refresh: cannot read the newest policy version: %s", e)
            return False
        if record is None or record.id in (self.current, self._failed):
            return False
        try:
            loaded = self._load()
        except SproutError as e:
            self._failed = record.id
            log.error(
                "policy refresh: version %s cannot be used, keeping version %s: %s",
                record.id,
                self.current,
                e,
            )
            return False
        if loaded is None:
            return False
        policy, version = loaded
        self._swap(policy, version)
        log.info("policy refresh: now serving contextual policy version %s", version)
        self.current = version
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # never let the thread die: the next check may succeed
                log.exception("policy refresh failed")

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="sprout-policy-watcher", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waits for a check in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
            self._thread = None


# --- the scheduled job ---------------------------------------------------------------------

_CRON_FIELDS = ("minute", "hour", "day", "month", "day_of_week")


def parse_cron(expression: str) -> dict[str, str]:
    """A five-field crontab expression (``minute hour day month day_of_week``, UTC) as
    APScheduler ``CronTrigger`` fields.

    Raises:
        ConfigError: not five fields, or a field APScheduler rejects.
    """
    parts = expression.split()
    if len(parts) != len(_CRON_FIELDS):
        raise ConfigError(
            f"retrain cron {expression!r}: expected 5 fields (minute hour day month "
            "day_of_week), e.g. '0 3 * * *'"
        )
    fields = dict(zip(_CRON_FIELDS, parts, strict=True))
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger(**fields)
    except ValueError as e:
        raise ConfigError(f"retrain cron {expression!r}: {e}") from e
    return fields


def schedule_retrain(
    scheduler: BaseScheduler,
    job: Callable[[], Any],
    cron: str,
    *,
    job_id: str = "sprout-retrain",
) -> Job:
    """Run ``job`` (e.g. a :func:`retrain` call) on ``cron`` (UTC) in ``scheduler``.

    One run at a time; missed runs are coalesced (see :mod:`sprout.scheduler`).
    """
    from sprout.scheduler import add_cron_job

    fields: dict[str, Any] = dict(parse_cron(cron))
    return add_cron_job(
        scheduler, job, job_id=job_id, name="retrain the contextual policy", **fields
    )
