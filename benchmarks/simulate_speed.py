"""How fast ``sprout simulate`` runs: every method over the 720-hour window for one seed, and a
full year (8760 h) of ``sprout``.

Run: ``python benchmarks/simulate_speed.py [--zone GB]``. The bundled data are loaded once
before timing (reported separately); each timed figure is one complete ``simulate()`` call:
contexts, the workload draw, the samples, the methods and the metrics. The last line is
``BENCH {"window_all_methods_s": .., "year_sprout_s": ..}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import emit

from sprout.carbon.trace import load_trace
from sprout.sim.engine import DEFAULT_METHODS, SimConfig, simulate
from sprout.sim.workload import bundled_workload


def main() -> None:
    """Time the two runs and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zone", default="GB")
    parser.add_argument("--mode", default="causal", choices=("paper", "causal"))
    args = parser.parse_args()

    t = time.perf_counter()
    trace = load_trace(args.zone)
    workload = bundled_workload()
    load_s = time.perf_counter() - t
    print(f"load trace + workloads (once): {load_s:.2f} s")

    window = SimConfig(
        carbon=args.zone,
        start_hour=800,
        hours=720,
        mode=args.mode,
        methods=DEFAULT_METHODS,
        seeds=(0,),
    )
    t = time.perf_counter()
    simulate(window, trace=trace, workload=workload)
    window_s = time.perf_counter() - t
    print(f"720 h, all {len(DEFAULT_METHODS)} methods, 1 seed: {window_s:.2f} s (target < 10 s)")

    year = SimConfig(
        carbon=args.zone,
        start_hour=0,
        hours=len(trace),
        mode=args.mode,
        methods=("sprout",),
        seeds=(0,),
    )
    t = time.perf_counter()
    simulate(year, trace=trace, workload=workload)
    year_s = time.perf_counter() - t
    print(f"{len(trace)} h, sprout, 1 seed: {year_s:.2f} s (target < 60 s)")
    emit({"window_all_methods_s": round(window_s, 2), "year_sprout_s": round(year_s, 2)})


if __name__ == "__main__":
    main()
