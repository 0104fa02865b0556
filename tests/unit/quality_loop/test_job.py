"""The judge job: answers under the other directives, verdicts, evaluation overhead, timing,
staleness, retention, failures, the quality guard, and the ``sprout judge`` commands."""

from __future__ import annotations

import logging
import math
import random
from datetime import timedelta

import pytest

from sprout.carbon.trace import load_trace
from sprout.cli import main
from sprout.config import load_settings
from sprout.data import LEVELS
from sprout.engines.base import Engine
from sprout.engines.openai_compat import OpenAIEngine
from sprout.errors import EngineError, UnknownPromptError
from sprout.factory import build_controller, build_judge_job, load_directives
from sprout.judge.judges import Judge, JudgeItem, JudgeResult, LLMJudge, ReplayJudge
from sprout.judge.quality import GUARD_REASON, Observation, QualityGuardPolicy, estimate_quality
from sprout.ledger.audit import ledger_report
from sprout.ledger.locks import job_lock
from sprout.policy.base import QUALITY_KIND
from sprout.policy.sprout_lp import SproutLPPolicy
from sprout.quality_loop.job import JudgeJob, cron_fields, hour_index
from sprout.training.versions import bundled_level_stats
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.settings import make_settings

START = 3912  # 2023-06-13 00:00 UTC in the bundled traces
HOUR = timedelta(hours=1)


def _settings(url, **kw):
    """Every request sampled, the carbon intensity from the GB trace (read at the test's clock)."""
    base = dict(carbon_provider="trace", zone="GB", judge_sample_share=1.0)
    return make_settings(url, **{**base, **kw})


@pytest.fixture
def trace():
    return load_trace("GB")


def _controller(settings, clock, trace, seed=0):
    clock.t = trace.time_of(START)
    return build_controller(
        settings, clock=clock.now, monotonic=clock.monotonic, rng=random.Random(seed)
    )


def _serve(controller, records, **kw):
    return [
        controller.chat([{"role": "user", "content": r.instruction}], prompt_id=r.id, **kw)
        for r in records
    ]


@pytest.fixture
def loop(sqlite_url, clock, trace):
    settings = _settings(sqlite_url)
    c = _controller(settings, clock, trace)
    job = build_judge_job(settings, controller=c, judge=ReplayJudge(), clock=clock.now)
    yield c, job
    job.close()
    c.close()


def test_a_run_answers_the_other_directives_judges_and_meters_it(loop, judged_records, clock):
    c, job = loop
    records = judged_records[:6]
    served = {r.receipt.request_id: r.receipt for r in _serve(c, records)}
    bundled = c.policy.stats.quality
    clock.t += 3 * HOUR
    run = job.run()
    assert run.ran and run.picked == 6 and run.verdicts == 6 and run.deferred == 0
    assert run.answers == 12 and run.judge_calls == 0  # two other directives each
    # Verdicts: GPT-4's recorded preference for each prompt.
    verdicts = {v["request_id"]: v for v in c.ledger.verdicts()}
    by_id = {r.id: r for r in records}
    for request_id, receipt in served.items():
        v = verdicts[request_id]
        assert v["preferred_directive"] == LEVELS[by_id[receipt.prompt_id].judge_best]
        assert v["served_directive"] == receipt.directive and v["judge"] == "replay:gpt-4"
        assert v["detail"]["evaluation"][receipt.directive] == "served"
    assert c.ledger.sampled_prompts(pending=True) == []  # the queue is empty
    # The overhead: one evaluation receipt per generated answer, at the run's intensity.
    evaluation = [r for r in c.ledger.receipts() if r.purpose == "evaluation"]
    assert len(evaluation) == 12
    assert {r.decision for r in evaluation} == {"judge-answer"}
    assert {r.energy_source for r in evaluation} == {"recorded"}
    assert {r.ci_g_per_kwh for r in evaluation} == {run.ci_g_per_kwh}
    assert run.carbon_g == pytest.approx(sum(r.total_g for r in evaluation))
    for request_id, receipt in served.items():
        ids = verdicts[request_id]["detail"]["evaluation"]
        mine = [r for r in evaluation if r.request_id in ids.values()]
        assert sorted(r.directive for r in mine) == sorted(set(LEVELS) - {receipt.directive})
        assert {r.prompt_id for r in mine} == {receipt.prompt_id}
    report = ledger_report(c.ledger.url)
    assert report.totals.eval_requests == 12 and report.totals.eval_g > 0
    assert report.totals.judged == 6
    # The estimates are refreshed, stored and given to the controller's optimizer.
    assert run.estimate is not None and run.estimate.n_verdicts == 6
    assert c.policy.stats.quality == pytest.approx(run.estimate.quality)
    assert c.policy.stats.quality != bundled
    stored = c.ledger.latest_policy_version(QUALITY_KIND)
    assert stored.params["quality"] == pytest.approx(list(run.estimate.quality))
    assert c.ledger.latest_policy_version("sprout-lp").id == c.policy_version
    assert "3 verdicts" not in run.describe() and "6 verdicts" in run.describe()


def test_llm_judge_calls_are_written_as_evaluation_overhead(
    sqlite_url, clock, trace, judged_records
):
    settings = _settings(sqlite_url)
    c = _controller(settings, clock, trace)
    with FakeOpenAIServer("[[B]]") as server:
        judge = LLMJudge(
            OpenAIEngine(server.url, "judge-model", max_retries=0), protocol="pairwise"
        )
        job = build_judge_job(settings, controller=c, judge=judge, clock=clock.now)
        try:
            _serve(c, judged_records[:3])
            run = job.run()
        finally:
            job.close()
            c.close()
    ledger = job.ledger
    assert run.judge_calls == 3 * 6  # 3 pairs, both orders, per request
    assert run.outcomes == {"tie": 3}  # "[[B]]" whatever the order: position bias, a tie
    calls = [r for r in _all(sqlite_url) if r.decision == "judge-call"]
    assert len(calls) == 18 and {r.purpose for r in calls} == {"evaluation"}
    assert {r.directive for r in calls} == {"judge"} and {r.engine for r in calls} == {"openai"}
    assert {r.energy_source for r in calls} == {"estimated"}  # a remote judge is estimated
    assert {r.model for r in calls} == {"judge-model"}
    del ledger


def _all(url):
    from sprout.ledger.store import Ledger

    ledger = Ledger(url)
    try:
        return ledger.receipts()
    finally:
        ledger.close()


def test_tick_waits_for_the_forecast_low_carbon_hour(sqlite_url, clock, trace, judged_records):
    settings = _settings(sqlite_url, judge_max_staleness_h=30)
    c = _controller(settings, clock, trace)
    job = build_judge_job(settings, controller=c, judge=ReplayJudge(), clock=clock.now)
    try:
        assert job.tick().reason == "idle" and job.timer.last_run_hour is None
        _serve(c, judged_records[:4])
        runs = {}
        for h in range(1, 24):
            clock.t = trace.time_of(START + h)
            runs[h] = job.tick()
    finally:
        job.close()
        c.close()
    ran = [h for h, r in runs.items() if r.ran]
    assert len(ran) == 1 and runs[ran[0]].reason == "low-carbon"
    # With the trace as a perfect forecast, the run lands on the hour of least
    # decay-adjusted intensity between the 6 h gap and the deadline (28 h: 30 h less a tick).
    ci = trace.ci_g_per_kwh
    best = min(range(6, 24), key=lambda h: ci[START + h] * math.exp(0.029 * h))
    assert ran == [best] and runs[best].verdicts == 4
    assert all(runs[h].reason == "waiting" for h in range(1, best))


def test_staleness_forces_a_run_at_a_dirty_hour(sqlite_url, clock, trace, judged_records):
    settings = _settings(sqlite_url, judge_max_staleness_h=3, judge_use_forecast=False)
    c = _controller(settings, clock, trace)
    job = build_judge_job(settings, controller=c, judge=ReplayJudge(), clock=clock.now)
    try:
        _serve(c, judged_records[:2])
        clock.t = trace.time_of(START + 1)
        assert job.tick().reason == "waiting"  # within Sprout's 6 h minimum gap
        clock.t = trace.time_of(START + 2)  # the last tick before the 3 h deadline
        run = job.tick()
    finally:
        job.close()
        c.close()
    assert run.ran and run.reason == "staleness" and run.verdicts == 2


def test_replicas_do_not_duplicate_the_job(loop, judged_records):
    c, job = loop
    _serve(c, judged_records[:2])
    with job_lock(c.ledger.url, "judge") as held:
        assert held
        run = job.run()
    assert not run.ran and run.reason == "locked" and "another process" in run.describe()
    c.sampler.flush()
    assert len(c.ledger.sampled_prompts(pending=True)) == 2
    assert job.run().verdicts == 2


def test_a_prompt_whose_receipt_is_not_stored_yet_waits(loop, judged_records, clock):
    c, job = loop
    c.ledger.add_sampled_prompt(
        "not-yet", {"messages": [{"role": "user", "content": "x"}]}, created_at=clock.t
    )
    run = job.run()
    assert run.deferred == 1 and run.verdicts == 0
    assert [p["request_id"] for p in c.ledger.sampled_prompts(pending=True)] == ["not-yet"]


class _FailingEngine(Engine):
    name = "failing"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def generate(self, request):
        raise self.error


def test_transient_failures_retry_until_the_staleness_deadline(
    sqlite_url, clock, trace, judged_records
):
    settings = _settings(sqlite_url, judge_max_staleness_h=5)
    c = _controller(settings, clock, trace)
    job = build_judge_job(
        settings,
        controller=c,
        judge=ReplayJudge(),
        engine=_FailingEngine(EngineError("server down")),
        clock=clock.now,
    )
    try:
        _serve(c, judged_records[:1])
        first = job.run()
        assert first.deferred == 1 and first.verdicts == 0 and "server down" in first.errors[0]
        clock.t += 6 * HOUR
        late = job.run()
    finally:
        job.close()
        c.close()
    assert late.outcomes == {"no-verdict": 1}
    verdict = _verdicts(sqlite_url)[0]
    assert verdict["preferred_directive"] is None and "server down" in verdict["detail"]["error"]


def test_a_prompt_that_can_never_be_answered_leaves_the_queue(
    sqlite_url, clock, trace, judged_records
):
    settings = _settings(sqlite_url)
    c = _controller(settings, clock, trace)
    job = build_judge_job(
        settings,
        controller=c,
        judge=ReplayJudge(),
        engine=_FailingEngine(UnknownPromptError("no recording")),
        clock=clock.now,
    )
    try:
        _serve(c, judged_records[:1])
        run = job.run()
        assert run.outcomes == {"no-verdict": 1} and c.ledger.sampled_prompts(pending=True) == []
    finally:
        job.close()
        c.close()


def _verdicts(url):
    from sprout.ledger.store import Ledger

    ledger = Ledger(url)
    try:
        return ledger.verdicts()
    finally:
        ledger.close()


def test_prompts_past_retention_are_deleted_not_judged(sqlite_url, clock, trace, judged_records):
    settings = _settings(sqlite_url, prompt_retention_days=1)
    c = _controller(settings, clock, trace)
    job = build_judge_job(settings, controller=c, judge=ReplayJudge(), clock=clock.now)
    try:
        _serve(c, judged_records[:2])
        clock.t += timedelta(days=2)
        _serve(c, judged_records[2:3])
        run = job.run()
        assert run.picked == 1 and run.verdicts == 1
        assert len(c.ledger.sampled_prompts()) == 1  # the two old prompts are gone
    finally:
        job.close()
        c.close()


class _PrefersBaseline(Judge):
    """A judge that always prefers L0: brevity costs quality everywhere."""

    name = "always-l0"

    def judge(self, item: JudgeItem, meter=None) -> JudgeResult:
        return JudgeResult("L0", "preferred", "listwise")


def test_quality_below_the_floor_moves_the_optimizer_back_toward_l0(
    sqlite_url, clock, trace, judged_records, caplog
):
    settings = _settings(sqlite_url, judge_min_verdicts=20)
    c = _controller(settings, clock, trace)
    clock.t = trace.time_of(START + 18)  # a dirty evening hour: the LP serves little L0
    job = build_judge_job(settings, controller=c, judge=_PrefersBaseline(), clock=clock.now)
    try:
        before = _serve(c, judged_records[:60])
        assert sum(r.receipt.directive == "L0" for r in before) < 30
        with caplog.at_level(logging.WARNING, logger="sprout.judge"):
            run = job.run()
        e = run.estimate
        assert e.below_floor and e.preference < e.floor == pytest.approx(0.9)
        assert any("below the floor" in m for m in caplog.messages)  # logged ...
        note = c.ledger.latest_policy_version(QUALITY_KIND).note
        assert note.startswith("WARNING: estimated quality below the floor")  # ... and stored
        assert isinstance(c.policy, QualityGuardPolicy) and c.policy.l0_share == e.l0_share
        # The LP learnt that only L0 is preferred, and the guard serves a share at L0.
        assert c.policy.inner.stats.quality[0] > 0.5
        after = _serve(c, judged_records[60:160])
        assert sum(r.receipt.decision == GUARD_REASON for r in after) > 0
        share_l0 = sum(r.receipt.directive == "L0" for r in after) / len(after)
        assert share_l0 > sum(r.receipt.directive == "L0" for r in before) / len(before) + 0.3
        # Verdicts on the guard's own L0 requests do not prop up the policy's estimate.
        second = job.run()
        forced = [v for v in c.ledger.verdicts() if v["detail"]["served_decision"] == GUARD_REASON]
        assert len(forced) == sum(r.receipt.decision == GUARD_REASON for r in after)
        assert second.estimate.below_floor
        naive = estimate_quality(
            [
                Observation(
                    v["receipt_created_at"], v["served_directive"], v["preferred_directive"]
                )
                for v in c.ledger.verdicts()
            ],
            LEVELS,
            clock.t,
        ).preference
        assert naive > second.estimate.preference + 0.2  # counting them would hide the gap
    finally:
        job.close()
        c.close()
    # A restarted controller keeps what the quality loop learnt: the guard and the estimates.
    again = _controller(settings, clock, trace)
    try:
        assert isinstance(again.policy, QualityGuardPolicy)
        assert again.policy.inner.stats.quality == pytest.approx(second.estimate.quality)
        assert again.policy.l0_share == pytest.approx(second.estimate.l0_share)
        assert (
            again.policy.inner.stats.quality
            != bundled_level_stats(load_directives(settings)).quality
        )
    finally:
        again.close()


def test_judge_commands_run_and_report(loop, judged_records, capsys, monkeypatch):
    c, _job = loop
    # The requests were served in replayed 2023: a real-time retention would prune them.
    monkeypatch.setenv("SPROUT_PROMPT_RETENTION_DAYS", "0")
    _serve(c, judged_records[:5])
    c.sampler.flush()
    c.ledger.flush()
    url = c.ledger.url
    assert main(["judge", "report", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "verdicts: 0" in out and "queued: 5 sampled requests" in out
    assert main(["judge", "run", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "5 verdicts" in out and "evaluation overhead: 10 answers" in out
    assert main(["judge", "report", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "verdicts: 5 (5 preferred one directive" in out and "queued: none" in out
    assert "judge: replay:gpt-4" in out and "evaluation overhead: 10 generations" in out
    for level in LEVELS:
        assert f"\n{level} " in out
    assert "quality estimate (" in out
    assert main(["judge", "report", "--db", url, "--until", "2020-01-01"]) == 0
    assert "verdicts: 0" in capsys.readouterr().out
    assert main(["judge", "report", "--db", url, "--format", "json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["verdicts"] == 5 and doc["evaluation_overhead"]["requests"] == 10
    assert sum(d["preferred"] for d in doc["directives"]) == 5


def test_judge_commands_reject_bad_input(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["judge", "report", "--db", missing]) == 2
    assert "no ledger at" in capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'l.db'}"
    assert main(["db", "upgrade", "--db", url]) == 0
    assert main(["judge", "report", "--db", url, "--since", "yesterday"]) == 2
    assert "--since" in capsys.readouterr().err
    assert (
        main(["judge", "report", "--db", url, "--since", "2024-02-01", "--until", "2024-01-01"])
        == 2
    )


def test_helpers():
    assert cron_fields("5 * * * *") == {
        "minute": "5",
        "hour": "*",
        "day": "*",
        "month": "*",
        "day_of_week": "*",
    }
    with pytest.raises(ValueError):
        cron_fields("5 * *")
    from datetime import UTC, datetime

    assert hour_index(datetime(1970, 1, 1, 2, 59, tzinfo=UTC)) == 2
    from sprout.errors import ConfigError

    with pytest.raises(ConfigError, match="judge_cron"):
        load_settings(env={}, judge_cron="hourly")


def test_the_job_schedules_itself_on_apscheduler(loop):
    from sprout.scheduler import create_scheduler

    c, job = loop
    scheduler = create_scheduler()
    added = job.schedule(scheduler, "5 * * * *")
    assert added.id == "sprout-judge" and str(added.trigger).startswith("cron[")
    job._scheduled_tick()  # runs a tick; failures are logged, never raised
    assert isinstance(job, JudgeJob) and isinstance(c.policy, SproutLPPolicy)


def test_judge_schedule_command_is_registered(capsys):
    with pytest.raises(SystemExit) as done:
        main(["judge", "schedule", "--help"])
    assert done.value.code == 0
    assert "judge_max_staleness_h" in capsys.readouterr().out


def test_a_replica_follows_the_estimates_another_process_stores(
    sqlite_url, clock, trace, judged_records
):
    from sprout.quality_loop.live import QualityFollower

    settings = _settings(sqlite_url, judge_min_verdicts=5)
    serving = _controller(settings, clock, trace)
    other = _controller(settings.replace(judge_sample_share=0.0), clock, trace, seed=1)
    follower = QualityFollower(other, settings.xi)
    judge = build_judge_job(settings, judge=_PrefersBaseline(), clock=clock.now)  # standalone
    try:
        assert not follower.poll()  # nothing stored yet
        clock.t = trace.time_of(START + 18)
        _serve(serving, judged_records[:20])
        serving.sampler.flush()
        serving.ledger.flush()
        estimate = judge.run().estimate
        assert estimate.below_floor
        assert follower.poll() and not follower.poll()  # applied once
        assert isinstance(other.policy, QualityGuardPolicy)
        assert other.policy.inner.stats.quality == pytest.approx(estimate.quality)
        assert other.policy_version == other.ledger.latest_policy_version("sprout-lp").id
    finally:
        judge.close()
        other.close()
        serving.close()
