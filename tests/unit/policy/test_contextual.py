"""The per-request model and policy: features, fitting, JSON round trip, decisions."""

from __future__ import annotations

import contextlib
import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest

from sprout.data import default_policy_path
from sprout.directives import DirectiveSet
from sprout.errors import ConfigError, OptimizerError
from sprout.policy.assign import bounded_cost, choose, expected_carbon_g, finite_spread, multiplier
from sprout.policy.base import CarbonContext
from sprout.policy.contextual import (
    DENSE_FEATURES,
    PARAMS_FORMAT,
    ContextualModel,
    ContextualPolicy,
    FeatureConfig,
    LevelPrediction,
    TextFeatures,
    estimate_margin,
    fit_calibration,
    fit_model,
    prompt_terms,
)

LEVELS = ("L0", "L1", "L2")
FACTS = ["capital of France", "tallest mountain", "author of Hamlet", "boiling point of water"]
TOPICS = ["the history of Rome", "climate change", "a poem about the sea", "sorting algorithms"]


def synthetic(n: int = 240, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Factoid questions the judge prefers brief (L2), open tasks it prefers full (L0);
    open tasks cost more energy at L0."""
    rng = np.random.default_rng(seed)
    texts, pref, energy, time = [], [], [], []
    for i in range(n):
        if i % 2:
            texts.append(f"What is the {FACTS[i % 4]}? (question {i})")
            pref.append(2 if rng.random() < 0.8 else 0)
            e0 = 2e-4
        else:
            texts.append(f"Write a detailed essay about {TOPICS[i % 4]}, number {i}.")
            pref.append(0 if rng.random() < 0.8 else 1)
            e0 = 6e-4
        e = np.array([e0, e0 / 3, e0 / 5]) * rng.lognormal(0, 0.1, 3)
        energy.append(e)
        time.append(e * 15_000)
    return texts, np.array(pref), np.array(energy), np.array(time)


@pytest.fixture(scope="module")
def fitted() -> tuple[ContextualModel, object]:
    texts, pref, energy, time = synthetic()
    cfg = FeatureConfig(max_features=500, cv_folds=3)
    return fit_model(texts, pref, energy, time, LEVELS, config=cfg, embodied_g_per_s=1e-4)


def test_terms_are_lowercased_word_ngrams_capped() -> None:
    assert prompt_terms("Who WROTE Hamlet?", 10, 2) == [
        "who",
        "wrote",
        "hamlet",
        "who wrote",
        "wrote hamlet",
    ]
    assert len(prompt_terms("a bb cc dd ee", 2, 1)) == 2  # one-letter words are not tokens


def test_vector_matches_matrix_rows() -> None:
    texts = ["What is the capital of France?", "Write an essay.\n(A) x\n(B) y", ""]
    feats = TextFeatures.fit(texts, FeatureConfig(min_df=1))
    dense = feats.matrix(texts).toarray()
    for i, text in enumerate(texts):
        idx, val = feats.vector(text)
        row = np.zeros(feats.n_features)
        row[idx] = val
        np.testing.assert_allclose(row, dense[i])
    assert feats.n_features == feats.n_terms + len(DENSE_FEATURES)
    idx, val = feats.vector("What is the capital of France?")
    tfidf = val[idx < feats.n_terms]
    assert np.isclose(np.linalg.norm(tfidf), 1.0)  # the text part is L2-normalised


def test_terms_given_by_the_caller_give_the_same_features() -> None:
    texts = ["What is the capital of France?", "Write an essay.\n(A) x\n(B) y", "France?"]
    cfg = FeatureConfig(min_df=1)
    terms = [prompt_terms(t, cfg.max_tokens, cfg.ngram_max) for t in texts]
    feats = TextFeatures.fit(texts, cfg, terms)
    assert feats.vocabulary == TextFeatures.fit(texts, cfg).vocabulary
    np.testing.assert_array_equal(
        feats.matrix(texts, terms).toarray(), feats.matrix(texts).toarray()
    )
    with pytest.raises(ValueError):
        feats.matrix(texts, terms[:2])  # one term list per prompt


def test_fits_run_on_the_configured_blas_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from sprout.policy.contextual import fit as fit_module

    seen: list[object] = []

    def limits(*, limits: object, user_api: str) -> contextlib.AbstractContextManager[None]:
        seen.append((limits, user_api))
        return contextlib.nullcontext()

    monkeypatch.setattr("threadpoolctl.threadpool_limits", limits)
    texts, pref, energy, time = synthetic()
    fit_model(texts, pref, energy, time, LEVELS, config=FeatureConfig(max_features=200, cv_folds=3))
    assert seen == [(fit_module.FIT_BLAS_THREADS, "blas")] and fit_module.FIT_BLAS_THREADS == 1


def test_model_learns_which_prompts_want_brevity(fitted: tuple) -> None:
    model, report = fitted
    pred = model.predict(
        [
            "What is the capital of France? (question 901)",
            "Write a detailed essay about climate change, number 902.",
        ]
    )
    assert pred.pref[0].argmax() == 2 and pred.pref[1].argmax() == 0
    np.testing.assert_allclose(pred.pref.sum(axis=1), 1.0)
    assert pred.energy_kwh[1, 0] > pred.energy_kwh[0, 0]  # essays cost more at L0
    assert np.all(pred.energy_kwh[:, 0] > pred.energy_kwh[:, 2])
    assert report.oof_log_loss < report.prior_log_loss
    assert report.margin >= 0 and report.n_judged == 240


def test_predict_one_equals_batch(fitted: tuple) -> None:
    model, _ = fitted
    texts = ["What is the boiling point of water?", "Write a poem about the sea"]
    batch = model.predict(texts)
    for i, text in enumerate(texts):
        one = model.predict_one(text)
        np.testing.assert_allclose(one.pref, batch.pref[i])
        np.testing.assert_allclose(one.energy_kwh, batch.energy_kwh[i])


def test_params_round_trip_through_json(fitted: tuple) -> None:
    model, _ = fitted
    raw = json.loads(json.dumps(model.to_params()))  # plain JSON data, no pickle
    again = ContextualModel.from_params(raw)
    texts = ["What is the tallest mountain?", "Write a detailed essay about Rome"]
    a, b = model.predict(texts), again.predict(texts)
    np.testing.assert_allclose(a.pref, b.pref, rtol=1e-5)
    np.testing.assert_allclose(a.energy_kwh, b.energy_kwh, rtol=1e-5)
    assert again.margin == pytest.approx(model.margin)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.update(format=PARAMS_FORMAT + 1),
        lambda p: p.update(pref_weights=p["pref_weights"][:-1]),
        lambda p: p.update(cost_bias=[1.0]),
        lambda p: p["features"].update(terms=p["features"]["terms"][:-1]),
        lambda p: p["features"].update(dense_features=["log_chars"]),
        lambda p: p["calibration"].update(temperature=-1.0),
        lambda p: p.pop("levels"),
    ],
)
def test_malformed_params_are_refused(fitted: tuple, mutate: object) -> None:
    model, _ = fitted
    raw = json.loads(json.dumps(model.to_params()))
    mutate(raw)  # type: ignore[operator]
    with pytest.raises(ConfigError, match="contextual model"):
        ContextualModel.from_params(raw)


def test_fit_refuses_too_few_verdicts() -> None:
    texts, pref, energy, time = synthetic(20)
    pref[:] = -1
    pref[:4] = 0
    with pytest.raises(ConfigError, match="judged prompts"):
        fit_model(texts, pref, energy, time, LEVELS, config=FeatureConfig(cv_folds=3))


def test_calibration_recovers_a_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4000, 3))
    p = np.exp(logits / 2.0)  # the truth is twice as soft as the logits say
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    cal = fit_calibration(logits, y)
    assert cal.temperature == pytest.approx(2.0, rel=0.15)
    assert cal.offset[0] == 0.0


def _policy(model: ContextualModel, **kw: object) -> ContextualPolicy:
    directives = DirectiveSet.load(default_policy_path())
    return ContextualPolicy(model, directives, 0.1, 1e-4, **kw)  # type: ignore[arg-type]


CTX = CarbonContext(ci_g_per_kwh=300.0, ci_min=100.0, ci_max=400.0, ci_mean=250.0)


def test_policy_decides_per_prompt(fitted: tuple) -> None:
    model, _ = fitted
    texts, *_ = synthetic(200, seed=1)
    policy = _policy(model, reference=model.predict(texts), margin=0.0)
    rng = random.Random(0)
    brief = policy.decide("What is the author of Hamlet? (question 901)", CTX, rng)
    full = policy.decide("Write a detailed essay about climate change, number 902.", CTX, rng)
    assert brief.reason == full.reason == "contextual"
    assert brief.directive.name in ("L1", "L2")
    assert full.directive.name == "L0"


def test_policy_without_history_serves_the_likeliest_preferred(fitted: tuple) -> None:
    model, _ = fitted
    policy = _policy(model)
    d = policy.decide(
        "Write a detailed essay about the history of Rome, number 9.", CTX, random.Random(0)
    )
    assert d.directive.name == "L0"
    assert policy.multiplier(CTX) != float("inf")  # one request seen: now it has a scale


def test_policy_multiplier_is_refit_per_context_not_per_request(fitted: tuple) -> None:
    model, _ = fitted
    texts, *_ = synthetic(100, seed=2)
    policy = _policy(model, reference=model.predict(texts), refit_every=10_000)
    lam = policy.multiplier(CTX)
    policy.decide("What is the capital of France?", CTX, random.Random(0))
    assert policy.multiplier(CTX) == lam  # cached for the same carbon context
    dirty = CarbonContext(400.0, 100.0, 400.0, 250.0)
    assert policy.multiplier(dirty) != lam or policy.pacer.periods == 1


def test_background_refits_leave_the_request_path_and_agree_with_inline_ones(
    fitted: tuple,
) -> None:
    model, _ = fitted
    texts, *_ = synthetic(300, seed=3)
    ref = model.predict(texts[:100])
    inline = _policy(model, reference=ref)
    background = _policy(model, reference=ref, background=True)
    prompts = texts[100:]
    hours = [CarbonContext(150.0 + 50 * (h % 5), 100.0, 400.0, 250.0) for h in range(8)]
    for h, ctx in enumerate(hours):
        for prompt in prompts[h * 25 : (h + 1) * 25]:
            a = inline.decide(prompt, ctx, random.Random(0))
            b = background.decide(prompt, ctx, random.Random(0))
            if h == 0:
                assert a.directive == b.directive  # the first fit is inline in both
        assert background.wait_refits()
    # The same periods reached the pacer, off the request path, and the multiplier served
    # is the pacer's solution, as an inline refit would give on the same history.
    assert background.pacer.periods == inline.pacer.periods == len(hours) - 1
    assert background._nu0 is not None
    assert background._lam == pytest.approx(
        background.pacer.solve(background._nu0, background.margin) / background._period_q0
    )
    lam = background.multiplier(hours[0])  # a new period: served with the last multiplier
    assert lam == background._lam
    assert background.wait_refits()
    assert background.pacer.periods == len(hours)


def _kind_predictions(n: int, brief: bool, rng: np.random.Generator) -> LevelPrediction:
    alpha = [1.0, 2.0, 5.0] if brief else [5.0, 2.0, 1.0]
    pref = rng.dirichlet(alpha, n)
    e0 = (2e-4 if brief else 6e-4) * rng.lognormal(0, 0.3, n)
    energy = np.stack([e0, e0 / 3, e0 / 5], axis=1)
    return LevelPrediction(pref, energy, energy * 15_000)


def _serve_hour(
    policy: ContextualPolicy, traffic: LevelPrediction, hour: int, rng: np.random.Generator
) -> float:
    """One hour of 200 requests drawn from ``traffic`` (rows 0-499 one kind, 500-999 the
    other; the mix shifts every 10 hours, the intensity cycles over three), decided by
    ``policy``: their expected normalized preference."""
    share = 0.7 if (hour // 10) % 2 else 0.3
    rows = np.where(
        rng.random(200) < share, rng.integers(500, 1000, 200), rng.integers(0, 500, 200)
    )
    ctx = CarbonContext(150.0 + 100 * (hour % 3), 100.0, 400.0, 250.0)
    p = LevelPrediction(traffic.pref[rows], traffic.energy_kwh[rows], traffic.time_s[rows])
    level = policy.decide_batch(p, ctx)
    return float(p.pref[np.arange(200), level].mean() / p.pref[:, 0].mean())


def test_policy_meets_its_floor_on_average(fitted: tuple) -> None:
    """Hour after hour of a changing mix and intensity, the pacer keeps the mean expected
    normalized preference at the floor."""
    model, _ = fitted
    rng = np.random.default_rng(0)
    a, b = _kind_predictions(500, False, rng), _kind_predictions(500, True, rng)
    both = LevelPrediction(
        *(
            np.vstack([x, y])
            for x, y in zip(
                (a.pref, a.energy_kwh, a.time_s), (b.pref, b.energy_kwh, b.time_s), strict=True
            )
        )
    )
    policy = _policy(model, reference=both, margin=0.2, window=200)
    achieved = []
    for hour in range(120):
        achieved.append(_serve_hour(policy, both, hour, rng))
    assert np.mean(achieved[20:]) == pytest.approx(1.2, abs=0.05)  # the floor plus margin
    # One multiplier in grams for every hour: the same prompts get briefer when dirtier.
    batch = LevelPrediction(both.pref[:300], both.energy_kwh[:300], both.time_s[:300])
    rows = np.arange(300)
    mean_cost = expected_carbon_g(batch.energy_kwh, batch.time_s, 250.0, 1e-4)
    lam = multiplier(mean_cost, batch.pref, float(batch.pref[:, 0].mean()))  # q0 at a mean hour
    clean, dirty = (
        choose(expected_carbon_g(batch.energy_kwh, batch.time_s, ci, 1e-4), batch.pref, lam)
        for ci in (120.0, 390.0)
    )
    assert batch.pref[rows, clean].sum() > batch.pref[rows, dirty].sum()
    assert (dirty > clean).sum() > (dirty < clean).sum()  # higher level = briefer


def _daily_versions(
    model: ContextualModel, reference: LevelPrediction, traffic: LevelPrediction, carry: bool
) -> list[float]:
    """Ten days of hourly batches (the mix shifting every 10 hours), a new version of the
    policy each day (``carry``: taking over its predecessor's pacing); each hour's expected
    normalized preference."""
    rng = np.random.default_rng(1)
    policy = _policy(model, reference=reference, margin=0.2, window=200)
    achieved = []
    for hour in range(240):
        if hour and hour % 24 == 0:
            retrained = _policy(model, reference=reference, margin=0.2, window=200)
            if carry:
                retrained.take_over(policy)
            policy = retrained
        achieved.append(_serve_hour(policy, traffic, hour, rng))
    return achieved


def test_a_retrained_version_carries_on_the_pacing(fitted: tuple) -> None:
    """Swapped in daily, versions that take over their predecessor's pacing meet the floor
    over all hours served; fresh ones restart from the reference prompts each day and, with
    a reference unlike the traffic, miss it day after day."""
    model, _ = fitted
    rng = np.random.default_rng(0)
    full, brief = _kind_predictions(500, False, rng), _kind_predictions(500, True, rng)
    traffic = LevelPrediction(
        np.vstack([full.pref, brief.pref]),
        np.vstack([full.energy_kwh, brief.energy_kwh]),
        np.vstack([full.time_s, brief.time_s]),
    )
    carried = _daily_versions(model, full, traffic, carry=True)
    fresh = _daily_versions(model, full, traffic, carry=False)
    assert np.mean(carried) == pytest.approx(1.2, abs=0.04)  # the floor plus margin
    assert np.mean(fresh) > 1.28  # each day re-learns the multiplier: quality over-bought

    # What is carried: the pacer (a copy), nu0, the recent requests and the open period.
    before = _policy(model, reference=full, margin=0.2, window=200)
    for hour in range(5):
        ctx = CarbonContext(150.0 + 50 * hour, 100.0, 400.0, 250.0)
        before.decide_batch(
            LevelPrediction(*(x[:200] for x in (traffic.pref, traffic.energy_kwh, traffic.time_s))),
            ctx,
        )
    after = _policy(model, reference=brief, margin=0.2, window=200)
    after.take_over(before)
    assert after.pacer is not before.pacer
    assert (after.pacer.periods, after.pacer.deficit) == (4, before.pacer.deficit)
    assert after._nu0 == before._nu0
    nxt = CarbonContext(390.0, 100.0, 400.0, 250.0)
    assert after.multiplier(nxt) == pytest.approx(before.multiplier(nxt))
    assert before.pacer.periods == after.pacer.periods == 5  # each closed its own copy
    after.take_over(after)  # itself, or a policy of another kind: nothing changes
    assert after.pacer.periods == 5


def test_policy_checks_levels_against_directives(fitted: tuple) -> None:
    model, _ = fitted
    other = DirectiveSet.load(default_policy_path())
    model2 = ContextualModel(
        ("L1", "L0", "L2"),
        model.features,
        model.pref_weights,
        model.pref_bias,
        model.calibration,
        model.cost_weights,
        model.cost_bias,
    )
    with pytest.raises(OptimizerError, match="baseline"):
        ContextualPolicy(model2, other, 0.1, 0.0)
    with pytest.raises(ConfigError, match="anchor"):
        ContextualPolicy(model, other, 0.1, 0.0, anchor="nope")


@pytest.mark.parametrize("max_loss", [None, 0.02, 0.2])
def test_live_path_is_the_batch_path_with_one_request(fitted: tuple, max_loss: object) -> None:
    """The controller's path (``decide``, one prompt at a time) and the simulator's
    (``decide_batch``) decide alike and leave the same state, on many prompts and carbon
    contexts: refits, pacer and bookkeeping included."""
    model, _ = fitted
    texts, *_ = synthetic(400, seed=4)
    ref = model.predict(texts[:100])
    kw = {"reference": ref, "margin": 0.1, "max_loss": max_loss, "refit_every": 40}
    live, batch = _policy(model, **kw), _policy(model, **kw)
    for i, text in enumerate(texts[100:]):
        ctx = CarbonContext(120.0 + 37.0 * ((i // 25) % 8), 100.0, 400.0, 250.0)
        decision = live.decide(text, ctx, random.Random(0))
        level = batch.decide_batch(model.predict_one(text), ctx)
        assert level.shape == (1,)
        assert decision.directive.name == LEVELS[int(level[0])]
        if max_loss is not None:
            pref = model.predict_one(text).pref
            assert pref[0] - pref[level[0]] <= max_loss + 1e-12
    np.testing.assert_array_equal(live._recent, batch._recent)
    assert live.pacer.periods == batch.pacer.periods > 5
    state = ("_lam", "_next", "_filled", "_period_chosen", "_period_base", "_period_count")
    assert [getattr(live, a) for a in state] == [getattr(batch, a) for a in state]


@pytest.mark.parametrize("max_loss", [None, 0.05])
def test_batch_decisions_are_the_assignment_the_multiplier_is_fitted_for(
    fitted: tuple, max_loss: object
) -> None:
    """The policy decides as :func:`choose` of :func:`bounded_cost` (the vectorised
    assignment its multiplier and margin are fitted for), whatever the multiplier: none
    (0), finite, or none yet (inf: the likeliest preferred level, the cheapest among equals);
    ties included."""
    model, _ = fitted
    rng = np.random.default_rng(7)
    mixed = [_kind_predictions(150, brief, rng) for brief in (False, True)]
    pred = LevelPrediction(
        *(np.vstack([getattr(p, f) for p in mixed]) for f in ("pref", "energy_kwh", "time_s"))
    )
    # Ties: equal preferences (some at equal cost), and a baseline tied with a briefer level.
    pred.pref[:20] = [0.4, 0.4, 0.2]
    pred.pref[20:40] = [0.3, 0.35, 0.35]
    pred.energy_kwh[:10] = pred.energy_kwh[:10, :1]
    pred.time_s[:10] = pred.time_s[:10, :1]
    for lam in (0.0, 1e-3, 0.05, 1.0, 30.0, math.inf):
        policy = _policy(model, max_loss=max_loss)
        policy.multiplier = lambda carbon, lam=lam: lam  # type: ignore[method-assign]
        for ci in (50.0, 300.0, 900.0):
            ctx = CarbonContext(ci, 100.0, 400.0, 250.0)
            cost = expected_carbon_g(pred.energy_kwh, pred.time_s, ci, policy.embodied_g_per_s)
            want = choose(bounded_cost(cost, pred.pref, max_loss), pred.pref, lam)
            np.testing.assert_array_equal(policy.decide_batch(pred, ctx), want)
    # Without any history the policy has no multiplier yet: the likeliest preferred level.
    fresh = _policy(model, max_loss=max_loss)
    assert fresh.multiplier(CTX) == math.inf
    cost = expected_carbon_g(pred.energy_kwh, pred.time_s, CTX.ci_g_per_kwh, 1e-4)
    want = choose(bounded_cost(cost, pred.pref, max_loss), pred.pref, math.inf)
    np.testing.assert_array_equal(fresh.decide_batch(pred, CTX), want)


def test_bounded_cost_prices_out_levels_that_lose_too_much() -> None:
    cost = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    pref = np.array([[0.5, 0.45, 0.2], [0.2, 0.3, 0.5]])
    bounded = bounded_cost(cost, pref, 0.1)
    assert bounded[0].tolist() == [3.0, 2.0, np.inf]  # L2 gives up 0.3 > 0.1
    assert bounded[1].tolist() == [3.0, 2.0, 1.0]  # briefer is preferred: nothing lost
    np.testing.assert_array_equal(bounded_cost(cost, pref, None), cost)
    assert finite_spread(bounded).tolist() == [1.0, 2.0]
    # With L2 priced out, no multiplier can pick it, however cheap carbon is.
    assert choose(bounded, pref, 0.0).tolist() == [1, 2]
    lam = multiplier(bounded, pref, 0.45)
    assert np.isfinite(lam)
    assert choose(bounded, pref, lam)[0] in (0, 1)


def test_margin_is_estimated_for_the_assignment_the_bound_allows() -> None:
    # Kind A gains by brevity and the model knows it; kind B loses all of it, and the model
    # thinks it loses 0.4. Unbounded, the floor is met by B's brevity paid for by A: the
    # model's error on B all lands in the realised preference. Bounded at 0.2, B stays at
    # the baseline and only A's (calibrated) part of the promise is at stake.
    n = 100
    pref = np.array([[0.3, 0.7]] * n + [[0.7, 0.3]] * n)
    y = np.array([1] * 70 + [0] * 30 + [0] * n)
    energy = np.tile([10.0, 1.0], (2 * n, 1))
    time_s = np.zeros_like(energy)
    _, gap_free, _ = estimate_margin(pref, y, energy, time_s, 0.0)
    _, gap_bound, _ = estimate_margin(pref, y, energy, time_s, 0.0, max_loss=0.2)
    assert gap_free == pytest.approx(1.0 - 35 / 65)  # expects 100 %, realises 35/65
    assert gap_bound == pytest.approx(1.4 - 85 / 65)  # expects 140 %, realises 85/65
    # A bound of 1 allows every level: the unbounded estimate.
    assert estimate_margin(pref, y, energy, time_s, 0.0, max_loss=1.0)[1] == gap_free


def test_fit_records_the_bound_its_margin_assumes() -> None:
    texts, preferred, energy, time_s = synthetic()
    model, _ = fit_model(texts, preferred, energy, time_s, LEVELS, max_loss=0.2)
    assert model.info["margin_max_loss"] == 0.2
    again = ContextualModel.from_params(json.loads(json.dumps(model.to_params())))
    assert again.info["margin_max_loss"] == 0.2


def test_policy_bound_holds_each_kind_of_prompt_when_the_mix_shifts(fitted: tuple) -> None:
    """Without a bound the floor is met on the mean by trading across prompts: an hour of
    only the prompts that pay loses much. With ``max_loss``, no prompt's expected loss
    exceeds it, whatever the mix."""
    model, _ = fitted
    rng = np.random.default_rng(1)
    open_, brief = _kind_predictions(400, False, rng), _kind_predictions(400, True, rng)
    both = LevelPrediction(
        *(
            np.vstack([getattr(open_, f), getattr(brief, f)])
            for f in ("pref", "energy_kwh", "time_s")
        )
    )
    losses = {}
    for max_loss in (None, 0.05):
        policy = _policy(model, reference=both, margin=0.0, max_loss=max_loss)
        level = policy.decide_batch(open_, CTX)  # an hour of open tasks only
        rows = np.arange(level.size)
        losses[max_loss] = open_.pref[:, 0] - open_.pref[rows, level]
        assert (level >= 0).all()
    assert losses[None].max() > 0.05  # some open task was made brief at a cost
    assert losses[0.05].max() <= 0.05 + 1e-12
    assert losses[0.05].mean() < losses[None].mean()
    with pytest.raises(ConfigError, match="max_loss"):
        _policy(model, max_loss=1.5)


def test_the_package_is_core_logic_with_no_import_time_side_effects() -> None:
    """Nothing in ``sprout.policy.contextual`` imports the judge, the runtime, the ledger,
    the server or the simulator, even function-locally (grimp reads every import); and
    importing it starts no thread (the refit worker starts on first use)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("sprout", cache_dir=None)
    package = [m for m in graph.modules if m.startswith("sprout.policy.contextual")]
    assert "sprout.policy.contextual.policy" in package
    upstream = set().union(*(graph.find_upstream_modules(m) for m in package))
    upper = ("judge", "controller", "factory", "sim", "ledger", "server")
    assert not [m for m in upstream if m.split(".")[1] in upper]
    code = "import threading, sprout.policy.contextual; print(threading.active_count())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
