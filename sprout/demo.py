"""``sprout demo``: a day of a bundled zone's carbon trace replayed through the controller.

Bundled prompts (GPT-4-judged, so every directive's answer was recorded) arrive evenly
over the replayed hours; each goes through the real controller (trace carbon signal,
Sprout LP policy, replay engine, SQLite ledger). The summary is computed from the receipts
read back from the ledger.

The quality loop runs too: a share of the requests is sampled, and the judge job (replay
engine for the other directives' answers, replay judge for GPT-4's recorded verdicts) wakes
up every replayed hour, runs when the timing rule picks a low-carbon hour, and judges what
is still queued at the end; ``sprout judge report --db URL`` shows the verdicts.
"""

from __future__ import annotations

import random
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TextIO

from sprout.config import Settings
from sprout.data import DATASETS, WorkloadRecord, load_workload
from sprout.errors import ConfigError
from sprout.factory import build_controller, build_judge_job
from sprout.judge.judges import ReplayJudge
from sprout.receipt import Receipt

if TYPE_CHECKING:
    from sprout.quality_loop.run import JudgeRun

HOUR = timedelta(hours=1)
#: Share of the demo's requests the quality loop samples (live deployments use far less).
DEMO_JUDGE_SHARE = 0.1
#: A June week in the bundled traces: long days, with solar and wind moving the intensity.
DEFAULT_START_HOUR = 3912


class ReplayClock:
    """A settable clock, so the controller lives through replayed hours in seconds."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        """The replayed time."""
        return self._now

    def monotonic(self) -> float:
        """Seconds on the replayed timeline (for the signal's refresh interval)."""
        return self._now.timestamp()

    def set(self, when: datetime) -> None:
        """Move the clock to ``when``."""
        self._now = when


@dataclass
class DemoSummary:
    """What the demo did, from the receipts in the ledger."""

    db_url: str
    zone: str
    start: datetime
    hours: int
    receipts: list[Receipt] = field(default_factory=list)
    judge_best: dict[str, int | None] = field(default_factory=dict)
    ledger_count: int = 0
    evaluation: list[Receipt] = field(default_factory=list)
    judge_runs: list[JudgeRun] = field(default_factory=list)
    sampled: int = 0

    @property
    def emitted_g(self) -> float:
        """Carbon of the requests as served, gCO2e."""
        return sum(r.total_g for r in self.receipts)

    @property
    def baseline_g(self) -> float:
        """Carbon had every request been served at L0, gCO2e."""
        return sum(r.baseline_g or 0.0 for r in self.receipts)

    @property
    def saving(self) -> float:
        """Fractional carbon saving against always-L0."""
        return 1.0 - self.emitted_g / self.baseline_g if self.baseline_g else 0.0

    def preferred_share(self) -> tuple[float, float]:
        """(share served the judge-preferred directive, that share for always-L0)."""
        judged = [(r, self.judge_best[r.prompt_id or ""]) for r in self.receipts]
        judged = [(r, best) for r, best in judged if best is not None]
        if not judged:
            return 0.0, 0.0
        served = sum(1 for r, best in judged if r.directive == f"L{best}")
        base = sum(1 for _, best in judged if best == 0)
        return served / len(judged), base / len(judged)


def pick_prompts(n: int, seed: int) -> list[WorkloadRecord]:
    """``n`` judged prompts, drawn evenly across the six datasets."""
    rng = random.Random(seed)
    pools = {
        d: [r for r in load_workload([d]) if r.judge_sampled and r.judge_best is not None]
        for d in DATASETS
    }
    out = [rng.choice(pools[DATASETS[i % len(DATASETS)]]) for i in range(n)]
    rng.shuffle(out)
    return out


def run_demo(
    settings: Settings,
    *,
    hours: int = 24,
    start_hour: int = DEFAULT_START_HOUR,
    prompts: int = 300,
    seed: int = 0,
    progress: bool = True,
    judge_share: float = DEMO_JUDGE_SHARE,
) -> DemoSummary:
    """Replay ``hours`` of the trace with ``prompts`` requests into ``settings.db_url``;
    ``judge_share`` of them are sampled for the quality loop (0: no loop)."""
    from tqdm import tqdm

    from sprout.carbon.trace import load_trace

    if hours < 1 or prompts < 1:
        raise ConfigError("the demo needs at least one hour and one prompt")
    trace = load_trace(settings.carbon_trace or settings.zone, settings.carbon_column)
    trace.window(start_hour, hours)  # raises a clear error when the window does not fit
    start = trace.time_of(start_hour)
    clock = ReplayClock(start)
    records = pick_prompts(prompts, seed)
    settings = settings.replace(zone=trace.zone, judge_sample_share=judge_share)
    controller = build_controller(
        settings,
        clock=clock.now,
        monotonic=clock.monotonic,
        rng=random.Random(seed),
    )
    ledger = controller.ledger
    assert ledger is not None
    job = (
        build_judge_job(settings, controller=controller, judge=ReplayJudge(), clock=clock.now)
        if judge_share > 0
        else None
    )
    runs: list[JudgeRun] = []
    spacing_s = hours * 3600 / len(records)
    seen_hours: set[datetime] = set()
    ticked = -1
    try:
        bar = tqdm(records, desc="requests", unit="req", disable=not progress, file=sys.stderr)
        for i, record in enumerate(bar):
            when = start + timedelta(seconds=(i + 0.5) * spacing_s)
            hour = int((when - start) / HOUR)
            while job is not None and ticked < hour:  # the scheduler's hourly wake-ups
                ticked += 1
                clock.set(start + ticked * HOUR)
                runs.append(job.tick())
            clock.set(when)
            result = controller.chat(
                [{"role": "user", "content": record.instruction}], prompt_id=record.id
            )
            reading_hour = result.receipt.ci_time
            if reading_hour not in seen_hours:
                seen_hours.add(reading_hour)
                ledger.add_readings([controller.signal.read().reading])
        if job is not None:  # the end of the replay: judge what is still queued
            clock.set(start + hours * HOUR)
            runs.append(job.run(reason="end of demo"))
        ledger.flush()
        summary = DemoSummary(settings.db_url, trace.zone, start, hours)
        stored = ledger.receipts()
        summary.receipts = [r for r in stored if r.purpose == "serve"]
        summary.evaluation = [r for r in stored if r.purpose == "evaluation"]
        summary.ledger_count = len(summary.receipts)
        summary.judge_best = {r.id: r.judge_best for r in records}
        summary.judge_runs = [r for r in runs if r.ran]
        summary.sampled = controller.sampler.stats.sampled if controller.sampler else 0
    finally:
        if job is not None:
            job.close()
        controller.close()
    return summary


def print_summary(summary: DemoSummary, out: TextIO | None = None) -> None:
    """The hourly directive mix and the totals, as a person reads them (to stdout by default)."""
    out = out or sys.stdout
    levels = ("L0", "L1", "L2")
    by_hour: dict[datetime, list[Receipt]] = defaultdict(list)
    for r in summary.receipts:
        by_hour[r.ci_time].append(r)
    w = out.write
    w(f"\nHourly directive mix ({summary.zone}, hours by the carbon reading each request used)\n")
    w(
        f"{'hour (UTC)':<17} {'CI g/kWh':>9} {'req':>4} "
        + " ".join(f"{lv:>5}" for lv in levels)
        + f" {'gCO2e':>8} {'L0 gCO2e':>9}\n"
    )
    for hour in sorted(by_hour):
        rows = by_hour[hour]
        shares = [sum(r.directive == lv for r in rows) / len(rows) for lv in levels]
        w(
            f"{hour:%Y-%m-%d %H:%M} {rows[0].ci_g_per_kwh:>9.1f} {len(rows):>4} "
            + " ".join(f"{s:>5.0%}" for s in shares)
            + f" {sum(r.total_g for r in rows):>8.3f}"
            + f" {sum(r.baseline_g or 0 for r in rows):>9.3f}\n"
        )
    n = len(summary.receipts)
    energy = sum(r.energy_kwh for r in summary.receipts)
    sources = sorted({r.energy_source for r in summary.receipts})
    operational = sum(r.operational_g for r in summary.receipts)
    embodied = sum(r.embodied_g for r in summary.receipts)
    share, base_share = summary.preferred_share()
    mix = [sum(r.directive == lv for r in summary.receipts) / max(n, 1) for lv in levels]
    w("\nTotals\n")
    extra = (
        f", plus {len(summary.evaluation)} evaluation receipts of the quality loop"
        if summary.evaluation
        else ""
    )
    w(f"  requests               {n} (receipts in the ledger: {summary.ledger_count}{extra})\n")
    w(
        "  directive mix          "
        + ", ".join(f"{lv} {s:.0%}" for lv, s in zip(levels, mix, strict=True))
        + "\n"
    )
    w(f"  energy                 {energy * 1000:.2f} Wh ({', '.join(sources)})\n")
    w(
        f"  carbon emitted         {summary.emitted_g:.2f} gCO2e "
        f"(operational {operational:.2f}, embodied {embodied:.2f})\n"
    )
    w(f"  always-L0 carbon       {summary.baseline_g:.2f} gCO2e (recorded L0 energy, same hours)\n")
    w(f"  carbon saving          {summary.saving:.1%}\n")
    w(
        f"  judge-preferred share  {share:.1%} of requests got the answer GPT-4 preferred "
        f"(always-L0: {base_share:.1%}; normalized preference "
        f"{share / base_share if base_share else float('nan'):.1%})\n"
    )
    _print_quality_loop(summary, w)
    w(f"\nLedger: {summary.db_url}\n")


def _print_quality_loop(summary: DemoSummary, w: Callable[[str], object]) -> None:
    """The quality loop's part of the summary."""
    if not summary.sampled and not summary.judge_runs:
        return
    n = len(summary.receipts)
    w("\nQuality loop (replay engine for the other directives, replay judge: GPT-4's verdicts)\n")
    w(f"  sampled                {summary.sampled} of {n} requests (prompts kept for the judge)\n")
    for k, run in enumerate(summary.judge_runs):
        label = "judge runs" if k == 0 else ""
        w(
            f"  {label:<22} {run.at:%Y-%m-%d %H:%M} UTC ({run.reason}, CI "
            f"{run.ci_g_per_kwh or 0:.0f} g/kWh): {run.verdicts} verdicts\n"
        )
    preferred: dict[str, int] = defaultdict(int)
    for run in summary.judge_runs:
        for name, count in run.preferred.items():
            preferred[name] += count
    verdicts = sum(run.verdicts for run in summary.judge_runs)
    w(
        f"  verdicts               {verdicts}; preferred: "
        + (", ".join(f"{k} {v}" for k, v in sorted(preferred.items())) or "none")
        + "\n"
    )
    eval_g = sum(r.total_g for r in summary.evaluation)
    eval_kwh = sum(r.energy_kwh for r in summary.evaluation)
    share = f" ({eval_g / summary.emitted_g:.0%} of the served carbon)" if summary.emitted_g else ""
    w(
        f"  evaluation overhead    {len(summary.evaluation)} generations, "
        f"{eval_kwh * 1000:.2f} Wh, {eval_g:.2f} gCO2e{share}\n"
    )
    estimate = next((r.estimate for r in reversed(summary.judge_runs) if r.estimate), None)
    if estimate is not None:
        q = ", ".join(
            f"{k} {v:.3f}" for k, v in zip(estimate.levels, estimate.quality, strict=True)
        )
        w(f"  quality estimate       {q} (refreshed from the verdicts; the optimizer uses it)\n")
        if estimate.warning():
            w(f"  WARNING                {estimate.warning()}\n")
    unjudged = next((r.unjudged for r in reversed(summary.judge_runs) if r.unjudged), ())
    if unjudged:
        w(
            f"  not judged             {', '.join(unjudged)}: the judge cannot judge them, so no "
            "answers are generated under them; their quality estimate is the prior\n"
        )
    w(f"  see                    sprout judge report --db {summary.db_url}\n")
