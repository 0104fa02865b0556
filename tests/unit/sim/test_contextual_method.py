"""The ``contextual`` method in ``sprout simulate``: trained on the training split only,
evaluated on the held-out split with every other method."""

from __future__ import annotations

import numpy as np
import pytest

from sprout.cli.simulate import split_for
from sprout.errors import ConfigError
from sprout.sim.engine import SimConfig, simulate
from sprout.sim.methods.registry import method_names
from sprout.sim.workload import PromptSplit
from tests.support.workloads import small_workload


def _config(**kw: object) -> SimConfig:
    base = dict(
        carbon="GB",
        start_hour=800,
        hours=48,
        methods=("base", "sprout", "oracle_request", "contextual", "contextual_lp"),
        seeds=(0,),
        n_judged=200,
        n_energy=500,
        split=PromptSplit(0, 0.5),
    )
    base.update(kw)
    return SimConfig(**base)  # type: ignore[arg-type]


def test_contextual_is_registered() -> None:
    assert {"contextual", "contextual_lp"} <= set(method_names())


def test_contextual_runs_on_the_held_out_prompts_only() -> None:
    workload = small_workload()
    result = simulate(_config(), workload=workload)
    run = result.runs[0]
    ctx = run.methods["contextual"]
    assert ctx.per_request
    assert 0.0 < ctx.carbon_saving.mean < 1.0
    assert ctx.normalized_preference.mean > 0.5
    # Every method sees the same held-out prompts: the baseline's quality is shared.
    split = PromptSplit(0, 0.5)
    held = split.evaluated(workload)
    series = run.first_seed["contextual"]
    np.testing.assert_array_equal(series.base_quality, run.first_seed["sprout"].base_quality)
    assert held.sum() < (workload.verdict >= 0).sum()
    # The per-request optimum knows every verdict: it bounds contextual at the LP floor.
    lp = run.methods["contextual_lp"]
    oracle = run.methods["oracle_request"]
    assert oracle.carbon_saving.mean > lp.carbon_saving.mean - 0.05


def test_contextual_never_trains_on_held_out_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    from sprout.sim.methods import contextual as method

    seen: dict[str, np.ndarray] = {}
    real = method.fit_model

    def spy(texts, preferred, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen["texts"] = np.array(texts, dtype=object)
        seen["preferred"] = np.asarray(preferred)
        return real(texts, preferred, *args, **kwargs)

    monkeypatch.setattr(method, "fit_model", spy)
    method._CACHE.clear()
    workload = small_workload()
    simulate(_config(methods=("base", "contextual"), hours=6), workload=workload)
    held = PromptSplit(0, 0.5).evaluated(workload)
    texts = method._texts(workload.ids)
    held_texts = {texts[i] for i in np.flatnonzero(held)}
    trained_with_verdict = {
        t for t, p in zip(seen["texts"], seen["preferred"], strict=True) if p >= 0
    }
    assert trained_with_verdict and not (trained_with_verdict & held_texts)
    method._CACHE.clear()


def test_split_for_holds_out_half_when_a_method_trains() -> None:
    assert split_for(("base", "sprout"), 0, None) == PromptSplit(0, 1.0)
    assert split_for(("base", "contextual"), 3, None) == PromptSplit(3, 0.5)
    assert split_for(("base", "sprout"), 1, 0.3) == PromptSplit(1, 0.3)
    with pytest.raises(ConfigError, match="no training prompts"):
        split_for(("contextual",), 0, 1.0)
    with pytest.raises(ConfigError, match="outside"):
        split_for(("contextual",), 0, 0.0)


def test_contextual_needs_a_training_split() -> None:
    with pytest.raises(ConfigError, match="no training prompts"):
        simulate(_config(split=PromptSplit(0, 1.0), hours=4), workload=small_workload())


def test_cli_split_seed_option(capsys: pytest.CaptureFixture[str]) -> None:
    from sprout.cli import main

    code = main(
        [
            "simulate",
            "--methods",
            "base,sprout",
            "--hours",
            "3",
            "--split-seed",
            "2",
            "--held-out",
            "0.5",
            "--judged-per-hour",
            "50",
            "--energy-per-hour",
            "100",
        ]
    )
    assert code == 0
    assert "sprout" in capsys.readouterr().out
