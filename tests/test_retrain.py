"""``sprout retrain``: training data, the split, storing and loading policy versions, the
controller picking up new versions, and the scheduled job."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from sprout.config import load_settings
from sprout.data import DATASETS, load_workload
from sprout.errors import ConfigError
from sprout.factory import build_controller, load_directives
from sprout.ledger.store import Ledger
from sprout.policy.contextual import CONTEXTUAL_KIND, ContextualPolicy, FeatureConfig
from sprout.policy.retrain import (
    BundledSource,
    PolicyWatcher,
    TrainingExample,
    held_out_mask,
    ledger_sources,
    load_policy,
    parse_cron,
    retrain,
    schedule_retrain,
    training_set,
)
from sprout.sim.workload import PromptSplit, bundled_workload

PER_DATASET = 120
FAST = FeatureConfig(max_features=2000, cv_folds=3)


class SmallBundled:
    """The first judged prompts of each bundled workload (fast to train on)."""

    name = "bundled-small"

    def examples(self) -> Iterable[TrainingExample]:
        for d in DATASETS:
            rows = [r for r in load_workload((d,)) if r.judge_sampled][:PER_DATASET]
            for r in rows:
                yield TrainingExample(
                    r.instruction,
                    None if r.judge_best is None else ("L0", "L1", "L2")[r.judge_best],
                    r.energy_kwh,
                    r.time_s,
                    group=r.dataset,
                    source=self.name,
                )


@pytest.fixture()
def ledger(tmp_path: Path) -> Iterable[Ledger]:
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield led
    led.close()


def _settings(tmp_path: Path, **kw: object) -> object:
    return load_settings(
        env={}, db_url=f"sqlite:///{tmp_path / 'ledger.db'}", carbon_provider="static", **kw
    )


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


def test_ledger_sources_are_the_extension_point(ledger: Ledger) -> None:
    assert ledger_sources(ledger) == []  # no verdicts table yet: the bundled data train


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


def _bundled_prompt() -> str:
    return next(r.instruction for r in load_workload(("triviaqa",)) if r.judge_sampled)


def test_controller_falls_back_to_lp_then_picks_up_a_new_version(tmp_path: Path) -> None:
    prompt = [{"role": "user", "content": _bundled_prompt()}]
    settings = _settings(tmp_path, policy_refresh_s=3600.0)
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
    controller = build_controller(_settings(tmp_path), rng=random.Random(0), poll=False)
    try:
        assert isinstance(controller.policy, ContextualPolicy)
        assert controller.policy_version == result.version
    finally:
        controller.close()
    lp = build_controller(_settings(tmp_path, policy_kind="lp"), poll=False)
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
    with caplog.at_level(logging.ERROR, logger="sprout.policy.retrain"):
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


def test_cli_retrain_no_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sprout.cli import main
    from sprout.policy import retrain as module

    monkeypatch.setattr(module, "BundledSource", SmallBundled)
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
    assert json.loads(out.read_text())["split"]["seed"] == 1
    assert main(["retrain", "--held-out", "1.5"]) == 2
