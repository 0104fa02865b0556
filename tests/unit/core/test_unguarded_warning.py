"""A controller serving the per-request (contextual) policy with no quality loop says once,
at start, that its quality on traffic unlike its training data is unguarded."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import pytest

from sprout.factory import build_controller
from sprout.ledger.store import Ledger
from sprout.policy.contextual import ContextualPolicy
from sprout.training.retrain import retrain
from tests.support.settings import make_settings
from tests.support.workloads import FAST, SmallBundled, bundled_prompt


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "sprout.policy" and r.levelno == logging.WARNING and "unguarded" in r.message
    ]


@pytest.fixture
def trained(tmp_path: Path) -> int:
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        return retrain(led, sources=[SmallBundled()], config=FAST).version
    finally:
        led.close()


def test_contextual_policy_without_a_quality_loop_warns_once_at_start(
    tmp_path: Path, trained: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sprout.policy")
    controller = build_controller(make_settings(tmp_path), rng=random.Random(0), poll=False)
    try:
        assert isinstance(controller.policy, ContextualPolicy) and controller.sampler is None
        for _ in range(3):
            controller.chat([{"role": "user", "content": bundled_prompt()}])
    finally:
        controller.close()
    warnings = _warnings(caplog)
    assert len(warnings) == 1  # at start, not per request
    message = warnings[0].message
    assert f"version {trained}" in message and "judge_sample_share" in message
    assert "traffic unlike its training data is unguarded" in message


def test_no_warning_with_a_quality_loop_or_the_lp(
    tmp_path: Path, trained: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sprout.policy")
    sampled = build_controller(
        make_settings(tmp_path, judge_sample_share=0.1), rng=random.Random(0), poll=False
    )
    sampled.close()
    lp = build_controller(
        make_settings(tmp_path, policy_kind="lp"), rng=random.Random(0), poll=False
    )
    lp.close()
    assert _warnings(caplog) == []


def test_a_contextual_policy_picked_up_later_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sprout.policy")
    controller = build_controller(
        make_settings(tmp_path, policy_refresh_s=0.05), rng=random.Random(0), poll=False
    )
    try:
        assert controller.policy.kind == "sprout-lp" and _warnings(caplog) == []
        assert controller.ledger is not None
        first = retrain(controller.ledger, sources=[SmallBundled()], config=FAST).version
        deadline = time.monotonic() + 30
        while controller.policy_version != first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert isinstance(controller.policy, ContextualPolicy)
        second = retrain(controller.ledger, sources=[SmallBundled()], config=FAST).version
        while controller.policy_version != second and time.monotonic() < deadline:
            time.sleep(0.05)
        assert controller.policy_version == second
    finally:
        controller.close()
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and f"version {first}" in warnings[0].message
