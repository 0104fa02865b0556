"""The per-request policy's target grid: every bundled zone x the three windows.

For each cell, ``sprout simulate`` runs the Sprout protocol (720 h windows from hours 800,
3900 and 7000, xi 0.1, causal mode by default) over seeds 0-9 with the methods ``base,
sprout, oracle_request, contextual, contextual_lp``, every one evaluated on the same
held-out prompts (split seed 0, half of each workload's judged prompts held out; the
contextual methods train on the other half only). Prints the table of carbon saving and
normalized preference (means over seeds) and checks the target of issue 5: contextual
saves at least 70 % at a normalized preference of at least 100 % in every cell.

With ``--frontier PNG`` it also sweeps xi on one or more cells and plots saving against
preference for sprout, contextual, contextual_lp and oracle_request.

    python benchmarks/contextual_eval.py [--seeds 0-9] [--mode causal] [--jobs 2]
        [--json OUT.json] [--frontier docs/img/contextual_frontier.png]

Cells run in parallel processes (``--jobs``); each process trains the model once per split.
The last line is ``BENCH {"worst_saving_pct": .., "worst_pref_pct": .., ...}``: the
contextual method's lowest mean saving and lowest mean preference over the cells.
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

ZONES = ("GB", "US-CAL-CISO", "US-TEX-ERCO")
STARTS = (800, 3900, 7000)
METHODS = ("base", "sprout", "oracle_request", "contextual", "contextual_lp")
TARGET_SAVING, TARGET_PREF = 0.70, 1.00


def run_cell(
    zone: str,
    start: int,
    xis: tuple[float, ...],
    seeds: tuple[int, ...],
    mode: str,
    methods: tuple[str, ...],
    split_seed: int,
    held_out: float,
) -> dict[str, Any]:
    """One cell's summary: per xi, per method, mean/min/max saving and preference."""
    from sprout.sim.engine import SimConfig, simulate
    from sprout.sim.workload import PromptSplit

    t = time.perf_counter()
    config = SimConfig(
        carbon=zone,
        start_hour=start,
        xis=xis,
        mode=mode,
        methods=methods,
        seeds=seeds,
        split=PromptSplit(split_seed, held_out),
    )
    result = simulate(config)
    runs = []
    for run in result.runs:
        runs.append(
            {
                "xi": run.xi,
                "methods": {
                    name: {
                        "saving": s.carbon_saving.mean,
                        "saving_min": s.carbon_saving.min,
                        "net_saving": s.net_saving.mean,
                        "overhead_share": s.overhead_share.mean,
                        "pref": s.normalized_preference.mean,
                        "pref_min": s.normalized_preference.min,
                        "mix": list(s.mix),
                        "per_seed": s.per_seed,
                    }
                    for name, s in run.methods.items()
                },
            }
        )
    return {"zone": zone, "start": start, "runs": runs, "seconds": time.perf_counter() - t}


def _table(cells: list[dict[str, Any]], methods: tuple[str, ...]) -> str:
    lines = [f"{'zone':12s} {'window':>6s}  " + "  ".join(f"{m:>16s}" for m in methods)]
    for cell in cells:
        figures = cell["runs"][0]["methods"]
        row = "  ".join(
            f"{figures[m]['saving'] * 100:6.1f} / {figures[m]['pref'] * 100:5.1f}" for m in methods
        )
        lines.append(f"{cell['zone']:12s} {cell['start']:6d}  {row}")
    return "\n".join(lines)


def _frontier(
    cells: list[dict[str, Any]], path: Path, methods: tuple[str, ...], mode: str, seeds: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "sprout": ("tab:blue", "o"),
        "contextual": ("tab:green", "s"),
        "contextual_lp": ("tab:olive", "D"),
        "oracle_request": ("tab:red", "^"),
    }
    fig, axes = plt.subplots(1, len(cells), figsize=(5.2 * len(cells), 4.4), squeeze=False)
    for ax, cell in zip(axes[0], cells, strict=True):
        for name in methods:
            if name not in styles:
                continue
            color, marker = styles[name]
            xs = [r["methods"][name]["pref"] * 100 for r in cell["runs"]]
            ys = [r["methods"][name]["saving"] * 100 for r in cell["runs"]]
            if max(xs) - min(xs) < 0.05 and max(ys) - min(ys) < 0.05:
                # The same at every xi (contextual holds the baseline's quality on average).
                ax.plot(xs[:1], ys[:1], marker=marker, color=color, ls="", ms=7, label=name)
                ax.annotate(
                    "any ξ",
                    (xs[0], ys[0]),
                    fontsize=7,
                    xytext=(-28, -10),
                    textcoords="offset points",
                    color=color,
                )
                continue
            ax.plot(xs, ys, marker=marker, color=color, label=name, lw=1.2, ms=5)
            for r, x, y in zip(cell["runs"], xs, ys, strict=True):
                if r["xi"] in (0.0, 0.1, 0.3):
                    ax.annotate(
                        f"ξ={r['xi']:g}",
                        (x, y),
                        fontsize=7,
                        xytext=(3, 3),
                        textcoords="offset points",
                        color=color,
                    )
        ax.axvline(100, color="grey", lw=0.8, ls="--")
        ax.axhline(70, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{cell['zone']}, window from hour {cell['start']}")
        ax.set_xlabel("normalized preference (%)")
        ax.set_ylabel("carbon saving vs always-L0 (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.suptitle(
        f"Carbon saving against judged preference across a xi sweep ({mode} mode, held-out "
        f"prompts, mean over seeds {seeds})",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    """Run the grid (and the frontier sweep if asked) and print the figures."""
    from sprout.sim.specs import parse_seeds, parse_xis

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--mode", default="causal", choices=("paper", "causal"))
    parser.add_argument("--xi", default="0.1")
    parser.add_argument("--zones", default=",".join(ZONES))
    parser.add_argument("--starts", default=",".join(map(str, STARTS)))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--held-out", type=float, default=0.5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every figure as JSON")
    parser.add_argument("--frontier", type=Path, help="also write the xi-sweep frontier plot")
    parser.add_argument("--frontier-xis", default="0,0.02,0.05,0.1,0.15,0.2,0.3")
    parser.add_argument("--frontier-cells", default="GB:800,US-CAL-CISO:3900,US-TEX-ERCO:7000")
    parser.add_argument("--frontier-seeds", default="0-4")
    args = parser.parse_args()

    seeds = parse_seeds(args.seeds)
    xis = parse_xis(args.xi)
    methods = tuple(m.strip() for m in args.methods.split(","))
    zones = tuple(z.strip() for z in args.zones.split(","))
    starts = tuple(int(s) for s in args.starts.split(","))
    common = (args.mode, methods, args.split_seed, args.held_out)
    t = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_cell, z, s, xis, seeds, *common) for z in zones for s in starts]
        frontier_futures = []
        if args.frontier is not None:
            f_seeds = parse_seeds(args.frontier_seeds)
            f_xis = parse_xis(args.frontier_xis)
            for spec in args.frontier_cells.split(","):
                zone, start = spec.split(":")
                frontier_futures.append(
                    pool.submit(run_cell, zone, int(start), f_xis, f_seeds, *common)
                )
        cells = [f.result() for f in futures]
        frontier_cells = [f.result() for f in frontier_futures]
    wall = time.perf_counter() - t

    print(
        f"Sprout protocol, xi {args.xi}, {args.mode} mode, seeds {args.seeds}, split seed "
        f"{args.split_seed} ({args.held_out:g} held out); carbon saving % / normalized "
        "preference %, means over seeds"
    )
    print(_table(cells, methods))
    ctx = [c["runs"][0]["methods"]["contextual"] for c in cells if "contextual" in methods]
    figures: dict[str, Any] = {"cells": len(cells), "seeds": len(seeds), "mode": args.mode}
    if ctx:
        worst_saving = min(f["saving"] for f in ctx)
        worst_pref = min(f["pref"] for f in ctx)
        met = all(f["saving"] >= TARGET_SAVING and f["pref"] >= TARGET_PREF for f in ctx)
        print(
            f"contextual: worst cell saving {worst_saving * 100:.1f} %, worst cell preference "
            f"{worst_pref * 100:.1f} % -> target (>= 70 % at >= 100 % in every cell) "
            f"{'MET' if met else 'NOT met'}"
        )
        figures.update(
            worst_saving_pct=round(worst_saving * 100, 2),
            worst_pref_pct=round(worst_pref * 100, 2),
            target_met=met,
        )
    if frontier_cells:
        path = _frontier(frontier_cells, args.frontier, methods, args.mode, args.frontier_seeds)
        print(f"wrote {path}")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"grid": cells, "frontier": frontier_cells}, indent=1) + "\n",
            encoding="utf-8",
        )
        print(f"wrote {args.json}")
    figures["wall_s"] = round(wall, 1)
    emit(figures)


if __name__ == "__main__":
    main()
