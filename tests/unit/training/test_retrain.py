"""``sprout retrain``: training data, the split, storing and loading policy versions, the
controller picking up new versions, and the scheduled job."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from sprout.config import load_settings
from sprout.data import load_workload
from sprout.errors import ConfigError
from sprout.factory import build_controller, load_directives
from sprout.ledger.store import Ledger
from sprout.policy.base import CONTEXTUAL_KIND, DEFAULT_MAX_LOSS
from sprout.policy.contextual import ContextualPolicy
from sprout.sim.workload import PromptSplit, bundled_workload
from sprout.training.dataset import held_out_mask, training_set
from sprout.training.retrain import retrain
from sprout.training.schedule import parse_cron, schedule_retrain
from sprout.training.serving import PolicyWatcher, load_policy
from sprout.training.sources import BundledSource, LedgerSource, choose_sources
from tests.support.settings import make_settings
from tests.support.workloads import FAST, SmallBundled, bundled_prompt

LEVELS3 = ("L0", "L1", "L2")


@pytest.fixture()
def ledger(tmp_path: Path) -> Iterable[Ledger]:
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield led
    led.close()


def test_split_matches_the_simulator() -> None:
    workload = bundled_workload()
    examples = list(BundledSource().examples())
    data = training_set(examples, ("L0", "L1", "L2"), split_seed=0, held_out_fraction=0.5)
    sim = PromptSplit(0, 0.5).evaluated(workload)
    assert tuple(r.id for r in load_workload()) == workload.ids  # same order
    np.testing.assert_array_equal(data.held_out, sim)
    assert not data.held_out[data.preferred < 0].any()  # unjudged prompts never held out


def test_held_out_mask_validates() -> None:
    with pytest.raises(ConfigError, match="held-out"):
        held_out_mask(["a"], np.array([True]), 0, 1.5)
    assert held_out_mask(["a", "a"], np.array([True, False]), 0, 1.0).tolist() == [True, False]


def _judged_ledger(sqlite_url: str, clock: object, records: list) -> None:
    """Serve ``records`` with every request sampled, then run the judge job over them."""
    from sprout.carbon.trace import load_trace
    from sprout.factory import build_judge_job
    from sprout.judge.judges import ReplayJudge

    clock.t = load_trace("GB").time_of(3912)  # type: ignore[attr-defined]
    settings = load_settings(env={}, db_url=sqlite_url, judge_sample_share=1.0)
    c = build_controller(settings, clock=clock.now, monotonic=clock.monotonic, rng=random.Random(1))  # type: ignore[attr-defined]
    job = build_judge_job(settings, controller=c, judge=ReplayJudge(), clock=clock.now)  # type: ignore[attr-defined]
    try:
        for r in records:
            c.chat([{"role": "user", "content": r.instruction}], prompt_id=r.id)
        clock.t += timedelta(hours=2)  # type: ignore[attr-defined]
        assert job.run().outcomes["preferred"] == len(records)
    finally:
        job.close()
        c.close()


def _spread(records: list, per_level: int) -> list:
    """Records whose verdicts prefer each level at least ``per_level`` times."""
    picked: list = []
    for best in (0, 1, 2):
        picked += [r for r in records if r.judge_best == best][:per_level]
    return picked


def test_retrain_learns_from_the_ledgers_verdicts(sqlite_url, clock, judged_records) -> None:
    records = _spread(judged_records, 8)
    _judged_ledger(sqlite_url, clock, records)
    ledger = Ledger(sqlite_url)
    try:
        source = LedgerSource(ledger, ("L0", "L1", "L2"), clock.t)
        examples = list(source.examples())
        assert source.judged() == len(examples) == len(records)
        truth = {r.instruction: r for r in records}
        for ex in examples:
            r = truth[ex.prompt]
            assert ex.preferred_level == ("L0", "L1", "L2")[r.judge_best]
            assert ex.energy_kwh["L2"] == pytest.approx(r.energy_kwh["L2"])  # recorded
            assert ex.source == "ledger" and 0.0 < ex.weight < 1.0
        # A young ledger trains beside the bundled recordings; a large one alone.
        auto = choose_sources("auto", ledger, ("L0", "L1", "L2"), clock.t)
        assert [s.name for s in auto] == ["ledger", "bundled"]
        alone = choose_sources(
            "auto", ledger, ("L0", "L1", "L2"), clock.t, min_ledger_examples=len(records)
        )
        assert [s.name for s in alone] == ["ledger"]
        result = retrain(ledger, data="ledger", config=FAST, held_out_fraction=0.25, now=clock.t)
        stored = ledger.latest_policy_version(CONTEXTUAL_KIND)
        assert stored is not None and stored.id == result.version
        assert stored.metrics["examples"]["sources"] == ["ledger"]
        assert stored.metrics["examples"]["judged"] == len(records)
        assert stored.metrics["held_out"]["n_held_out"] == 6  # a quarter of 24
    finally:
        ledger.close()


def test_estimated_energy_trains_no_energy_regression(ledger: Ledger) -> None:
    from sprout.data import WorkloadRecord
    from sprout.training.verdicts import VerdictExample

    levels = ("L0", "L1", "L2")
    record = WorkloadRecord(
        id="r",
        dataset="ledger",
        index=0,
        instruction="What is the capital of France?",
        energy_kwh=dict.fromkeys(levels, 1e-4),
        time_s=dict.fromkeys(levels, 2.0),
        output_tokens=dict.fromkeys(levels, 10),
        judge_sampled=True,
        judge_best=None,
    )
    sources = {"L0": "measured-nvml", "L1": "estimated", "L2": "recorded"}
    ex = LedgerSource(ledger, levels, datetime.now(UTC))._example(
        VerdictExample(record, 0.5, datetime.now(UTC), "L1", sources)
    )
    assert ex.energy_kwh["L0"] == ex.energy_kwh["L2"] == 1e-4
    assert np.isnan(ex.energy_kwh["L1"])  # an estimate is never trained on as a measurement
    assert ex.time_s["L1"] == 2.0 and ex.preferred_level is None and ex.weight == 0.5


def test_training_data_choices(ledger: Ledger) -> None:
    now = datetime.now(UTC)
    assert [s.name for s in choose_sources("auto", ledger, LEVELS3, now)] == ["bundled"]
    assert [s.name for s in choose_sources("both", None, LEVELS3, now)] == ["bundled"]
    assert [s.name for s in choose_sources("bundled", ledger, LEVELS3, now)] == ["bundled"]
    with pytest.raises(ConfigError, match="judge_sample_share"):
        choose_sources("ledger", ledger, LEVELS3, now)  # nothing judged yet
    with pytest.raises(ConfigError, match="needs a ledger"):
        choose_sources("ledger", None, LEVELS3, now)
    with pytest.raises(ConfigError, match="choose one of"):
        choose_sources("verdicts", ledger, LEVELS3, now)


def test_retrain_stores_a_verified_version(ledger: Ledger) -> None:
    result = retrain(ledger, sources=[SmallBundled()], config=FAST, note="test")
    assert result.version is not None
    record = ledger.latest_policy_version(CONTEXTUAL_KIND)
    assert record is not None and record.id == result.version
    held = record.metrics["held_out"]
    assert held["n_held_out"] > 0 and 0.0 < held["accuracy"] < 1.0
    assert "carbon_saving" in held["check"]
    assert record.metrics["split"] == {"seed": 0, "held_out_fraction": 0.5}
    json.dumps(record.params)  # plain JSON, no pickle
    loaded = load_policy(ledger, load_directives(load_settings(env={})), 0.1, 1e-4)
    assert loaded is not None
    policy, version = loaded
    assert isinstance(policy, ContextualPolicy) and version == result.version


def test_tampered_version_is_refused(ledger: Ledger, tmp_path: Path) -> None:
    result = retrain(ledger, sources=[SmallBundled()], config=FAST)
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    with engine.begin() as conn:
        row = conn.execute(
            text("SELECT params FROM policy_versions WHERE id = :i"), {"i": result.version}
        ).scalar_one()
        params = json.loads(row) if isinstance(row, str) else row
        params["model"]["margin"] = 0.5
        conn.execute(
            text("UPDATE policy_versions SET params = :p WHERE id = :i"),
            {"p": json.dumps(params), "i": result.version},
        )
    engine.dispose()
    with pytest.raises(Exception, match="sha256"):
        load_policy(ledger, load_directives(load_settings(env={})), 0.1, 1e-4)


def test_controller_falls_back_to_lp_then_picks_up_a_new_version(tmp_path: Path) -> None:
    prompt = [{"role": "user", "content": bundled_prompt()}]
    settings = make_settings(tmp_path, policy_refresh_s=3600.0)
    controller = build_controller(settings, rng=random.Random(0), poll=False)
    try:
        assert controller.policy.kind == "sprout-lp"  # nothing trained yet
        lp_version = controller.policy_version
        assert controller.chat(prompt).receipt
        assert controller.ledger is not None
        result = retrain(controller.ledger, sources=[SmallBundled()], config=FAST)
        watcher = PolicyWatcher(
            controller.ledger,
            lambda: load_policy(controller.ledger, controller.directives, 0.1, 1e-4),
            controller.swap_policy,
        )
        assert watcher.check()  # what the background thread does every policy_refresh_s
        assert not watcher.check()  # nothing newer
        assert isinstance(controller.policy, ContextualPolicy)
        assert controller.policy_version == result.version != lp_version
        answer = controller.chat(prompt)
        assert answer.receipt.decision == "contextual"
        assert answer.receipt.policy_version == result.version
    finally:
        controller.close()


def test_controller_starts_with_the_stored_version(tmp_path: Path) -> None:
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    result = retrain(led, sources=[SmallBundled()], config=FAST)
    led.close()
    controller = build_controller(make_settings(tmp_path), rng=random.Random(0), poll=False)
    try:
        assert isinstance(controller.policy, ContextualPolicy)
        assert controller.policy_version == result.version
    finally:
        controller.close()
    cushioned = build_controller(make_settings(tmp_path, policy_margin_z=1.0), poll=False)
    try:
        policy = cushioned.policy
        assert isinstance(policy, ContextualPolicy) and policy.margin_estimate.z == 1.0
        assert policy.margin == pytest.approx(policy.margin_estimate.prior + result.model.margin_se)
        assert policy.max_loss == DEFAULT_MAX_LOSS
    finally:
        cushioned.close()
    bounded = build_controller(make_settings(tmp_path, policy_max_loss=0.05), poll=False)
    try:
        assert isinstance(bounded.policy, ContextualPolicy) and bounded.policy.max_loss == 0.05
    finally:
        bounded.close()
    lp = build_controller(make_settings(tmp_path, policy_kind="lp"), poll=False)
    try:
        assert lp.policy.kind == "sprout-lp"
    finally:
        lp.close()


def test_watcher_keeps_the_current_policy_when_a_load_fails(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    retrain(ledger, sources=[SmallBundled()], config=FAST)
    swapped: list[object] = []

    def broken() -> None:
        raise ConfigError("bad model")

    watcher = PolicyWatcher(ledger, broken, lambda p, v: swapped.append(p), interval_s=0.01)
    with caplog.at_level(logging.ERROR, logger="sprout.training"):
        assert not watcher.check()
        assert not watcher.check()  # the broken version is not retried
    assert not swapped and "cannot be used" in caplog.text
    watcher.start()
    watcher.stop()


def test_cron_parsing_and_scheduling() -> None:
    from sprout.scheduler import create_scheduler

    assert parse_cron("0 3 * * *") == {
        "minute": "0",
        "hour": "3",
        "day": "*",
        "month": "*",
        "day_of_week": "*",
    }
    with pytest.raises(ConfigError, match="5 fields"):
        parse_cron("0 3 * *")
    with pytest.raises(ConfigError, match="retrain cron"):
        parse_cron("61 3 * * *")
    scheduler = create_scheduler()
    job = schedule_retrain(scheduler, lambda: None, "30 2 * * 1")
    assert "hour='2'" in str(job.trigger) and "minute='30'" in str(job.trigger)


def test_settings_validate_policy_options() -> None:
    with pytest.raises(ConfigError, match="policy_kind"):
        load_settings(env={}, policy_kind="magic")
    with pytest.raises(ConfigError, match="retrain_cron"):
        load_settings(env={}, retrain_cron="daily")
    with pytest.raises(ConfigError, match="policy_margin_z"):
        load_settings(env={"SPROUT_POLICY_MARGIN_Z": "-1"})
    with pytest.raises(ConfigError, match="policy_max_loss"):
        load_settings(env={"SPROUT_POLICY_MAX_LOSS": "1.5"})
    assert load_settings(env={"SPROUT_POLICY_MAX_LOSS": "0.1"}).policy_max_loss == 0.1
    assert load_settings(env={"SPROUT_POLICY_MAX_LOSS": "none"}).policy_max_loss is None


def test_cli_retrain_no_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sprout.cli import main
    from sprout.training import sources as module

    monkeypatch.setattr(module, "BundledSource", SmallBundled)
    monkeypatch.setenv("SPROUT_POLICY_MAX_LOSS", "0.1")
    out = tmp_path / "metrics.json"
    code = main(
        [
            "retrain",
            "--db",
            f"sqlite:///{tmp_path / 'x.db'}",
            "--no-store",
            "--split-seed",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "held out:" in printed and "stored" not in printed
    metrics = json.loads(out.read_text())
    assert metrics["split"]["seed"] == 1
    # The margin is estimated for the assignment the serving policy's bound allows.
    assert metrics["training"]["margin_max_loss"] == 0.1
    assert main(["retrain", "--held-out", "1.5"]) == 2


def test_a_swap_keeps_the_engaged_quality_guard(tmp_path: Path) -> None:
    from sprout.judge.quality import QualityGuardPolicy

    settings = make_settings(tmp_path, policy_refresh_s=3600.0)
    controller = build_controller(settings, rng=random.Random(0), poll=False)
    try:
        baseline = controller.directives.baseline
        controller.policy = QualityGuardPolicy(controller.policy, baseline, 0.3)
        assert controller.ledger is not None
        result = retrain(controller.ledger, sources=[SmallBundled()], config=FAST)
        loaded = load_policy(controller.ledger, controller.directives, 0.1, 1e-4)
        assert loaded is not None
        controller.swap_policy(*loaded)
        guard = controller.policy
        assert isinstance(guard, QualityGuardPolicy) and guard.l0_share == 0.3
        assert isinstance(guard.inner, ContextualPolicy)
        assert controller.policy_version == result.version
    finally:
        controller.close()


def test_the_judges_verdicts_revise_the_served_versions_margin(
    sqlite_url, clock, judged_records
) -> None:
    from sprout.carbon.trace import load_trace
    from sprout.factory import build_judge_job
    from sprout.judge.judges import ReplayJudge

    led = Ledger(sqlite_url)
    result = retrain(led, sources=[SmallBundled()], config=FAST)
    led.close()
    clock.t = load_trace("GB").time_of(3912)
    settings = load_settings(env={}, db_url=sqlite_url, judge_sample_share=1.0)
    c = build_controller(settings, clock=clock.now, monotonic=clock.monotonic, rng=random.Random(2))
    job = build_judge_job(settings, controller=c, judge=ReplayJudge(), clock=clock.now)
    records = judged_records[:: max(1, len(judged_records) // 40)][:40]
    try:
        policy = c.policy
        assert isinstance(policy, ContextualPolicy) and c.policy_version == result.version
        prior = policy.margin
        assert policy.margin_estimate.verdicts == 0
        for r in records:
            assert c.chat([{"role": "user", "content": r.instruction}]).receipt.decision == (
                "contextual"
            )
        clock.t += timedelta(hours=1)
        job.run()
        learnt = policy.margin_estimate.verdicts
        assert 0 < learnt <= len(records)  # ties carry no preference
        assert policy.margin != prior
        margin = policy.margin
    finally:
        job.close()
        c.close()
    # A restarted controller reads the same verdicts back: the margin survives.
    again = build_controller(settings, clock=clock.now, monotonic=clock.monotonic, poll=False)
    try:
        assert isinstance(again.policy, ContextualPolicy)
        assert again.policy.margin_estimate.verdicts == pytest.approx(learnt)
        assert again.policy.margin == pytest.approx(margin)
    finally:
        again.close()


def test_cli_retrain_reads_a_replayed_ledgers_verdicts_as_of_its_time(
    monkeypatch: pytest.MonkeyPatch, sqlite_url, clock, judged_records, tmp_path: Path, capsys
) -> None:
    from sprout.cli import main
    from sprout.training import sources as module

    monkeypatch.setattr(module, "BundledSource", SmallBundled)
    _judged_ledger(sqlite_url, clock, _spread(judged_records, 4))
    out = tmp_path / "m.json"
    base = ["retrain", "--db", sqlite_url, "--no-store", "--json", str(out)]
    assert main([*base, "--as-of", clock.t.isoformat()]) == 0
    assert json.loads(out.read_text())["examples"]["sources"] == ["ledger", "bundled-small"]
    # Weighed at today's date the replayed verdicts are months old: past the horizon.
    assert main(base) == 0
    assert json.loads(out.read_text())["examples"]["sources"] == ["bundled-small"]
    assert "sources: bundled-small" in capsys.readouterr().out
    assert main([*base, "--as-of", "yesterday"]) == 2
    assert "--as-of" in capsys.readouterr().err
    with Ledger(sqlite_url) as led:
        assert led.latest_policy_version(CONTEXTUAL_KIND) is None  # --no-store stored nothing
