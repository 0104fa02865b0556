"""What each lever of the quality loop buys on traffic the policy has never seen.

One cell (default: GB from hour 800, causal, xi 0.1, ``math`` at half of the traffic), run
with the family unseen and with it in training, under variants of the per-request policy's
quality loop that differ in one lever each:

- ``no loop``: no judge sampling (the model trained before the window, its margin fixed);
- ``guard + margin``: the loop judges and guards, never retrains;
- ``retrain, no guard``: daily retraining on the verdicts, the guard unable to act;
- ``default``: the product's loop (judge share, daily retrain, guard, margin);
- ``retrain on both``: retraining always keeps the bundled data beside the verdicts, on
  every example (``sprout retrain --data both --held-out 0``);
- ``share S``: the default loop at another judge share (its carbon against what it buys);
- ``floor-F[-both]``: the guard holding F instead of ``1 - xi`` (with ``-both``: retraining
  on both sources).

``--standard`` runs the variants on the standard protocol instead (no shift, nothing
unseen). ``--coverage`` prints instead the out-of-distribution test that was tried and not adopted:
how many of each family's prompts fall below the training prompts' 5th percentile of
vocabulary coverage, with ``--family`` unseen.

Prints gross and net saving, normalized preference and judged requests per variant; every
variant runs on the same draws. The last line is ``BENCH {...}``.

    python benchmarks/loop_levers.py [--zone GB] [--start 800] [--family math]
        [--hours 336] [--seeds 0] [--jobs 2] [--variants default,no-loop,...]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import emit

VARIANTS = (
    "no-loop",
    "guard+margin",
    "retrain-no-guard",
    "default",
    "retrain-both",
    "share-0.01",
    "share-0.05",
)


def loop_config(variant: str) -> Any:
    """The loop configuration of ``variant``."""
    from sprout.judge.job_config import JudgeJobConfig
    from sprout.sim.loop import LoopConfig
    from sprout.training.sources import RetrainOptions

    if variant == "no-loop":
        return LoopConfig(judge_share=0.0)
    if variant == "guard+margin":
        return LoopConfig(retrain_every_h=0)
    if variant == "retrain-no-guard":
        return LoopConfig(judge=JudgeJobConfig(min_weight=float("inf")))
    if variant == "default":
        return LoopConfig()
    if variant == "retrain-both":
        return LoopConfig(retrain=RetrainOptions(data="both", held_out_fraction=0.0))
    if variant.startswith("floor-"):
        # The guard's floor (the live default is 1 - xi, the LP's promise).
        floor = float(variant.removeprefix("floor-").removesuffix("-both"))
        retrain = (
            RetrainOptions(data="both", held_out_fraction=0.0)
            if variant.endswith("-both")
            else RetrainOptions()
        )
        return LoopConfig(guard_floor=floor, retrain=retrain)
    if variant.startswith("share-"):
        return LoopConfig(judge_share=float(variant.removeprefix("share-")))
    raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def run(
    variant: str,
    unseen: bool,
    zone: str,
    start: int,
    family: str,
    hours: int,
    seeds: tuple[int, ...],
) -> dict[str, Any]:
    """One variant on one side (unseen or in training)."""
    from sprout.sim.engine import SimConfig, simulate
    from sprout.sim.workload import PromptSplit

    t = time.perf_counter()
    config = SimConfig(
        carbon=zone,
        start_hour=start,
        hours=hours,
        methods=("contextual",),
        seeds=seeds,
        split=PromptSplit(0, 0.5, (family,) if unseen and family else ()),
        family_share=((family, 0.5),) if family else (),
        loop=loop_config(variant),
    )
    s = simulate(config).runs[0].methods["contextual"]
    return {
        "variant": variant,
        "unseen": unseen,
        "gross": s.carbon_saving.mean,
        "net": s.net_saving.mean,
        "pref": s.normalized_preference.mean,
        "judged_per_h": s.judged.mean / hours,
        "seconds": time.perf_counter() - t,
    }


def coverage_table(family: str) -> dict[str, float]:
    """Out-of-distribution by vocabulary coverage, tried and not adopted: the share of each
    family's held-out prompts whose coverage (share of their terms in the vocabulary of the
    model trained with ``family`` unseen) falls below the training prompts' 5th percentile.
    """
    import numpy as np

    from sprout.accounting import embodied_rate_g_per_s
    from sprout.policy.contextual import prompt_terms
    from sprout.sim.methods.contextual import _texts, _trained
    from sprout.sim.workload import PromptSplit, bundled_workload

    w = bundled_workload()
    split = PromptSplit(0, 0.5, (family,))
    model = _trained(w, split, ("L0", "L1", "L2"), embodied_rate_g_per_s())[0]
    texts = _texts(w.ids)
    vocab, cfg = model.features.vocabulary, model.features.config

    def coverage(text: str) -> float:
        terms = prompt_terms(text, cfg.max_tokens, cfg.ngram_max)
        return sum(t in vocab for t in terms) / len(terms) if terms else 0.0

    train = np.flatnonzero(~split.evaluated(w) & split.seen(w))
    q05 = float(np.quantile([coverage(texts[r]) for r in train], 0.05))
    evaluated = split.evaluated(w)
    out = {}
    for name, start, count in zip(w.datasets, w.start, w.count, strict=True):
        rows = start + np.flatnonzero(evaluated[start : start + count])
        out[name] = float(np.mean([coverage(texts[r]) < q05 for r in rows]))
    print(
        f"{family} unseen: share of held-out prompts below the training 5th percentile "
        f"of vocabulary coverage ({q05:.3f}):"
    )
    for name, share in out.items():
        print(f"  {name}{' (unseen)' if name == family else ''}: {100 * share:.1f}%")
    return out


def standard(args: argparse.Namespace, seeds: tuple[int, ...]) -> int:
    """The variants on the standard protocol (no shift, nothing unseen)."""
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        loop_config(v)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            v: pool.submit(run, v, False, args.zone, args.start, None, args.hours, seeds)
            for v in variants
        }
        res = {v: f.result() for v, f in futures.items()}
    print(
        f"{args.zone} from hour {args.start}, {args.hours} h, seeds {args.seeds}, causal, "
        "xi 0.1; standard protocol"
    )
    print("| variant | gross / net / pref % | judged / h |")
    print("|---|---|---|")
    for v in variants:
        r = res[v]
        print(
            f"| {v} | {100 * r['gross']:.1f} / {100 * r['net']:.1f} / {100 * r['pref']:.1f} | "
            f"{r['judged_per_h']:.1f} |"
        )
    print(f"({time.perf_counter() - t0:.0f} s)")
    emit({f"{v}_{k}": round(100 * res[v][k], 2) for v in variants for k in ("net", "pref")})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zone", default="GB")
    p.add_argument("--start", type=int, default=800)
    p.add_argument("--family", default="math")
    p.add_argument("--hours", type=int, default=336)
    p.add_argument("--seeds", default="0")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument(
        "--standard",
        action="store_true",
        help="run the variants on the standard protocol instead (no shift, nothing unseen)",
    )
    p.add_argument(
        "--coverage",
        action="store_true",
        help="only print the vocabulary-coverage test of out-of-distribution prompts",
    )
    args = p.parse_args(argv)
    if args.coverage:
        shares = coverage_table(args.family)
        emit({f"below_q05_{k}_pct": round(100 * v, 1) for k, v in shares.items()})
        return 0
    lo, _, hi = args.seeds.partition("-")
    seeds = tuple(range(int(lo), int(hi) + 1)) if hi else (int(lo),)
    if args.standard:
        return standard(args, seeds)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        loop_config(v)  # fail early on a bad name
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            (v, u): pool.submit(run, v, u, args.zone, args.start, args.family, args.hours, seeds)
            for v in variants
            for u in (True, False)
        }
        res = {k: f.result() for k, f in futures.items()}
    print(
        f"{args.zone} from hour {args.start}, {args.hours} h, seeds {args.seeds}, causal, xi 0.1; "
        f"{args.family} at share 0.5 of the traffic"
    )
    print(
        "| variant | unseen: gross / net / pref % | in training: gross / net / pref % "
        "| judged / h |"
    )
    print("|---|---|---|---|")
    for v in variants:
        u, i = res[(v, True)], res[(v, False)]
        print(
            f"| {v} | {100 * u['gross']:.1f} / {100 * u['net']:.1f} / {100 * u['pref']:.1f} | "
            f"{100 * i['gross']:.1f} / {100 * i['net']:.1f} / {100 * i['pref']:.1f} | "
            f"{u['judged_per_h']:.1f} |"
        )
    print(f"({time.perf_counter() - t0:.0f} s)")
    emit(
        {
            f"{v}_{side}_{k}": round(100 * res[(v, u)][k], 2)
            for v in variants
            for side, u in (("unseen", True), ("in", False))
            for k in ("net", "pref")
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
