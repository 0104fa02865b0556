"""Turn a :class:`~sprout.sim.engine.SimResult` into a printed table and a JSON document."""

from __future__ import annotations

import math
from typing import Any

from sprout.sim.engine import MethodSummary, SimResult, XiRun
from sprout.sim.evaluate import JUDGE_ENERGY_SOURCE, JUDGE_ENERGY_WH
from sprout.sim.metrics import Spread


def _num(value: float) -> float | None:
    """JSON has no NaN: an unknown figure is null."""
    return None if math.isnan(value) else value


def _spread_fields(key: str, spread: Spread) -> dict[str, float | None]:
    return {
        key: _num(spread.mean),
        f"{key}_min": _num(spread.min),
        f"{key}_max": _num(spread.max),
    }


def method_json(summary: MethodSummary) -> dict[str, Any]:
    """One method's JSON object: means over the seeds with ``_min``/``_max``, the mean mix."""
    out: dict[str, Any] = {}
    out.update(_spread_fields("carbon_saving", summary.carbon_saving))
    out.update(_spread_fields("normalized_preference", summary.normalized_preference))
    out.update(_spread_fields("carbon_g_per_request", summary.carbon_g_per_request))
    # carbon_saving above is gross (served requests only); net subtracts the verdicts' carbon.
    out.update(_spread_fields("gross_saving", summary.carbon_saving))
    out.update(_spread_fields("overhead_share", summary.overhead_share))
    out.update(_spread_fields("net_saving", summary.net_saving))
    out.update(_spread_fields("overhead_g", summary.overhead_g))
    out["judged_requests"] = _num(summary.judged.mean)
    out["mix"] = list(summary.mix)
    out["levels"] = list(summary.levels)
    out["per_request"] = summary.per_request
    out["per_seed"] = {k: [_num(v) for v in vs] for k, vs in summary.per_seed.items()}
    if summary.note:
        out["note"] = summary.note
    return out


def to_json(result: SimResult) -> dict[str, Any]:
    """The ``--json`` document.

    With one xi: ``{"zone", "start_hour", "hours", "xi", "mode", "seeds", "methods": {NAME:
    {...}}}`` plus provenance keys. With several (a sweep), ``"xi"`` is the list and
    ``"sweep"`` holds one ``{"xi", "methods"}`` object per value, in order.
    """
    c = result.config
    doc: dict[str, Any] = {
        "zone": result.zone,
        "start_hour": c.start_hour,
        "hours": c.hours,
        "xi": c.xis[0] if len(c.xis) == 1 else list(c.xis),
        "mode": c.mode,
        "seeds": list(c.seeds),
    }
    runs = [
        {"xi": r.xi, "methods": {n: method_json(m) for n, m in r.methods.items()}}
        for r in result.runs
    ]
    if len(runs) == 1:
        doc["methods"] = runs[0]["methods"]
    else:
        doc["sweep"] = runs
    doc["carbon_source"] = result.source
    doc["column"] = c.column
    doc["history_hours"] = c.history_hours if c.mode == "causal" else None
    doc["n_judged_per_hour"] = c.n_judged
    doc["n_energy_per_hour"] = c.n_energy
    doc["evaluator_runs"] = int(result.evaluator_runs.sum())
    doc["family_share"] = dict(c.family_share)
    doc["unseen"] = list(c.split.unseen)
    doc["judge_energy_wh"] = c.judge_energy_wh
    doc["judge_energy_source"] = (
        JUDGE_ENERGY_SOURCE if c.judge_energy_wh == JUDGE_ENERGY_WH else "--judge-energy-wh"
    )
    doc["requests_per_hour"] = c.requests_per_hour or c.n_judged
    doc["quality_loop"] = {
        "judge_share": c.loop.judge_share,
        "retrain_every_h": c.loop.retrain_every_h,
        "graded_on_unsampled_half": c.loop_grades,
    }
    doc["policy_max_loss"] = c.policy_max_loss
    return doc


def _pct(spread: Spread, many: bool) -> str:
    if math.isnan(spread.mean):
        return "n/a"
    if not many:
        return f"{100 * spread.mean:.1f}"
    return f"{100 * spread.mean:.1f} [{100 * spread.min:.1f}, {100 * spread.max:.1f}]"


def _mix(summary: MethodSummary) -> str:
    return " ".join(f"{lvl} {x:.2f}" for lvl, x in zip(summary.levels, summary.mix, strict=True))


def format_run(result: SimResult, run: XiRun) -> str:
    """The table of one xi: one row per method."""
    c = result.config
    many = len(c.seeds) > 1
    head = (
        f"{result.zone}: trace hours {c.start_hour}-{c.start_hour + c.hours - 1} ({c.hours} h), "
        f"mode {c.mode}, xi {run.xi:g}, {len(c.seeds)} seed(s)"
        + (" - mean [min, max] over seeds" if many else "")
    )
    rows = [
        (
            "method",
            "gross saving %",
            "overhead %",
            "net saving %",
            "norm. preference %",
            "gCO2e/request",
            "mix",
        )
    ]
    notes = []
    for name, m in run.methods.items():
        rows.append(
            (
                name,
                _pct(m.carbon_saving, many),
                _pct(m.overhead_share, many),
                _pct(m.net_saving, many),
                _pct(m.normalized_preference, many),
                f"{m.carbon_g_per_request.mean:.4f}",
                _mix(m),
            )
        )
        if m.note:
            notes.append(m.note)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head]
    for i, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.extend(f"note: {n}" for n in notes)
    scenario = []
    if c.family_share:
        scenario.append(
            "family share " + ", ".join(f"{f}={s:g}" for f, s in c.family_share) + " every hour"
        )
    if c.split.unseen:
        scenario.append(f"unseen in training: {', '.join(c.split.unseen)}")
    if scenario:
        lines.append("scenario: " + "; ".join(scenario))
    if c.loop_grades:
        lines.append(
            f"quality loop: {c.loop.judge_share:g} of contextual's requests judged, retrained "
            f"every {c.loop.retrain_every_h} h; every method's quality graded on the half of "
            "the held-out prompts the loop never samples"
        )
    lines.append(
        "overhead: the carbon of the verdicts a method learns from (answers under the other "
        f"directives + one judge call of {c.judge_energy_wh:g} Wh each, at the judge run's "
        f"hour), % of always-L0's carbon at {c.requests_per_hour or c.n_judged} requests/hour; "
        "net = gross - overhead"
    )
    return "\n".join(lines)


def format_frontier(result: SimResult) -> str:
    """For a sweep: the mean saving/preference of every method at each xi."""
    names = list(result.runs[0].methods)
    rows = [("xi", *names)]
    for run in result.runs:
        cells = [f"{run.xi:g}"]
        for n in names:
            m = run.methods[n]
            pref = m.normalized_preference.mean
            p = "n/a" if math.isnan(pref) else f"{100 * pref:.1f}"
            cells.append(f"{100 * m.carbon_saving.mean:.1f}/{p}")
        rows.append(tuple(cells))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["gross saving % / preference % frontier (means over seeds)"]
    for i, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_result(result: SimResult) -> str:
    """Everything printed for a simulation."""
    parts = [format_run(result, run) for run in result.runs]
    if len(result.runs) > 1:
        parts.append(format_frontier(result))
    return "\n\n".join(parts)
