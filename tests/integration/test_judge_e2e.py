"""End to end: the controller over a day of trace with the quality loop running beside it,
and ``sprout demo`` with ``sprout judge report`` on its ledger."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from sprout.carbon.trace import load_trace
from sprout.cli import main
from sprout.config import load_settings
from sprout.data import LEVELS
from sprout.demo import pick_prompts, run_demo
from sprout.factory import build_controller, build_judge_job, load_directives
from sprout.judge.judges import ReplayJudge
from sprout.judge.report import verdict_report
from sprout.ledger.audit import ledger_report
from sprout.policy.base import QUALITY_KIND
from sprout.training.versions import bundled_level_stats

START = 3912
HOUR = timedelta(hours=1)


def test_a_day_of_trace_with_the_quality_loop(sqlite_url, clock):
    trace = load_trace("GB")
    start = trace.time_of(START)
    clock.t = start
    settings = load_settings(env={}, db_url=sqlite_url, zone="GB", judge_sample_share=0.25)
    controller = build_controller(
        settings, clock=clock.now, monotonic=clock.monotonic, rng=random.Random(0)
    )
    job = build_judge_job(settings, controller=controller, judge=ReplayJudge(), clock=clock.now)
    bundled = controller.policy.stats.quality
    queue = pick_prompts(240, seed=0)
    records = {r.id: r for r in queue}
    runs, served = [], []
    try:
        for h in range(24):
            clock.t = start + h * HOUR
            runs.append(job.tick())  # the scheduler's hourly wake-up
            for k in range(10):
                clock.t = start + h * HOUR + (k + 1) * timedelta(minutes=5)
                record = queue.pop()
                served.append(
                    controller.chat(
                        [{"role": "user", "content": record.instruction}], prompt_id=record.id
                    ).receipt
                )
        clock.t = start + 24 * HOUR
        runs.append(job.tick())
        ledger = controller.ledger
        ledger.flush()
        sampled = controller.sampler.stats.sampled
        receipts = ledger.receipts()
        verdicts = ledger.verdicts()
        pending = ledger.sampled_prompts(pending=True)
        version = ledger.latest_policy_version(QUALITY_KIND)
        live = controller.policy.stats.quality
    finally:
        job.close()
        controller.close()

    # The loop ran at a low-carbon hour of the day, not at once and not every hour.
    timed = [r for r in runs if r.ran]
    assert timed and all(r.reason in ("low-carbon", "staleness") for r in timed)
    day = trace.ci_g_per_kwh[START : START + 24]
    assert timed[0].ci_g_per_kwh <= sorted(day)[6]  # among the day's cleanest hours
    assert runs[0].reason == "idle" and any(r.reason == "waiting" for r in runs)

    # Verdicts: one per judged sampled request, each GPT-4's recorded preference.
    judged = {v["request_id"]: v for v in verdicts}
    assert 40 <= sampled == len(judged) + len(pending)
    assert len(judged) >= 30
    by_request = {r.request_id: r for r in served}
    for request_id, v in judged.items():
        receipt = by_request[request_id]
        assert v["preferred_directive"] == LEVELS[records[receipt.prompt_id].judge_best]
        assert v["served_directive"] == receipt.directive

    # Refreshed estimates: stored, and what the live optimizer now uses.
    assert version is not None and version.params["n_verdicts"] == len(judged)
    assert live == pytest.approx(tuple(version.params["quality"]))
    assert live != bundled

    # Overhead receipts: the other directives' answers, at the judge's hours, as evaluation.
    evaluation = [r for r in receipts if r.purpose == "evaluation"]
    assert len(evaluation) == 2 * len(judged)
    assert {r.decision for r in evaluation} == {"judge-answer"}
    assert {r.ci_g_per_kwh for r in evaluation} <= {r.ci_g_per_kwh for r in timed}
    assert len([r for r in receipts if r.purpose == "serve"]) == 240
    report = ledger_report(sqlite_url)
    assert report.totals.eval_requests == len(evaluation)
    assert report.totals.eval_g == pytest.approx(sum(r.total_g for r in evaluation))
    assert report.totals.net_saved_g == pytest.approx(report.totals.saved_g - report.totals.eval_g)
    assert report.totals.judged == sum(v["preferred_directive"] is not None for v in verdicts)
    vr = verdict_report(sqlite_url)
    assert vr.total == len(judged) and vr.eval_requests == len(evaluation)
    assert [r.directive for r in vr.rows] == list(LEVELS)


def test_demo_includes_the_quality_loop_and_the_report_shows_it(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    summary = run_demo(load_settings(env={}, db_url=url), hours=24, prompts=200, progress=False)
    assert summary.sampled > 0 and summary.judge_runs
    assert summary.judge_runs[-1].reason == "end of demo"
    assert sum(r.verdicts for r in summary.judge_runs) == summary.sampled
    assert summary.evaluation and {r.purpose for r in summary.evaluation} == {"evaluation"}
    assert len(summary.receipts) == summary.ledger_count == 200  # served ones only

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["demo", "--hours", "6", "--prompts", "60", "--db", url, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Quality loop" in out and f"sprout judge report --db {url}" in out
    assert "evaluation overhead" in out and "quality estimate" in out
    assert main(["judge", "report", "--db", url]) == 0
    report = capsys.readouterr().out
    assert "judge: replay:gpt-4" in report and "normalized preference" in report
    assert "verdicts: 0" not in report


def test_demo_without_the_loop_is_unchanged(tmp_path):
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    summary = run_demo(
        load_settings(env={}, db_url=url), hours=2, prompts=10, progress=False, judge_share=0
    )
    assert summary.sampled == 0 and not summary.judge_runs and not summary.evaluation
    assert bundled_level_stats(load_directives(load_settings(env={}))).quality
