"""How fast ``sprout simulate`` runs: every method over the 720-hour window for one seed, a
full year (8760 h) of ``sprout``, and two weeks of ``contextual`` with its quality loop
(daily retraining), its fits on one BLAS thread (the default) and on the libraries' own
choice, in the same run.

Run: ``python benchmarks/simulate_speed.py [--zone GB]``. The bundled data are loaded once
before timing (reported separately); each timed figure is one complete ``simulate()`` call:
contexts, the workload draw, the samples, the methods and the metrics. The last line is
``BENCH {"window_all_methods_s": .., "year_sprout_s": .., "loop_one_thread_s": ..,
"loop_default_threads_s": .., "loop_speedup": ..}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import emit

from sprout.carbon.trace import load_trace
from sprout.policy.contextual import fit
from sprout.sim.engine import DEFAULT_METHODS, SimConfig, simulate
from sprout.sim.workload import PromptSplit, bundled_workload


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
    loop = SimConfig(
        carbon=args.zone,
        start_hour=800,
        hours=336,
        mode=args.mode,
        methods=("base", "contextual"),
        seeds=(0,),
        split=PromptSplit(0, 0.5),
    )
    # Untimed: the model trained before the window is cached, so both timings are the loop's.
    simulate(replace(loop, hours=24), trace=trace, workload=workload)
    loop_s = {}
    for label, threads in (("one BLAS thread", 1), ("BLAS threads left to the libraries", None)):
        fit.FIT_BLAS_THREADS = threads
        t = time.perf_counter()
        simulate(loop, trace=trace, workload=workload)
        loop_s[threads] = time.perf_counter() - t
        print(f"336 h, contextual with daily retraining, fits on {label}: {loop_s[threads]:.2f} s")
    fit.FIT_BLAS_THREADS = 1
    speedup = loop_s[None] / loop_s[1]
    print(f"one BLAS thread: {speedup:.2f}x as fast")
    emit(
        {
            "window_all_methods_s": round(window_s, 2),
            "year_sprout_s": round(year_s, 2),
            "loop_one_thread_s": round(loop_s[1], 2),
            "loop_default_threads_s": round(loop_s[None], 2),
            "loop_speedup": round(speedup, 2),
        }
    )


if __name__ == "__main__":
    main()
