"""The per-request policy in the simulator, evaluated honestly.

``contextual`` trains :class:`~sprout.policy.contextual.ContextualModel` only on the run's
training split (:meth:`PromptSplit.training`: judged prompts that are never evaluated; the
cost regressions may also use unjudged prompts, which are never evaluated either) and is
evaluated only on the held-out split, whose verdicts it never sees. Each hour it decides
the hour's prompts with the live policy object (:class:`ContextualPolicy`): the floor's
multiplier is fitted on the predictions of the previous hour's prompts, as the controller
fits it on the requests it has served, never on the hour it is deciding.

Like the live policy, it learns from its quality loop (:mod:`sprout.sim.loop`, the live
loop's functions): a ``--judge-share`` of the requests it serves is judged when the judge
job's rule says so; the verdicts set the quality guard's share of baseline requests and
revise the safety margin, and the scheduled retrain refits the model on them (beside the
training split) every ``--retrain-every`` hours. The model sees held-out verdicts only
through the loop, only of requests already served, and quality is then graded on prompts the
loop never samples.

``contextual_lp`` is the same policy held to Sprout's floor exactly (anchored as the LP,
no safety margin, no feedback): the like-for-like comparison with ``sprout`` and
``oracle_request``.

Its verdicts are charged (:meth:`Method.record_judging`): each judged request's answers
under the other directives and one judge call, at the judge run's hour. The training
split's bundled verdicts are not charged (a one-off cost before the window). With
``PromptSplit.unseen`` the unseen families' rows are left out of every training input but
the loop's own verdicts.

Training takes seconds, so a trained model and its predictions are kept per process for
each (workload, split, levels, embodied rate): every seed and xi of a run reuse them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from sprout.data import DATASETS, LEVELS, load_workload
from sprout.errors import ConfigError
from sprout.policy.base import DEFAULT_MAX_LOSS
from sprout.policy.contextual import ContextualModel, ContextualPolicy, LevelPrediction, fit_model
from sprout.sim.loop import ExampleSource, SimQualityLoop, retrain_policy
from sprout.sim.methods.base import (
    Assignment,
    HourInputs,
    Method,
    SimSetup,
    verdict_code,
)
from sprout.sim.workload import PromptSplit, WorkloadArrays
from sprout.training.sources import TrainingExample
from sprout.training.versions import prior_quality

#: Training prompts whose predictions seed the multiplier before the first hour.
REFERENCE_PROMPTS = 1000


@functools.lru_cache(maxsize=2)
def _texts(ids: tuple[str, ...]) -> tuple[str, ...]:
    """The prompt text of each workload row (bundled prompts, by id)."""

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
    workload: WorkloadArrays,
    split: PromptSplit,
    levels: tuple[str, ...],
    embodied: float,
    max_loss: float | None = DEFAULT_MAX_LOSS,
) -> _Trained:
    """(model, fit report, predictions for every evaluated row, reference predictions); the
    margin estimated under the policy's bound ``max_loss``."""
    key = (id(workload), split, levels, embodied, max_loss)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is workload:
        return hit[1]
    trained = _train(workload, split, levels, embodied, max_loss)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (workload, trained)
    return trained


def _train(
    workload: WorkloadArrays,
    split: PromptSplit,
    levels: tuple[str, ...],
    embodied: float,
    max_loss: float | None,
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
        max_loss=max_loss,
    )
    rng = np.random.default_rng(split.seed)
    judged_train = np.flatnonzero(training)
    ref_rows = rng.permutation(judged_train)[:REFERENCE_PROMPTS]
    reference = model.predict([texts[r] for r in ref_rows])
    return model, report.as_dict(), _predict_evaluated(model, workload, split), reference


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
        """Train (or reuse) the model on the training split; build the live policy and,
        with the margin learnt, the quality loop."""
        levels = self.levels(setup)
        model, self.fit_report, self._pred, reference = _trained(
            setup.workload, setup.split, levels, setup.embodied_g_per_s, setup.policy_max_loss
        )
        self._setup = setup
        self._levels = levels
        self._window = int(setup.samples.judged_rows.shape[1])
        self.policy = self._policy(model, reference)
        self.version = 0
        self._guard_rng = np.random.default_rng(np.random.SeedSequence([setup.split.seed, 0x6A]))
        self.loop: SimQualityLoop | None = None
        if self.use_margin and setup.loop.judge_share > 0:
            from dataclasses import replace

            floor = setup.loop.guard_floor
            if floor is None:
                floor = 1.0 - setup.xi
            config = replace(setup.loop, judge=replace(setup.loop.judge, floor=floor))
            self.loop = SimQualityLoop(
                config,
                levels,
                prior_quality(setup.directives),
                setup.loop_pool
                if setup.loop_pool is not None
                else np.ones(setup.workload.rows, dtype=bool),
                _preferred_levels(setup.workload.verdict, levels),
                setup.seed,
            )

    def _policy(
        self, model: ContextualModel, reference: LevelPrediction | None
    ) -> ContextualPolicy:
        setup = self._setup
        return ContextualPolicy(
            model,
            setup.directives,
            setup.xi,
            setup.embodied_g_per_s,
            anchor=self.anchor,
            margin=None if self.use_margin else 0.0,
            learn_margin=self.use_margin,
            reference=reference,
            window=self._window,
            max_loss=setup.policy_max_loss,
        )

    def decide(self, hour: HourInputs) -> Assignment:
        """Run the loop's jobs due at this hour, then decide the hour's prompts against the
        multiplier fitted on earlier ones (the guard's share served at the baseline)."""
        if self.loop is not None:
            self._loop_jobs(hour)
        rows = hour.judged_rows
        p = self._pred
        prediction = LevelPrediction(p.pref[rows], p.energy_kwh[rows], p.time_s[rows])
        if np.isnan(prediction.pref).any():
            raise ConfigError("contextual: asked to decide prompts outside the held-out split")
        level = np.zeros(rows.size, dtype=np.int64)
        forced = np.zeros(rows.size, dtype=bool)
        if self.loop is not None:
            forced = self.loop.guard_forced(rows.size, self._guard_rng)
        own = ~forced
        if own.any():
            mine = LevelPrediction(
                prediction.pref[own], prediction.energy_kwh[own], prediction.time_s[own]
            )
            level[own] = self.policy.decide_batch(mine, hour.carbon)
        if self.loop is not None:
            self.loop.offer(hour.hour, rows, level, forced, self.version)
        return Assignment(level)

    def _loop_jobs(self, hour: HourInputs) -> None:
        """The scheduled retrain (if due), then the judge job's tick at this hour."""
        loop = self.loop
        assert loop is not None
        setup = self._setup
        w = setup.workload
        texts = _texts(w.ids)
        cols = [w.key_index(n) for n in self._levels]
        if loop.retrain_due(hour.hour):
            live = ExampleSource(
                "ledger",
                loop.ledger_examples(hour.hour, texts, w.energy_kwh[:, cols], w.time_s[:, cols]),
            )
            bundled = ExampleSource("bundled", _bundled_examples(w, setup.split, self._levels))

            def build(params: dict[str, Any]) -> ContextualPolicy:
                from sprout.training.serving import policy_from_params

                return policy_from_params(
                    params,
                    setup.directives,
                    setup.xi,
                    setup.embodied_g_per_s,
                    anchor=self.anchor,
                    window=self._window,
                    max_loss=setup.policy_max_loss,
                )

            previous = self.policy
            self.policy = retrain_policy(
                loop.config,
                live,
                bundled,
                self._levels,
                build,
                setup.embodied_g_per_s,
                setup.policy_max_loss,
            )
            # As the controller swaps a retrained version in: it carries on the pacing.
            self.policy.take_over(previous)
            self.version += 1
            self._pred = _predict_evaluated(self.policy.model, w, setup.split)
        judged = loop.tick(hour.hour, hour.carbon.ci_g_per_kwh, hour.carbon.ci_mean)
        if judged is None:
            return
        if judged.size:
            self.record_judging(
                hour.hour, judged[:, 0], served_level=judged[:, 1], share_of_traffic=True
            )
        loop.estimate(hour.hour)
        verdicts, rows = loop.own_verdicts(hour.hour, self.version, texts)
        p = self._pred
        by_text = {texts[int(r)]: int(r) for r in rows}

        def predict(prompts: Sequence[str]) -> LevelPrediction:
            idx = np.array([by_text[t] for t in prompts], dtype=np.int64)
            return LevelPrediction(p.pref[idx], p.energy_kwh[idx], p.time_s[idx])

        self.policy.learn_verdicts(verdicts, replace=True, predict=predict)


def _bundled_examples(
    workload: WorkloadArrays, split: PromptSplit, levels: tuple[str, ...]
) -> list[Any]:
    """The training split as the bundled source's examples (never an unseen family's row)."""
    return list(_bundled_cached(workload, split, levels))


_BUNDLED: dict[tuple[Any, ...], tuple[WorkloadArrays, tuple[Any, ...]]] = {}


def _bundled_cached(
    workload: WorkloadArrays, split: PromptSplit, levels: tuple[str, ...]
) -> tuple[Any, ...]:

    key = (id(workload), split, levels)
    hit = _BUNDLED.get(key)
    if hit is not None and hit[0] is workload:
        return hit[1]
    texts = _texts(workload.ids)
    evaluated = split.evaluated(workload)
    training = split.training(workload)
    rows = np.flatnonzero(~evaluated & split.seen(workload))
    cols = [workload.key_index(n) for n in levels]
    preferred = _preferred_levels(workload.verdict, levels)
    groups = np.repeat(np.array(workload.datasets), workload.count)
    out = tuple(
        TrainingExample(
            prompt=texts[r],
            preferred_level=levels[preferred[r]] if training[r] and preferred[r] >= 0 else None,
            energy_kwh=dict(zip(levels, workload.energy_kwh[r, cols].tolist(), strict=True)),
            time_s=dict(zip(levels, workload.time_s[r, cols].tolist(), strict=True)),
            group=str(groups[r]),
            source="bundled",
        )
        for r in rows
    )
    if len(_BUNDLED) >= _CACHE_SIZE:
        _BUNDLED.pop(next(iter(_BUNDLED)))
    _BUNDLED[key] = (workload, out)
    return out


def _predict_evaluated(
    model: ContextualModel, workload: WorkloadArrays, split: PromptSplit
) -> LevelPrediction:
    """``model``'s predictions for every evaluated row (NaN elsewhere)."""
    texts = _texts(workload.ids)
    eval_rows = np.flatnonzero(split.evaluated(workload))
    predicted = model.predict([texts[r] for r in eval_rows])
    n, k = workload.rows, len(model.levels)
    full = [np.full((n, k), np.nan) for _ in range(3)]
    for arr, part in zip(
        full, (predicted.pref, predicted.energy_kwh, predicted.time_s), strict=True
    ):
        arr[eval_rows] = part
    return LevelPrediction(*full)


class ContextualLP(Contextual):
    """The per-request policy held to Sprout's floor exactly (no margin)."""

    name = "contextual_lp"
    summary = "per-request directive from the prompt text under Sprout's exact floor"
    note = ""
    anchor = "lp"
    use_margin = False
