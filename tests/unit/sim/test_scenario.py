"""``sprout simulate`` scenarios (``--family-share``, ``--unseen``) and the judging overhead
(gross vs net saving)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from sprout.cli.simulate import JUDGE_ENERGY_WH_DEFAULT, add_simulate_parser, run_simulate
from sprout.data import DATASETS
from sprout.errors import ConfigError
from sprout.sim.engine import SimConfig, _setups, load_directives, simulate
from sprout.sim.evaluate import JUDGE_ENERGY_WH, draws_digest, judging_overhead_g
from sprout.sim.methods.base import Method, Shares, SimSetup
from sprout.sim.scenario import (
    parse_family_share,
    parse_unseen,
    shift_shares,
    validate_family_share,
)
from sprout.sim.workload import PromptSplit
from tests.support.workloads import small_workload

# --- parsing and validation ---------------------------------------------------------------


def test_parse_family_share() -> None:
    assert parse_family_share(None) == ()
    assert parse_family_share("") == ()
    assert parse_family_share("math=0.5") == (("math", 0.5),)
    assert parse_family_share(" math=0.5, mmlu=0.25 ") == (("math", 0.5), ("mmlu", 0.25))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("poetry=0.5", "unknown family 'poetry'"),
        ("math=0", "math=0 is outside (0, 1)"),
        ("math=1", "math=1 is outside (0, 1)"),
        ("math=-0.2", "outside (0, 1)"),
        ("math=nan", "outside (0, 1)"),
        ("math=0.7,mmlu=0.4", "sum to 1.1, past 1"),
        ("math=0.2,math=0.3", "named more than once"),
        ("math", "use FAMILY=SHARE"),
        ("math=lots", "is not a number"),
    ],
)
def test_parse_family_share_rejects(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match="--family-share") as e:
        parse_family_share(spec)
    assert message in str(e.value)


def test_every_family_named_must_sum_to_one() -> None:
    validate_family_share([(d, 1 / 6) for d in DATASETS])
    with pytest.raises(ConfigError, match="every family is named"):
        validate_family_share([(d, 0.1) for d in DATASETS])


def test_parse_unseen() -> None:
    assert parse_unseen(None) == ()
    assert parse_unseen("math, mmlu") == ("math", "mmlu")
    with pytest.raises(ConfigError, match="--unseen: unknown family 'poetry'"):
        parse_unseen("math,poetry")
    with pytest.raises(ConfigError, match="every family is unseen"):
        parse_unseen(",".join(DATASETS))
    with pytest.raises(ConfigError, match="more than once"):
        parse_unseen("math,math")
    with pytest.raises(ConfigError, match="empty family"):
        parse_unseen("math,")


def test_shift_shares_fixes_the_named_and_keeps_the_others_relative() -> None:
    families = ("a", "b", "c")
    shares = np.array([[0.2, 0.2, 0.6], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    out = shift_shares(shares, families, [("a", 0.5)])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    np.testing.assert_allclose(out[:, 0], 0.5)
    np.testing.assert_allclose(out[0, 1:], [0.125, 0.375])  # 1:3 kept
    np.testing.assert_allclose(out[1, 1:], [0.5, 0.0])
    np.testing.assert_allclose(out[2, 1:], [0.25, 0.25])  # none before: equal
    np.testing.assert_array_equal(shift_shares(shares, families, ()), shares)


def test_unseen_split_keeps_the_family_out_of_training_only() -> None:
    w = small_workload()
    plain, unseen = PromptSplit(0, 0.5), PromptSplit(0, 0.5, ("math",))
    m = DATASETS.index("math")
    math_rows = np.zeros(w.rows, dtype=bool)
    math_rows[w.start[m] : w.start[m] + w.count[m]] = True
    assert not (unseen.training(w) & math_rows).any()
    assert not (unseen.seen(w) & math_rows).any()
    # Every judged math prompt is traffic to evaluate on; the others' split is unchanged.
    np.testing.assert_array_equal(unseen.evaluated(w)[math_rows], (w.verdict >= 0)[math_rows])
    np.testing.assert_array_equal(unseen.evaluated(w)[~math_rows], plain.evaluated(w)[~math_rows])
    np.testing.assert_array_equal(unseen.training(w)[~math_rows], plain.training(w)[~math_rows])


# --- the scenario, end to end -------------------------------------------------------------


def _config(**kw: object) -> SimConfig:
    base = dict(
        carbon="GB",
        start_hour=800,
        hours=48,
        methods=("base", "sprout", "oracle_request", "contextual"),
        seeds=(0,),
        n_judged=200,
        n_energy=500,
        split=PromptSplit(0, 0.5, ("math",)),
        family_share=(("math", 0.5),),
    )
    base.update(kw)
    return SimConfig(**base)  # type: ignore[arg-type]


def test_unseen_math_at_half_the_traffic(monkeypatch: pytest.MonkeyPatch) -> None:
    from sprout.sim.methods import contextual as method

    seen: dict[str, object] = {}
    real = method.fit_model

    def spy(texts, preferred, energy, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen["texts"] = list(texts)
        seen["energy_rows"] = len(energy)
        model, report = real(texts, preferred, energy, *args, **kwargs)
        seen["model"] = model
        return model, report

    monkeypatch.setattr(method, "fit_model", spy)
    method._CACHE.clear()
    w = small_workload()
    config = _config()
    result = simulate(config, workload=w)
    method._CACHE.clear()

    # Math is half of every hour's requests.
    from sprout.accounting import embodied_rate_g_per_s
    from sprout.carbon.trace import load_trace
    from sprout.sim.carbon import carbon_window

    carbon = carbon_window(load_trace("GB"), 800, 48, "causal", config.history_hours)
    setup = _setups(
        config,
        w,
        carbon,
        carbon.evaluator_runs(config.timing),
        load_directives(None),
        embodied_rate_g_per_s(config.embodied_g, config.lifetime_years),
        0,
    )[0]
    rows = setup.samples.judged_rows
    is_math = w.dataset_of(rows.ravel()) == DATASETS.index("math")
    assert abs(is_math.mean() - 0.5) < 0.03

    # Every method saw exactly these requests.
    digest = draws_digest(list(rows))
    series = result.runs[0].first_seed
    assert {s.draws for s in series.values()} == {digest}

    # The model never trained on a math prompt: no text, no verdict, no cost row.
    texts = method._texts(w.ids)
    m = DATASETS.index("math")
    math_texts = {texts[i] for i in range(w.start[m], w.start[m] + w.count[m])}
    trained = set(seen["texts"])  # type: ignore[arg-type]
    assert trained and not (trained & math_texts)
    assert seen["energy_rows"] == len(seen["texts"])  # type: ignore[arg-type]
    model = seen["model"]
    assert model.info["unseen"] == ["math"]  # type: ignore[attr-defined]
    assert model.info["training_rows"] == len(seen["texts"])  # type: ignore[attr-defined,arg-type]
    summary = result.runs[0].methods
    assert summary["contextual"].per_request


# --- the judging overhead -------------------------------------------------------------------


def test_judge_energy_default_is_one_figure() -> None:
    assert JUDGE_ENERGY_WH_DEFAULT == JUDGE_ENERGY_WH


def test_overhead_charges_other_directives_and_judge_calls() -> None:
    w = small_workload()
    config = _config(split=PromptSplit(0, 0.5), family_share=(), hours=6)
    from sprout.accounting import embodied_rate_g_per_s
    from sprout.carbon.trace import load_trace
    from sprout.sim.carbon import carbon_window

    carbon = carbon_window(load_trace("GB"), 800, 6, "causal", config.history_hours)
    emb = embodied_rate_g_per_s(config.embodied_g, config.lifetime_years)
    setup = _setups(
        config, w, carbon, carbon.evaluator_runs(config.timing), load_directives(None), emb, 0
    )[0]
    setup = SimSetup(**{**setup.__dict__, "judge_energy_wh": 2.0})

    class Probe(Method):
        name = "_probe"

        def decide(self, hour):  # type: ignore[no-untyped-def]
            return Shares(np.array([1.0, 0.0, 0.0]))

    levels = setup.directives.names
    cols = [w.key_index(n) for n in levels]
    rows = np.array([0, 1, 2])
    probe = Probe()
    probe.record_judging(3, rows, served_level=np.array([0, 1, 2]))
    probe.record_judging(4, rows[:1], served_mix=np.array([0.5, 0.5, 0.0]))
    got = judging_overhead_g(probe, setup, levels)
    ci3, ci4 = carbon.ci_g_per_kwh[3], carbon.ci_g_per_kwh[4]
    cost = w.energy_kwh[:, cols] * ci3 + emb * w.time_s[:, cols]
    want3 = cost[rows].sum() - cost[0, 0] - cost[1, 1] - cost[2, 2] + 3 * 0.002 * ci3
    cost4 = w.energy_kwh[0, cols] * ci4 + emb * w.time_s[0, cols]
    want4 = 0.5 * cost4[0] + 0.5 * cost4[1] + cost4[2] + 0.002 * ci4
    np.testing.assert_allclose(got, [0, 0, 0, want3, want4, 0])


def test_gross_net_and_overhead_per_method() -> None:
    w = small_workload()
    methods = ("base", "static", "sprout", "oracle", "oracle_request", "contextual")
    cheap = simulate(_config(methods=methods, judge_energy_wh=0.0, hours=24), workload=w)
    dear = simulate(_config(methods=methods, judge_energy_wh=3.0, hours=24), workload=w)
    for result in (cheap, dear):
        m = result.runs[0].methods
        for name in ("base", "oracle", "oracle_request"):
            assert m[name].overhead_g.mean == 0.0 and m[name].judged.mean == 0.0
            assert m[name].net_saving.mean == m[name].carbon_saving.mean
        for name in ("static", "sprout", "contextual"):
            assert m[name].overhead_g.mean > 0 and m[name].judged.mean > 0
            assert m[name].net_saving.mean == pytest.approx(
                m[name].carbon_saving.mean - m[name].overhead_share.mean
            )
    # The judge's energy only adds overhead; gross saving does not move.
    for name in ("static", "sprout", "contextual"):
        a, b = cheap.runs[0].methods[name], dear.runs[0].methods[name]
        assert b.overhead_g.mean > a.overhead_g.mean
        assert b.carbon_saving.mean == a.carbon_saving.mean
    # Sprout judges a fixed count per run; contextual a share of the traffic.
    scaled = simulate(
        _config(methods=methods, judge_energy_wh=3.0, hours=24, requests_per_hour=2000),
        workload=w,
    ).runs[0]
    d = dear.runs[0].methods
    assert scaled.methods["sprout"].overhead_g.mean == pytest.approx(d["sprout"].overhead_g.mean)
    assert scaled.methods["contextual"].overhead_g.mean == pytest.approx(
        10 * d["contextual"].overhead_g.mean
    )
    assert scaled.methods["sprout"].overhead_share.mean == pytest.approx(
        d["sprout"].overhead_share.mean / 10
    )


# --- the command line -----------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_simulate_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["simulate", *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--family-share", "poetry=0.5"), "unknown family 'poetry'"),
        (("--family-share", "math=1.5"), "outside (0, 1)"),
        (("--family-share", "math=0.6,mmlu=0.6"), "past 1"),
        (("--unseen", "poetry"), "unknown family 'poetry'"),
        (("--unseen", ",".join(DATASETS)), "every family is unseen"),
        (("--judge-energy-wh", "-1"), "--judge-energy-wh"),
        (("--requests-per-hour", "0"), "--requests-per-hour"),
    ],
)
def test_cli_bad_scenario(capsys: pytest.CaptureFixture[str], argv, message) -> None:  # type: ignore[no-untyped-def]
    rc = run_simulate(_args("--hours", "2", "--methods", "base", *argv))
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err


def test_cli_table_and_json_show_gross_net_and_overhead(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "r.json"
    rc = run_simulate(
        _args(
            "--hours",
            "12",
            "--methods",
            "base,sprout",
            "--judged-per-hour",
            "100",
            "--energy-per-hour",
            "200",
            "--family-share",
            "math=0.5",
            "--unseen",
            "math",
            "--json",
            str(out),
        )
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert "gross saving %" in text and "net saving %" in text and "overhead %" in text
    assert "unseen in training: math" in text
    doc = json.loads(out.read_text())
    sprout = doc["methods"]["sprout"]
    assert sprout["net_saving"] == pytest.approx(sprout["gross_saving"] - sprout["overhead_share"])
    assert sprout["gross_saving"] == sprout["carbon_saving"]
    assert sprout["overhead_g"] > 0
    assert doc["methods"]["base"]["overhead_g"] == 0
    assert doc["family_share"] == {"math": 0.5} and doc["unseen"] == ["math"]
    assert doc["judge_energy_wh"] == JUDGE_ENERGY_WH and "Epoch AI" in doc["judge_energy_source"]
