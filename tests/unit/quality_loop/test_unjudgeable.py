"""A directive the judge cannot judge wastes nothing: no evaluation answers are generated
under it, the job says so once, and its quality estimate is its prior, never 0; an LLM judge
judges the same directive like any other."""

from __future__ import annotations

import io
import logging
import random
from collections import Counter
from datetime import UTC, datetime

import pytest

import sprout.quality_loop.job as job_module
from sprout.config import load_settings
from sprout.data import LEVELS
from sprout.demo import print_summary, run_demo
from sprout.engines.base import Engine, Generation
from sprout.factory import build_controller, build_judge_job, load_directives
from sprout.judge.judges import Judge, JudgeItem, JudgeResult, LLMJudge, ReplayJudge
from sprout.judge.quality import Observation, estimate_quality
from sprout.training.versions import bundled_level_stats, prior_quality
from tests.support.fakes import FixedPolicy

FOUR = """
description = "The three recorded levels and a one-word directive."
version = 1

[[directive]]
name = "L0"

[[directive]]
name = "L1"
system_prompt = "Always answer briefly"

[[directive]]
name = "L2"
system_prompt = "Always answer very briefly"

[[directive]]
name = "L3"
system_prompt = "Answer in one word"
max_new_tokens = 8
"""


@pytest.fixture
def four(tmp_path):
    path = tmp_path / "four.toml"
    path.write_text(FOUR)
    return str(path)


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """The warning is once per process: each test starts as a fresh process would."""
    monkeypatch.setattr(job_module, "_WARNED_UNJUDGEABLE", set())


def _unjudged_warnings(caplog):
    return [
        r
        for r in caplog.records
        if r.name == "sprout.judge" and r.levelno == logging.WARNING and "cannot judge" in r.message
    ]


def test_judges_declare_what_they_can_judge():
    names = ["L0", "L1", "L2", "L3"]
    assert ReplayJudge([]).can_judge(names) == frozenset(LEVELS)
    assert "LLM judge" in ReplayJudge([]).limitation(["L3"])
    assert _AnyEngine().name and LLMJudge(_AnyEngine()).can_judge(names) == frozenset(names)


def test_a_new_directive_gets_the_baseline_prior_and_keeps_it_while_unjudged(four):
    directives = load_directives(load_settings(env={}, policy_file=four))
    prior = prior_quality(directives)
    bundled = bundled_level_stats(directives).quality
    assert prior[:3] == pytest.approx(bundled) and prior[3] == pytest.approx(bundled[0])
    assert prior[3] > 0
    now = datetime(2023, 6, 13, tzinfo=UTC)
    verdicts = [Observation(now, "L1", "L1")] * 500
    counted = estimate_quality(verdicts, directives.names, now, prior=prior)
    kept = estimate_quality(verdicts, directives.names, now, prior=prior, unjudged=("L3",))
    assert counted.quality[3] < 0.2 * prior[3]  # verdicts it never took part in drown it
    assert kept.quality[3] == pytest.approx(prior[3])
    assert kept.quality[:3] == pytest.approx(counted.quality[:3])


def test_demo_with_a_fourth_directive_spends_nothing_on_it(four, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="sprout.judge")
    settings = load_settings(env={}, db_url=f"sqlite:///{tmp_path / 'd.db'}", policy_file=four)
    summary = run_demo(settings, prompts=120, progress=False)
    by_directive = Counter(r.directive for r in summary.evaluation)
    assert by_directive["L3"] == 0 and set(by_directive) <= set(LEVELS)
    verdicts = sum(run.verdicts for run in summary.judge_runs)
    preferred = sum(sum(run.preferred.values()) for run in summary.judge_runs)
    assert verdicts == preferred > 0  # every judged request got GPT-4's verdict
    assert len(summary.evaluation) == 2 * verdicts  # the other two recorded levels only
    assert all(run.deferred == 0 and not run.errors for run in summary.judge_runs)
    estimate = summary.judge_runs[-1].estimate
    assert estimate.levels[3] == "L3"
    assert estimate.quality[3] == pytest.approx(prior_quality(_four(four))[3])
    assert estimate.quality[3] > 0
    assert summary.judge_runs[-1].unjudged == ("L3",)
    assert "not judged: L3" in summary.judge_runs[-1].describe()
    printed = io.StringIO()
    print_summary(summary, printed)
    assert "not judged             L3" in printed.getvalue()
    assert "L3 0.381" in printed.getvalue()  # the baseline's bundled prior, not 0.000
    warnings = _unjudged_warnings(caplog)
    assert len(warnings) == 1  # once, though the job ticked every replayed hour
    assert "L3" in warnings[0].message and "replay judge" in warnings[0].message
    # The same judge and directive set again in this process: not said twice.
    run_demo(settings.replace(db_url=f"sqlite:///{tmp_path / 'e.db'}"), prompts=12, progress=False)
    assert len(_unjudged_warnings(caplog)) == 1


def _four(path):
    return load_directives(load_settings(env={}, policy_file=path))


class _AnyEngine(Engine):
    """Answers under any directive (what an LLM serving engine does)."""

    name = "any"

    def generate(self, request):
        system = next((m.content for m in request.messages if m.role == "system"), "")
        return Generation(f"answer ({system or 'no system prompt'})", 20, 8, 0.2, "any-model")


class _PrefersL3(Judge):
    """An LLM-like judge (it reads any answer) that prefers the one-word answer."""

    name = "prefers-l3"

    def __init__(self):
        self.seen: list[tuple[str, ...]] = []

    def judge(self, item: JudgeItem, meter=None) -> JudgeResult:
        self.seen.append(tuple(item.answers))
        return JudgeResult("L3", "preferred", "listwise")


def _loop(four, sqlite_url, clock, judge):
    settings = load_settings(
        env={}, db_url=sqlite_url, judge_sample_share=1.0, zone="GB", policy_file=four
    )
    engine = _AnyEngine()
    c = build_controller(
        settings, engine=engine, clock=clock.now, monotonic=clock.monotonic, rng=random.Random(0)
    )
    job = build_judge_job(settings, controller=c, judge=judge, engine=engine, clock=clock.now)
    return c, job


def test_an_llm_judge_judges_the_fourth_directive(four, sqlite_url, clock, caplog, judged_records):
    caplog.set_level(logging.WARNING, logger="sprout.judge")
    judge = _PrefersL3()
    c, job = _loop(four, sqlite_url, clock, judge)
    try:
        for r in judged_records[:5]:
            c.chat([{"role": "user", "content": r.instruction}], prompt_id=r.id)
        run = job.run()
        evaluation = [x for x in c.ledger.receipts() if x.purpose == "evaluation"]
    finally:
        job.close()
        c.close()
    assert not _unjudged_warnings(caplog) and run.unjudged == ()
    assert all(set(seen) == {"L0", "L1", "L2", "L3"} for seen in judge.seen)
    assert Counter(x.directive for x in evaluation)["L3"] == 5  # generated, metered
    assert run.preferred == {"L3": 5}
    prior = prior_quality(_four(four))[3]
    assert run.estimate.quality[3] > prior  # its verdicts move it from the prior


def test_a_request_served_under_an_unjudgeable_directive_costs_nothing(
    four, sqlite_url, clock, judged_records
):
    c, job = _loop(four, sqlite_url, clock, ReplayJudge())
    try:
        c.swap_policy(FixedPolicy(c.directives.get("L3")), None)
        c.chat([{"role": "user", "content": judged_records[0].instruction}])
        run = job.run()
        evaluation = [x for x in c.ledger.receipts() if x.purpose == "evaluation"]
        verdicts = c.ledger.verdicts()
    finally:
        job.close()
        c.close()
    assert run.outcomes == {"no-verdict": 1} and evaluation == [] and not run.errors
    assert "served under L3" in verdicts[0]["detail"]["reason"]


def test_a_judge_of_one_directive_generates_nothing(sqlite_url, clock, judged_records):
    class _OnlyBaseline(_PrefersL3):
        def can_judge(self, directives):
            return frozenset(directives) & {"L0"}

    settings = load_settings(env={}, db_url=sqlite_url, judge_sample_share=1.0, zone="GB")
    c = build_controller(settings, clock=clock.now, monotonic=clock.monotonic)
    c.swap_policy(FixedPolicy(c.directives.get("L0")), None)
    job = build_judge_job(settings, controller=c, judge=_OnlyBaseline(), clock=clock.now)
    try:
        c.chat([{"role": "user", "content": judged_records[0].instruction}])
        run = job.run()
    finally:
        job.close()
        c.close()
    assert run.outcomes == {"no-verdict": 1} and run.answers == 0
