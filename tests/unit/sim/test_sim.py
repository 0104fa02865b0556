"""The trace-driven simulator: protocol pieces on hand-made inputs, then short real runs."""

from __future__ import annotations

import argparse
import itertools
import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest

from sprout.carbon.trace import CarbonTrace
from sprout.cli.simulate import add_simulate_parser, run_simulate
from sprout.data import RECORDED_KEYS
from sprout.directives import DirectiveSet
from sprout.errors import ConfigError, InfeasibleError
from sprout.policy.base import CarbonContext
from sprout.policy.history import CIWindow
from sprout.policy.optimizer import quality_floor, solve_mix
from sprout.policy.sprout_lp import SproutLPPolicy
from sprout.policy.stats import LevelStats
from sprout.sim.carbon import carbon_window
from sprout.sim.engine import SimConfig, simulate
from sprout.sim.evaluate import run_method
from sprout.sim.methods.base import Assignment, HourInputs, Method, SimSetup
from sprout.sim.methods.oracle_request import min_carbon_assignment, required_count
from sprout.sim.methods.registry import create_method, method_names, register_method
from sprout.sim.metrics import Spread, carbon_saving, normalized_preference
from sprout.sim.mix import mix_schedule
from sprout.sim.sampling import sample_hours
from sprout.sim.specs import parse_seeds, parse_xis
from sprout.sim.workload import NO_VERDICT, PromptSplit, WorkloadArrays

T0 = datetime(2023, 1, 1, tzinfo=UTC)


def tiny_workload() -> WorkloadArrays:
    """Two workloads of four prompts each; L2 cheapest, verdicts spread over levels."""
    energy = np.array(
        [
            [4e-4, 2e-4, 1e-4, 3e-4],
            [5e-4, 2e-4, 1e-4, 3e-4],
            [6e-4, 3e-4, 2e-4, 4e-4],
            [4e-4, 1e-4, 1e-4, 2e-4],
            [2e-4, 1e-4, 5e-5, 1e-4],
            [3e-4, 1e-4, 5e-5, 2e-4],
            [2e-4, 2e-4, 1e-4, 1e-4],
            [1e-4, 5e-5, 5e-5, 1e-4],
        ]
    )
    return WorkloadArrays(
        datasets=("open", "quiz"),
        keys=RECORDED_KEYS,
        ids=tuple(f"p{i}" for i in range(8)),
        energy_kwh=energy,
        time_s=energy * 1e4,
        verdict=np.array([0, 0, 1, NO_VERDICT, 2, 1, 2, 0], dtype=np.int8),
        start=np.array([0, 4]),
        count=np.array([4, 4]),
    )


def tiny_trace(hours: int = 400, seed: int = 1) -> CarbonTrace:
    rng = np.random.default_rng(seed)
    h = np.arange(hours)
    ci = 200 + 100 * np.sin(2 * np.pi * h / 24) + rng.normal(0, 20, hours)
    return CarbonTrace("XX", T0, np.clip(ci, 5, None), "ci_direct", "<tiny>")


# --- the workload mix ---------------------------------------------------------------


def test_mix_is_deterministic_by_seed() -> None:
    jobs = np.arange(1, 200)
    a = mix_schedule(jobs, 500, np.random.default_rng(3))
    b = mix_schedule(jobs, 500, np.random.default_rng(3))
    c = mix_schedule(jobs, 500, np.random.default_rng(4))
    assert np.array_equal(a.shares, b.shares) and a.change_hours == b.change_hours
    assert not np.array_equal(a.shares, c.shares)
    # A shorter run is a prefix of a longer one.
    short = mix_schedule(jobs, 100, np.random.default_rng(3))
    assert np.array_equal(short.shares, a.shares[:100])


def test_mix_reads_counts_at_advancing_offsets() -> None:
    jobs = np.array([1, 2, 3, 4, 5, 6, 7])
    s = mix_schedule(jobs, 200, np.random.default_rng(0), workloads=3)
    offsets = np.array(s.offsets)
    for k, t in enumerate(s.change_hours):
        read = jobs[(offsets + k) % jobs.size].astype(float)  # wraps at the end
        assert np.allclose(s.shares[t], read / read.sum())
    # Constant between changes, rows are distributions.
    assert np.allclose(s.shares.sum(axis=1), 1.0)
    for t0, t1 in itertools.pairwise((*s.change_hours, 200)):
        assert np.all(s.shares[t0:t1] == s.shares[t0])


def test_mix_interval_distribution() -> None:
    s = mix_schedule(np.ones(50), 24 * 3000, np.random.default_rng(7))
    intervals = s.intervals_h
    assert np.all(intervals == np.rint(intervals)) and intervals.min() >= 1
    assert abs(intervals.mean() - 24) < 0.3
    assert abs(intervals.std() - 4.8) < 0.3


# --- sampling -----------------------------------------------------------------------


def test_sampling_follows_the_mix_and_the_evaluated_split() -> None:
    w = tiny_workload()
    shares = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    s = sample_hours(w, shares, np.random.default_rng(0), n_judged=400, n_energy=4000)
    assert s.judged_rows.shape == (6, 400)
    assert np.all(s.judged_rows[:3] < 4) and np.all(s.judged_rows[3:] >= 4)
    assert not np.any(s.judged_rows == 3)  # no verdict: never judged
    assert np.allclose(s.quality.sum(axis=1), 1.0)
    assert np.allclose(s.energy_kwh[:3].mean(0), w.energy_kwh[:4].mean(0), rtol=0.05)
    assert np.allclose(s.time_s[3:].mean(0), w.time_s[4:].mean(0), rtol=0.05)
    # Only the evaluated prompts are judged.
    mask = np.zeros(8, dtype=bool)
    mask[[0, 5]] = True
    s2 = sample_hours(w, shares, np.random.default_rng(0), evaluated=mask, n_judged=50)
    assert set(np.unique(s2.judged_rows)) == {0, 5}


def test_prompt_split_partitions_judged_prompts() -> None:
    w = tiny_workload()
    assert np.array_equal(PromptSplit().evaluated(w), w.verdict != NO_VERDICT)
    split = PromptSplit(seed=5, held_out_fraction=0.5)
    held, train = split.evaluated(w), split.training(w)
    assert not np.any(held & train)
    assert np.array_equal(held | train, w.verdict != NO_VERDICT)
    assert np.array_equal(held, PromptSplit(seed=5, held_out_fraction=0.5).evaluated(w))
    with pytest.raises(ConfigError):
        PromptSplit(held_out_fraction=0.0)


# --- carbon contexts ----------------------------------------------------------------


def test_causal_context_is_the_trailing_ci_window() -> None:
    trace = tiny_trace()
    cw = carbon_window(trace, 100, 50, "causal", history_hours=72)
    ci = trace.ci_g_per_kwh
    for h in (0, 17, 49):
        past = ci[100 + h - 71 : 100 + h + 1]
        assert cw.ci_min[h] == past.min() and cw.ci_max[h] == past.max()
        assert cw.ci_mean[h] == pytest.approx(past.mean())
    # At the trace's start there is less history: only what exists.
    early = carbon_window(trace, 0, 3, "causal", history_hours=72)
    assert early.ci_min[0] == early.ci_max[0] == ci[0]
    window = CIWindow(72)
    for h in range(0, 3):
        window.add(trace.time_of(h), float(ci[h]))
    assert early.context(2) == window.context(float(ci[2]))


def test_paper_context_uses_the_whole_trace_and_the_window_mean() -> None:
    trace = tiny_trace()
    cw = carbon_window(trace, 100, 50, "paper")
    assert np.all(cw.ci_min == trace.ci_g_per_kwh.min())
    assert np.all(cw.ci_max == trace.ci_g_per_kwh.max())
    assert np.allclose(cw.ci_mean, trace.ci_g_per_kwh[100:150].mean())
    with pytest.raises(ConfigError, match="unknown mode"):
        carbon_window(trace, 0, 5, "psychic")


# --- metrics ------------------------------------------------------------------------


def test_metrics_formulas() -> None:
    assert carbon_saving([1.0, 2.0], [2.0, 2.0]) == pytest.approx(0.25)
    assert carbon_saving([2.0, 2.0], [2.0, 2.0]) == 0.0
    # Mean of hourly ratios, not ratio of means.
    assert normalized_preference([0.3, 0.5], [0.4, 0.5]) == pytest.approx((0.75 + 1.0) / 2)
    assert normalized_preference([0.6], [0.4]) == pytest.approx(1.5)  # may exceed 1
    assert math.isnan(normalized_preference([math.nan, 0.5], [0.4, 0.5]))
    with pytest.raises(ValueError):
        carbon_saving([1.0], [0.0])
    s = Spread.of([0.1, 0.3, 0.2])
    assert (s.mean, s.min, s.max) == pytest.approx((0.2, 0.1, 0.3))
    assert s.contains(0.3) and not s.contains(0.31)


# --- the per-request optimum ----------------------------------------------------------


def brute_force(carbon_g: np.ndarray, preferred: np.ndarray, required: int) -> float:
    best = math.inf
    for a in itertools.product(range(carbon_g.shape[1]), repeat=carbon_g.shape[0]):
        a = np.array(a)
        if np.sum(a == preferred) >= required:
            best = min(best, float(carbon_g[np.arange(len(a)), a].sum()))
    return best


def test_min_carbon_assignment_is_exact() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(3, 8))
        carbon_g = rng.uniform(0.1, 1.0, (n, 3))
        preferred = rng.integers(-1, 3, n)
        required = int(rng.integers(0, np.sum(preferred >= 0) + 1))
        a = min_carbon_assignment(carbon_g, preferred, required)
        assert np.sum(a == preferred) >= required
        assert carbon_g[np.arange(n), a].sum() == pytest.approx(
            brute_force(carbon_g, preferred, required)
        )
    with pytest.raises(InfeasibleError):
        min_carbon_assignment(np.ones((2, 3)), np.array([-1, 0]), 2)


def test_oracle_request_beats_the_lp_oracle_on_the_same_prompts() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = 200
        e = np.sort(rng.uniform(1e-5, 5e-4, (n, 3)), axis=1)[:, ::-1]  # L0 costliest
        t = e * 1e4
        best = rng.integers(0, 3, n)
        ci, emb = float(rng.uniform(50, 400)), 1.7e-4
        q = np.bincount(best, minlength=3) / n
        lp = solve_mix(e.mean(0), t.mean(0), q, ci, 20.0, 450.0, 0.1, emb)
        carbon_g = e * ci + emb * t
        floor = quality_floor(q[0], 0.1, ci, 20.0, 450.0)
        a = min_carbon_assignment(carbon_g, best, required_count(floor, n))
        realized = np.mean(a == best)
        assert realized >= floor - 1e-12
        assert realized >= lp.quality - 1 / n  # equal or better, up to one prompt's rounding
        extra = np.max(carbon_g.max(1) - carbon_g.min(1)) / n
        assert carbon_g[np.arange(n), a].mean() <= lp.carbon_g + extra


# --- the policy object is shared with the live controller -----------------------------


def test_lp_policy_cache_follows_replaced_stats() -> None:
    directives = DirectiveSet.from_toml(
        '[[directive]]\nname="L0"\n[[directive]]\nname="L1"\n[[directive]]\nname="L2"\n'
    )
    a = LevelStats(("L0", "L1", "L2"), (3e-4, 1e-4, 5e-5), (4.0, 1.5, 1.0), (0.4, 0.35, 0.25), 1, 1)
    b = LevelStats(("L0", "L1", "L2"), (3e-4, 1e-4, 5e-5), (4.0, 1.5, 1.0), (0.4, 0.1, 0.5), 1, 1)
    policy = SproutLPPolicy(directives, a, xi=0.1, embodied_g_per_s=1e-4)
    ctx = CarbonContext(300.0, 50.0, 400.0, 200.0)
    first = policy.mix(ctx)
    policy.stats = b
    assert policy.mix(ctx).x != first.x


# --- methods and the registry -----------------------------------------------------------


def test_registry_and_a_custom_per_request_method() -> None:
    assert {"base", "co2_opt", "model_opt", "static", "sprout", "oracle", "oracle_request"} <= set(
        method_names()
    )
    with pytest.raises(ConfigError, match=r"unknown method 'psychic'.*known methods"):
        create_method("psychic")

    @register_method
    class AlwaysPreferred(Method):
        """Cheats on purpose: every prompt at its verdict (tests the grading path)."""

        name = "_test_always_preferred"

        def start(self, setup: SimSetup) -> None:
            self.verdict = setup.workload.verdict

        def decide(self, hour: HourInputs) -> Assignment:
            return Assignment(self.verdict[hour.judged_rows].astype(np.int64))

    w = tiny_workload()
    trace = tiny_trace()
    config = SimConfig(
        start_hour=24,
        hours=30,
        methods=("base", "_test_always_preferred", "oracle_request"),
        n_judged=50,
        n_energy=200,
    )
    result = simulate(config, trace=trace, workload=w)
    m = result.runs[0].methods
    series = result.runs[0].first_seed["_test_always_preferred"]
    assert series.per_request and np.allclose(series.quality, 1.0)
    assert m["_test_always_preferred"].normalized_preference.mean > 1.0
    assert m["oracle_request"].per_request


# --- short end-to-end runs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def short_run():
    config = SimConfig(carbon="GB", start_hour=800, hours=48, n_judged=300, n_energy=2000)
    return simulate(config)


def test_short_run_base_and_co2_opt(short_run) -> None:
    m = short_run.runs[0].methods
    assert m["base"].carbon_saving.mean == 0.0
    assert m["base"].normalized_preference.mean == 1.0
    assert m["co2_opt"].mix == (0.0, 0.0, 1.0)
    assert m["co2_opt"].carbon_saving.mean > m["sprout"].carbon_saving.mean > 0
    assert math.isnan(m["model_opt"].normalized_preference.mean)
    assert m["model_opt"].levels == ("L0", "7b_L0")
    for name in ("static", "sprout", "oracle", "oracle_request"):
        assert 0.85 < m[name].normalized_preference.mean < 1.1
    series = short_run.runs[0].first_seed["sprout"]
    assert np.allclose(series.mix.sum(axis=1), 1.0)
    assert short_run.evaluator_runs[0]


@pytest.mark.parametrize("mode", ["causal", "paper"])
def test_causal_mode_never_looks_ahead(mode: str) -> None:
    trace = tiny_trace()
    cut = 20  # window hour after which the future is rewritten
    future = trace.ci_g_per_kwh.copy()
    future[100 + cut + 1 :] *= 3.0
    changed = CarbonTrace("XX", T0, future, "ci_direct", "<tiny, future changed>")
    w = tiny_workload()
    config = SimConfig(
        start_hour=100,
        hours=40,
        mode=mode,
        n_judged=60,
        n_energy=300,
        methods=("static", "sprout", "oracle", "oracle_request"),
    )
    a = simulate(config, trace=trace, workload=w).runs[0].first_seed
    b = simulate(config, trace=changed, workload=w).runs[0].first_seed
    same = all(np.array_equal(a[n].mix[: cut + 1], b[n].mix[: cut + 1]) for n in a)
    assert same == (mode == "causal")  # paper mode's year max/window mean see the future


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sprout")
    add_simulate_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["simulate", *argv])


def test_cli_json_schema_and_sweep(tmp_path, capsys) -> None:
    out = tmp_path / "out.json"
    rc = run_simulate(
        _args(
            "--hours",
            "24",
            "--methods",
            "base,co2_opt,sprout",
            "--seeds",
            "0,1",
            "--judged-per-hour",
            "100",
            "--energy-per-hour",
            "500",
            "--json",
            str(out),
        )
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    assert {"zone", "start_hour", "hours", "xi", "mode", "seeds", "methods"} <= set(doc)
    assert (doc["zone"], doc["start_hour"], doc["hours"], doc["xi"], doc["mode"]) == (
        "GB",
        800,
        24,
        0.1,
        "causal",
    )
    assert doc["seeds"] == [0, 1]
    sprout = doc["methods"]["sprout"]
    for key in ("carbon_saving", "normalized_preference", "carbon_g_per_request"):
        assert sprout[f"{key}_min"] <= sprout[key] <= sprout[f"{key}_max"]
    assert len(sprout["mix"]) == 3 and sum(sprout["mix"]) == pytest.approx(1.0)
    table = capsys.readouterr().out
    assert "sprout" in table and "[" in table  # min-max shown for several seeds

    rc = run_simulate(
        _args(
            "--hours",
            "24",
            "--methods",
            "base,sprout",
            "--xi",
            "0.05,0.3",
            "--judged-per-hour",
            "100",
            "--energy-per-hour",
            "500",
            "--json",
            str(out),
        )
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["xi"] == [0.05, 0.3] and [r["xi"] for r in doc["sweep"]] == [0.05, 0.3]
    assert "frontier" in capsys.readouterr().out


def test_cli_plot(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "fig.png"
    rc = run_simulate(
        _args(
            "--hours",
            "24",
            "--methods",
            "base,co2_opt,model_opt,sprout",
            "--mode",
            "paper",
            "--judged-per-hour",
            "100",
            "--energy-per-hour",
            "500",
            "--plot",
            str(png),
        )
    )
    assert rc == 0 and png.read_bytes()[:4] == b"\x89PNG"


def _csv(tmp_path, rows: list[str], header: str = "datetime_utc,zone,ci_direct,ci_lca") -> str:
    path = tmp_path / "trace.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def _hours(n: int, value: str = "100") -> list[str]:
    return [f"2023-01-01 {h:02d}:00:00,XX,{value},120" for h in range(n)]


@pytest.mark.parametrize(
    ("make", "argv", "message"),
    [
        (lambda p: _csv(p, _hours(5), header="datetime_utc,zone,ci_direct"), (), "missing column"),
        (lambda p: _csv(p, [*_hours(3), "2023-01-01 05:00:00,XX,100,120"]), (), "a gap"),
        (lambda p: _csv(p, [*_hours(3), "2023-01-01 03:00:00,XX,lots,120"]), (), "not a number"),
        (lambda p: _csv(p, _hours(10)), ("--start-hour", "5", "--hours", "6"), "does not fit"),
        (lambda p: _csv(p, _hours(10)), ("--methods", "base,psychic"), "unknown method 'psychic'"),
        (lambda p: _csv(p, _hours(10)), ("--seeds", "3-1"), "--seeds"),
        (lambda p: _csv(p, _hours(10)), ("--seeds", "a"), "--seeds"),
        (lambda p: _csv(p, _hours(10)), ("--xi", "2"), "--xi"),
        (lambda p: "NOWHERE", (), "no bundled carbon trace for zone 'NOWHERE'"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, make, argv, message) -> None:
    carbon = make(tmp_path)
    rc = run_simulate(_args("--carbon", carbon, "--start-hour", "0", "--hours", "4", *argv))
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err


def test_cli_policy_with_unrecorded_directive(tmp_path, capsys) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('[[directive]]\nname = "L0"\n[[directive]]\nname = "terse"\n')
    rc = run_simulate(_args("--policy", str(policy), "--hours", "4"))
    assert rc == 2 and "terse" in capsys.readouterr().err


def test_seed_and_xi_specs() -> None:
    assert parse_seeds("0") == (0,)
    assert parse_seeds("0-3,7") == (0, 1, 2, 3, 7)
    assert parse_seeds("0,3,5") == (0, 3, 5)
    with pytest.raises(ConfigError, match="more than once"):
        parse_seeds("0-2,1")
    assert parse_xis("0.02,0.1") == (0.02, 0.1)
    with pytest.raises(ConfigError):
        parse_xis("x")


def test_run_method_rejects_a_bad_mix() -> None:
    class Broken(Method):
        name = "_broken"

        def decide(self, hour: HourInputs):  # type: ignore[override]
            from sprout.sim.methods.base import Shares

            return Shares(np.array([0.5, 0.0, 0.0]))

    w = tiny_workload()
    config = SimConfig(start_hour=10, hours=3, methods=("base",), n_judged=10, n_energy=10)
    setup = SimSetup(
        w,
        carbon_window(tiny_trace(), 10, 3),
        sample_hours(w, np.full((3, 2), 0.5), np.random.default_rng(0), n_judged=10, n_energy=10),
        np.ones(3, dtype=bool),
        DirectiveSet.from_toml(
            '[[directive]]\nname="L0"\n[[directive]]\nname="L1"\n[[directive]]\nname="L2"\n'
        ),
        config.xis[0],
        1e-4,
    )
    with pytest.raises(ValueError, match="not a mix"):
        run_method(Broken(), setup)
