"""The quality promise on traffic the policy has never seen, net of the loop's own carbon.

For each bundled zone x window (720 h from hours 800, 3900, 7000; causal, xi 0.1) and each
of the six families, ``sprout simulate`` runs twice on the same draws, the family given half
of every hour's traffic (``--family-share F=0.5``):

- **unseen**: the family kept out of every training input (``--unseen F``); the per-request
  policy meets it live, and only its quality loop (judge sampling, the guard, the margin,
  scheduled retraining) can learn it;
- **in training**: the same shifted mix, the family in the training split.

and once on the standard protocol (no shift, nothing unseen). Methods: ``sprout``,
``contextual`` and ``oracle_request`` (``base`` is the yardstick). Every figure is a mean over
the seeds; saving is shown gross (served requests only) and net (less the loop's own
generations and judge calls).

Targets (printed as met / missed):

- contextual's normalized preference >= 99 % in every unseen cell;
- its net saving within 5 points of the same cell in training;
- standard protocol: net saving >= 65 % at normalized preference >= 100 % in every cell.

    python benchmarks/unseen_eval.py [--seeds 0-4] [--zones GB,...] [--starts 800,...]
        [--families math,...] [--hours 720] [--jobs 2] [--json OUT.json]
        [--figure docs/img/unseen_recovery.png --figure-cell GB:800:math]

The last line is ``BENCH {...}`` with the worst cells. A full grid is 117 cells of 5 seeds
each, with a retrain every simulated day: each cell and seed is one task for ``--jobs``
worker processes (about a minute each on a 2-core machine, two side by side: about five
hours there); ``--zones``, ``--starts``, ``--families`` and ``--hours`` run part of it (the
output says which part).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import emit

from sprout.policy.base import DEFAULT_MAX_LOSS, parse_max_loss

ZONES = ("GB", "US-CAL-CISO", "US-TEX-ERCO")
STARTS = (800, 3900, 7000)
FAMILIES = ("alpaca", "math", "mmlu", "naturalqa", "scienceqa", "triviaqa")
METHODS = ("sprout", "contextual", "oracle_request")
SHARE = 0.5
PREF_FLOOR, NET_GAP, STD_NET, STD_PREF = 0.99, 0.05, 0.65, 1.00


def run_one(
    zone: str,
    start: int,
    family: str | None,
    unseen: bool,
    seeds: tuple[int, ...],
    hours: int,
    max_loss: float | None,
) -> dict[str, Any]:
    """One simulation: per method, mean gross, net, preference; contextual's hourly series
    of the first seed (for the recovery figure)."""
    from sprout.sim.engine import SimConfig, simulate
    from sprout.sim.workload import PromptSplit

    t = time.perf_counter()
    config = SimConfig(
        carbon=zone,
        start_hour=start,
        hours=hours,
        methods=("base", *METHODS),
        seeds=seeds,
        split=PromptSplit(0, 0.5, (family,) if unseen and family else ()),
        family_share=((family, SHARE),) if family else (),
        policy_max_loss=max_loss,
    )
    result = simulate(config)
    run = result.runs[0]
    out: dict[str, Any] = {
        "zone": zone,
        "start": start,
        "family": family,
        "unseen": unseen,
        "seconds": time.perf_counter() - t,
        "methods": {
            name: {
                "gross": s.carbon_saving.mean,
                "net": s.net_saving.mean,
                "overhead": s.overhead_share.mean,
                "pref": s.normalized_preference.mean,
                "pref_min": s.normalized_preference.min,
            }
            for name, s in run.methods.items()
        },
    }
    series = run.first_seed["contextual"]
    base = run.first_seed["base"]
    out["series"] = {
        "quality": series.quality.tolist(),
        "base_quality": series.base_quality.tolist(),
        "carbon_g": series.carbon_g.tolist(),
        "base_carbon_g": base.carbon_g.tolist(),
    }
    return out


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell from its seeds' runs (in seed order): each figure the mean over the seeds,
    ``pref_min`` the least, the series the first seed's, the seconds summed."""
    out = dict(runs[0])
    out["seconds"] = sum(r["seconds"] for r in runs)
    out["methods"] = {}
    for name, first in runs[0]["methods"].items():
        each = [r["methods"][name] for r in runs]
        merged = {key: sum(m[key] for m in each) / len(each) for key in first}
        merged["pref_min"] = min(m["pref_min"] for m in each)
        out["methods"][name] = merged
    return out


def _cells(args: argparse.Namespace) -> list[tuple[str, int, str | None, bool]]:
    cells: list[tuple[str, int, str | None, bool]] = []
    for zone in args.zones:
        for start in args.starts:
            if not args.no_standard:
                cells.append((zone, start, None, False))
            for family in args.families:
                cells.append((zone, start, family, True))
                cells.append((zone, start, family, False))
    return cells


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _seeds(value: str) -> tuple[int, ...]:
    lo, _, hi = value.partition("-")
    return tuple(range(int(lo), int(hi) + 1)) if hi else tuple(int(v) for v in _csv(value))


def _figure(path: Path, cell: dict[str, Any]) -> None:
    """Rolling (24 h) normalized preference of contextual over the window and, when the
    series has always-L0's hourly carbon, its rolling saving against it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def rolling(x: np.ndarray, n: int = 24) -> np.ndarray:
        return np.convolve(np.nan_to_num(x), np.ones(n), "valid") / n

    series = cell["series"]
    pref = rolling(np.array(series["quality"])) / np.maximum(
        rolling(np.array(series["base_quality"])), 1e-9
    )
    hours = np.arange(pref.size) + 24
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(hours, 100 * pref, label="normalized preference % (24 h rolling)")
    if "base_carbon_g" in series:
        saving = 1.0 - rolling(np.array(series["carbon_g"])) / rolling(
            np.array(series["base_carbon_g"])
        )
        ax.plot(hours, 100 * saving, label="gross saving % (24 h rolling)")
    ax.axhline(100 * PREF_FLOOR, color="grey", ls="--", lw=0.8, label="99 % target")
    ax.set_xlabel("hour of the window")
    ax.set_ylabel("%")
    ax.set_title(
        f"contextual, {cell['family']} unseen at share {SHARE}: {cell['zone']} from hour "
        f"{cell['start']} (first seed)"
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0-4", type=_seeds)
    p.add_argument("--zones", default=",".join(ZONES), type=_csv)
    p.add_argument(
        "--starts", default=",".join(map(str, STARTS)), type=lambda v: tuple(map(int, _csv(v)))
    )
    p.add_argument("--families", default=",".join(FAMILIES), type=_csv)
    p.add_argument("--hours", type=int, default=720)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--no-standard", action="store_true", help="skip the standard-protocol cells")
    p.add_argument(
        "--max-loss",
        default=DEFAULT_MAX_LOSS,
        type=parse_max_loss,
        help="contextual's per-request bound (sprout simulate --max-loss; 'none': no bound)",
    )
    p.add_argument("--json", type=Path)
    p.add_argument("--figure", type=Path)
    p.add_argument("--figure-cell", default="GB:800:math", help="ZONE:START:FAMILY")
    args = p.parse_args(argv)

    cells = _cells(args)
    t0 = time.perf_counter()
    # One task per cell and seed (the seeds' draws are independent, so a cell's figures are
    # the means of its seeds' whatever the grouping): every worker stays busy to the end.
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            (c, seed): pool.submit(run_one, *c, (seed,), args.hours, args.max_loss)
            for c in cells
            for seed in args.seeds
        }
        results = []
        for c in cells:
            r = _merge([futures[(c, seed)].result() for seed in args.seeds])
            results.append(r)
            tag = r["family"] or "standard"
            kind = "unseen" if r["unseen"] else "in-training"
            m = r["methods"]["contextual"]
            print(
                f"  {r['zone']}:{r['start']} {tag} {kind if r['family'] else ''}: contextual "
                f"{100 * m['gross']:.1f} gross / {100 * m['net']:.1f} net / "
                f"{100 * m['pref']:.1f} pref ({r['seconds']:.0f} s over its seeds)",
                file=sys.stderr,
                flush=True,
            )
    key = {(r["zone"], r["start"], r["family"], r["unseen"]): r for r in results}

    print(
        f"\nseeds {args.seeds[0]}-{args.seeds[-1]}, {args.hours} h windows, causal, xi 0.1; "
        f"family share {SHARE}; contextual's max loss {args.max_loss}; gross / net saving % "
        "and normalized preference %"
    )
    header = (
        "| zone | start | family | "
        + " | ".join(f"{m} gross / net / pref" for m in METHODS)
        + " | contextual in training: net / pref |"
    )
    print(header)
    print("|" + "---|" * (4 + len(METHODS)))
    worst_pref = (2.0, "")
    worst_gap = (-1.0, "")
    misses: list[str] = []
    for zone in args.zones:
        for start in args.starts:
            for family in args.families:
                u = key[(zone, start, family, True)]
                i = key[(zone, start, family, False)]
                cells_txt = " | ".join(
                    f"{100 * u['methods'][m]['gross']:.1f} / {100 * u['methods'][m]['net']:.1f}"
                    f" / {100 * u['methods'][m]['pref']:.1f}"
                    for m in METHODS
                )
                ci = i["methods"]["contextual"]
                cu = u["methods"]["contextual"]
                print(
                    f"| {zone} | {start} | {family} | {cells_txt} | "
                    f"{100 * ci['net']:.1f} / {100 * ci['pref']:.1f} |"
                )
                name = f"{zone}:{start}:{family}"
                if cu["pref"] < worst_pref[0]:
                    worst_pref = (cu["pref"], name)
                gap = ci["net"] - cu["net"]
                if gap > worst_gap[0]:
                    worst_gap = (gap, name)
                if cu["pref"] < PREF_FLOOR:
                    misses.append(f"{name}: preference {100 * cu['pref']:.1f} % < 99 %")
                if gap > NET_GAP:
                    misses.append(f"{name}: net {100 * gap:.1f} points below in-training")
    worst_std = (2.0, "", 0.0)
    if not args.no_standard:
        print("\nstandard protocol (no shift, nothing unseen): contextual gross / net / pref")
        for zone in args.zones:
            for start in args.starts:
                c = key[(zone, start, None, False)]["methods"]["contextual"]
                print(
                    f"  {zone}:{start}: {100 * c['gross']:.1f} / {100 * c['net']:.1f} / "
                    f"{100 * c['pref']:.1f}"
                )
                if c["net"] < worst_std[0]:
                    worst_std = (c["net"], f"{zone}:{start}", c["pref"])
                if c["net"] < STD_NET or c["pref"] < STD_PREF:
                    misses.append(
                        f"{zone}:{start} standard: net {100 * c['net']:.1f} %, preference "
                        f"{100 * c['pref']:.1f} %"
                    )
    print("\ntargets: " + ("all met" if not misses else "missed:\n  " + "\n  ".join(misses)))
    print(f"grid: {len(cells)} cells x {len(args.seeds)} seeds in {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results) + "\n", encoding="utf-8")
    if args.figure:
        z, s, f = args.figure_cell.split(":")
        cell = key.get((z, int(s), f, True))
        if cell is None:
            print(f"--figure-cell {args.figure_cell} was not run", file=sys.stderr)
        else:
            _figure(args.figure, cell)
            print(f"wrote {args.figure}")
    emit(
        {
            "worst_unseen_pref_pct": round(100 * worst_pref[0], 2),
            "worst_unseen_pref_cell": worst_pref[1],
            "worst_net_gap_points": round(100 * worst_gap[0], 2),
            "worst_net_gap_cell": worst_gap[1],
            "worst_standard_net_pct": round(100 * worst_std[0], 2) if worst_std[1] else "not run",
            "worst_standard_cell": worst_std[1],
            "targets_missed": len(misses),
            "cells": len(cells),
            "seeds": len(args.seeds),
            "hours": args.hours,
            "max_loss": args.max_loss,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
