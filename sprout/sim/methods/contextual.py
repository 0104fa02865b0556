"""The per-request policy in the simulator, evaluated honestly.

``contextual`` trains :class:`~sprout.policy.contextual.ContextualModel` only on the run's
training split (:meth:`PromptSplit.training`: judged prompts that are never evaluated; the
cost regressions may also use unjudged prompts, which are never evaluated either) and is
evaluated only on the held-out split, whose verdicts it never sees. Each hour it decides
the hour's prompts with the live policy object (:class:`ContextualPolicy`): the floor's
multiplier is fitted on the predictions of the previous hour's prompts, as the controller
fits it on the requests it has served, never on the hour it is deciding.

Like the live policy, it learns from the quality loop: a share (:data:`FEEDBACK_SHARE`) of
the requests it serves is judged, and at each run of the offline evaluator (Sprout's timing
rule, the only hours Sprout's own method may refresh its quality estimate) the verdicts of
those served since the last run revise its safety margin
(:meth:`ContextualPolicy.record_verdicts`). Only that scalar learns from held-out verdicts,
only from hours already served; the model never sees them.

``contextual_lp`` is the same policy held to Sprout's floor exactly (anchored as the LP,
no safety margin, no feedback): the like-for-like comparison with ``sprout`` and
``oracle_request``.

Its verdicts are charged (:meth:`Method.record_judging`): each judged request's answers
under the other directives and one judge call, at the evaluator run's hour. The training
split's bundled verdicts are not charged (a one-off cost before the window). With
``PromptSplit.unseen`` the unseen families' rows are left out of every training input.

Training takes seconds, so a trained model and its predictions are kept per process for
each (workload, split, levels, embodied rate): every seed and xi of a run reuse them.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np

from sprout.data import LEVELS
from sprout.errors import ConfigError
from sprout.policy.contextual import ContextualModel, ContextualPolicy, LevelPrediction, fit_model
from sprout.sim.methods.base import (
    Assignment,
    HourInputs,
    Method,
    SimSetup,
    register_method,
    verdict_code,
)
from sprout.sim.workload import PromptSplit, WorkloadArrays

#: Training prompts whose predictions seed the multiplier before the first hour.
REFERENCE_PROMPTS = 1000
#: Share of served requests the quality loop judges (every 1/share-th of an hour's).
FEEDBACK_SHARE = 0.1


@functools.lru_cache(maxsize=2)
def _texts(ids: tuple[str, ...]) -> tuple[str, ...]:
    """The prompt text of each workload row (bundled prompts, by id)."""
    from sprout.data import DATASETS, load_workload

    by_id = {r.id: r.instruction for r in load_workload(DATASETS)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ConfigError(
            f"contextual: no prompt text for {len(missing)} workload row(s) (e.g. "
            f"{missing[0]!r}); the per-request policy needs the bundled prompts"
        )
    return tuple(by_id[i] for i in ids)


def _preferred_levels(codes: np.ndarray, levels: tuple[str, ...]) -> np.ndarray:
    """Verdict codes (which of L0, L1, L2 the judge preferred) as indices into ``levels``;
    -1 for no verdict, a tie, or a level this run does not serve."""
    code_to_level = np.full(len(LEVELS) + 1, -1, dtype=np.int64)  # the last: anything else
    for i, name in enumerate(levels):
        code = verdict_code(name)
        if code is not None:
            code_to_level[code] = i
    codes = np.asarray(codes, dtype=np.int64)
    known = (codes >= 0) & (codes < len(LEVELS))
    return code_to_level[np.where(known, codes, len(LEVELS))]


_Trained = tuple[ContextualModel, dict[str, Any], LevelPrediction, LevelPrediction]
# Keyed by the workload's identity (its arrays are not hashable); the entry holds the
# workload itself, so that its id cannot be reused while the entry lives.
_CACHE: dict[tuple[Any, ...], tuple[WorkloadArrays, _Trained]] = {}
_CACHE_SIZE = 4


def _trained(
    workload: WorkloadArrays, split: PromptSplit, levels: tuple[str, ...], embodied: float
) -> _Trained:
    """(model, fit report, predictions for every evaluated row, reference predictions)."""
    key = (id(workload), split, levels, embodied)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is workload:
        return hit[1]
    trained = _train(workload, split, levels, embodied)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (workload, trained)
    return trained


def _train(
    workload: WorkloadArrays, split: PromptSplit, levels: tuple[str, ...], embodied: float
) -> _Trained:
    evaluated = split.evaluated(workload)
    training = split.training(workload)
    if not training.any():
        raise ConfigError(
            "contextual: the split leaves no training prompts; give a held-out fraction "
            "below 1 (sprout simulate --held-out)"
        )
    texts = _texts(workload.ids)
    # Judged training prompts and unjudged ones, never a row of an unseen family: no text,
    # vocabulary, verdict or cost regression of theirs reaches the model.
    train_rows = np.flatnonzero(~evaluated & split.seen(workload))
    cols = [workload.key_index(n) for n in levels]
    preferred = np.where(
        training[train_rows], _preferred_levels(workload.verdict[train_rows], levels), -1
    )
    model, report = fit_model(
        [texts[r] for r in train_rows],
        preferred,
        workload.energy_kwh[np.ix_(train_rows, cols)],
        workload.time_s[np.ix_(train_rows, cols)],
        levels,
        embodied_g_per_s=embodied,
        info={
            "split_seed": split.seed,
            "held_out_fraction": split.held_out_fraction,
            "unseen": list(split.unseen),
            "training_rows": int(train_rows.size),
        },
    )
    eval_rows = np.flatnonzero(evaluated)
    predicted = model.predict([texts[r] for r in eval_rows])
    n, k = workload.rows, len(levels)
    full = [np.full((n, k), np.nan) for _ in range(3)]
    parts = (predicted.pref, predicted.energy_kwh, predicted.time_s)
    for arr, part in zip(full, parts, strict=True):
        arr[eval_rows] = part
    rng = np.random.default_rng(split.seed)
    judged_train = np.flatnonzero(training)
    ref_rows = rng.permutation(judged_train)[:REFERENCE_PROMPTS]
    reference = model.predict([texts[r] for r in ref_rows])
    return model, report.as_dict(), LevelPrediction(*full), reference


@register_method
class Contextual(Method):
    """Per-request directives from the prompt text; no quality lost on average."""

    name = "contextual"
    summary = (
        "per-request directive from the prompt text (trained on the training split, "
        "evaluated on the held-out split)"
    )
    note = (
        "contextual: trained on the training split only; every method is evaluated on the "
        "held-out prompts"
    )
    #: Trained on verdicts: ``sprout simulate`` then holds out prompts for every method.
    trains_on_verdicts: ClassVar[bool] = True
    #: The floor's anchor (see :func:`sprout.policy.assign.floor_fraction`).
    anchor: ClassVar[str] = "mean"
    #: Use the model's safety margin, revised by the sampled verdicts (False: none).
    use_margin: ClassVar[bool] = True

    def start(self, setup: SimSetup) -> None:
        """Train (or reuse) the model on the training split; build the live policy."""
        levels = self.levels(setup)
        model, self.fit_report, self._pred, reference = _trained(
            setup.workload, setup.split, levels, setup.embodied_g_per_s
        )
        self.policy = ContextualPolicy(
            model,
            setup.directives,
            setup.xi,
            setup.embodied_g_per_s,
            anchor=self.anchor,
            margin=None if self.use_margin else 0.0,
            learn_margin=self.use_margin,
            reference=reference,
            window=int(setup.samples.judged_rows.shape[1]),
        )
        self._verdict = setup.workload.verdict
        self._levels = levels
        self._stride = max(1, round(1.0 / FEEDBACK_SHARE))
        self._judged: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, float]] = []

    def decide(self, hour: HourInputs) -> Assignment:
        """Decide the hour's prompts against the multiplier fitted on earlier ones."""
        rows = hour.judged_rows
        p = self._pred
        prediction = LevelPrediction(p.pref[rows], p.energy_kwh[rows], p.time_s[rows])
        if np.isnan(prediction.pref).any():
            raise ConfigError("contextual: asked to decide prompts outside the held-out split")
        level = self.policy.choose(prediction, hour.carbon)
        self.policy.observe(prediction, level)
        if self.use_margin:
            # Quality is scored per hour: each verdict is read against its hour's expected
            # baseline preference and normalized preference.
            q0 = float(prediction.pref[:, 0].mean())
            ratio = float(prediction.pref[np.arange(level.size), level].mean()) / max(q0, 1e-9)
            sample = slice(None, None, self._stride)
            self._judged.append((prediction.pref[sample], level[sample], rows[sample], q0, ratio))
            if hour.evaluator_runs:
                self._feedback(hour.hour)
        return Assignment(level)

    def _feedback(self, hour: int) -> None:
        """The evaluator's run: the verdicts of the requests sampled since the last one
        (their other directives' answers and the judge's calls are charged to ``hour``)."""
        pref = np.concatenate([j[0] for j in self._judged])
        served = np.concatenate([j[1] for j in self._judged])
        rows = np.concatenate([j[2] for j in self._judged])
        q0 = np.concatenate([np.full(j[1].size, j[3]) for j in self._judged])
        ratio = np.concatenate([np.full(j[1].size, j[4]) for j in self._judged])
        self.record_judging(hour, rows, served_level=served, share_of_traffic=True)
        preferred = _preferred_levels(self._verdict[rows], self._levels)
        self.policy.record_verdicts(pref, served, preferred, base_mean=q0, ratio=ratio)
        self._judged.clear()


@register_method
class ContextualLP(Contextual):
    """The per-request policy held to Sprout's floor exactly (no margin)."""

    name = "contextual_lp"
    summary = "per-request directive from the prompt text under Sprout's exact floor"
    note = ""
    anchor = "lp"
    use_margin = False
