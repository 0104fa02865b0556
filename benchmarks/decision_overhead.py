"""Decision overhead: what choosing a request's directive costs in the controller.

The contextual model is trained on the bundled training split, stored as a policy version in
a temporary SQLite ledger and loaded back from it (hash checked, JSON parsed: no pickle), so
the controller built by ``build_controller`` serves the stored version, as in production.
The timed call is the controller's decision step (``Controller._decide``: the carbon window,
the carbon context and the policy's ``decide``, under the controller's lock) on bundled
prompts of all six workloads, cycling, with the carbon intensity changing every
``--per-hour`` requests (each change closes the policy's period: the request that sees it
copies the period's predictions and hands the refit of the multiplier to the policy's worker
thread, which then competes for the GIL with the timed requests, as in production). The same
is timed for Sprout's LP policy for comparison.

The machine is small and shared, so requests are timed in rounds and the figure reported is
the median of the rounds' p99 (the worst round is printed too). Target: p99 < 200 µs.

Baseline, in the same run: the bare featurisation of the same prompts (the model's
``features.vector``: tokenising, the vocabulary look-up, tf-idf and the shape features),
timed the same way. It is the least any text-based policy pays per request; the ratio of the
decision's p99 to it says what the rest (the carbon window, the model's scores, the
assignment, the lock) adds.

    python benchmarks/decision_overhead.py [--requests 5000] [--rounds 5] [--per-hour 1000]

The last line is ``BENCH {"decision_p99_us": .., ...}``.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import emit, percentile

TARGET_P99_US = 200.0


def _prompts(n: int, seed: int = 0) -> list[str]:
    """Bundled prompts of every workload, shuffled (long open instructions included)."""
    from sprout.data import load_workload

    texts = [r.instruction for r in load_workload()]
    rng = random.Random(seed)
    rng.shuffle(texts)
    return texts[:n]


def _rounds(call: Any, prompts: list[str], requests: int, rounds: int) -> Any:
    """Per round, the p99 of ``requests`` timed calls ``call(i, prompt)`` (µs); and all
    samples. ``i`` counts the calls across rounds."""
    clock = time.perf_counter
    round_p99: list[float] = []
    samples: list[float] = []
    i = 0
    for _ in range(rounds):
        times = []
        for _ in range(requests):
            prompt = prompts[i % len(prompts)]
            t0 = clock()
            call(i, prompt)
            times.append(clock() - t0)
            i += 1
        round_p99.append(percentile(times, 99) * 1e6)
        samples.extend(times)
    return round_p99, samples


def _time(controller: Any, prompts: list[str], requests: int, rounds: int, per_hour: int) -> Any:
    """Per round, the p99 of ``requests`` decisions (µs); and all samples."""
    signal = [controller.signal.read()]
    decide = controller._decide

    def call(i: int, prompt: str) -> None:
        if i % per_hour == 0:  # a new hour: a new intensity (the multiplier is refitted)
            # Outside the timed part in effect: a replace() costs ~1 µs every per_hour calls.
            hour = i // per_hour
            reading = signal[0].reading
            reading = replace(
                reading,
                time=reading.time + timedelta(hours=1),
                ci_g_per_kwh=150.0 + 100.0 * ((hour * 7919) % 13) / 13,
            )
            signal[0] = replace(signal[0], reading=reading)
        decide(prompt, signal[0], False)

    return _rounds(call, prompts, requests, rounds)


def _time_featurisation(model: Any, prompts: list[str], requests: int, rounds: int) -> Any:
    """Per round, the p99 of ``requests`` bare featurisations (µs); and all samples."""
    vector = model.features.vector
    return _rounds(lambda i, prompt: vector(prompt), prompts, requests, rounds)


def main() -> None:
    """Train, store, load, time; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="decisions per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-hour", type=int, default=1000, help="decisions per intensity")
    args = parser.parse_args()

    from sprout.config import load_settings
    from sprout.factory import build_controller
    from sprout.ledger.store import Ledger
    from sprout.policy.contextual import ContextualPolicy
    from sprout.training.retrain import retrain

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        ledger = Ledger(url)
        result = retrain(ledger)
        ledger.close()
        train_s = time.perf_counter() - t
        figures: dict[str, Any] = {}
        prompts = _prompts(20_000)
        for kind in ("contextual", "lp"):
            settings = load_settings(env={}, db_url=url, carbon_provider="static", policy_kind=kind)
            t = time.perf_counter()
            controller = build_controller(settings, rng=random.Random(0), poll=False)
            load_s = time.perf_counter() - t
            policy = controller.policy
            if kind == "contextual" and not isinstance(policy, ContextualPolicy):
                raise SystemExit(f"expected the stored contextual policy, got {policy!r}")
            _time(controller, prompts, 500, 1, args.per_hour)  # warm caches and the LP solve
            gc.collect()
            round_p99, samples = _time(
                controller, prompts, args.requests, args.rounds, args.per_hour
            )
            controller.close()
            figures[kind] = {
                "p50_us": percentile(samples, 50) * 1e6,
                "p99_us": statistics.median(round_p99),
                "worst_round_p99_us": max(round_p99),
                "max_us": max(samples) * 1e6,
                "round_p99_us": round_p99,
                "load_s": load_s,
            }

    n = args.requests * args.rounds
    model = result.model
    _time_featurisation(model, prompts, 500, 1)  # warm
    gc.collect()
    feat_round_p99, feat_samples = _time_featurisation(model, prompts, args.requests, args.rounds)
    feat_p50, feat_p99 = percentile(feat_samples, 50) * 1e6, statistics.median(feat_round_p99)
    print(
        f"model: {model.features.n_terms} terms, version {result.version} stored and loaded "
        f"back (train {train_s:.1f} s); {n} decisions per policy, intensity changing every "
        f"{args.per_hour}"
    )
    for kind, fig in figures.items():
        rounds = "  ".join(f"{v:.0f}" for v in fig["round_p99_us"])
        print(
            f"  {kind:10s} decision p50 {fig['p50_us']:7.1f} us   p99 {fig['p99_us']:7.1f} us "
            f"(rounds: {rounds}; max {fig['max_us']:.0f} us; load {fig['load_s'] * 1e3:.0f} ms)"
        )
    ctx = figures["contextual"]
    rounds = "  ".join(f"{v:.0f}" for v in feat_round_p99)
    print(
        f"  {'featurise':10s} bare      p50 {feat_p50:7.1f} us   p99 {feat_p99:7.1f} us "
        f"(rounds: {rounds}; baseline: the model's features.vector alone)"
    )
    ratio = ctx["p99_us"] / feat_p99
    print(
        f"contextual decision / bare featurisation: p50 {ctx['p50_us'] / feat_p50:.2f}x, "
        f"p99 {ratio:.2f}x"
    )
    print(f"target: contextual p99 < {TARGET_P99_US:.0f} us")
    emit(
        {
            "decision_p99_us": round(ctx["p99_us"], 1),
            "decision_p50_us": round(ctx["p50_us"], 1),
            "decision_worst_round_p99_us": round(ctx["worst_round_p99_us"], 1),
            "lp_decision_p99_us": round(figures["lp"]["p99_us"], 1),
            "featurise_p50_us": round(feat_p50, 1),
            "featurise_p99_us": round(feat_p99, 1),
            "decision_vs_featurise_p99_ratio": round(ratio, 2),
            "decision_vs_featurise_p50_ratio": round(ctx["p50_us"] / feat_p50, 2),
            "requests": n,
            "target_p99_us": TARGET_P99_US,
        }
    )


if __name__ == "__main__":
    main()
