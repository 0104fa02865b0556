"""Per family: what the per-request policy promises, what the judge finds, and what the
per-request bound (``policy_max_loss``) changes.

The bundled model is fitted on the training split (split seed 0, half held out) and read on
the held-out prompts. At one intensity, for each bound, the Lagrangian assignment meets the
baseline's predicted preference on the mean (as the policy does, without the margin) and is
graded against the recorded GPT-4 verdicts:

- on the standard mix (every held-out prompt once): pooled expected and realised normalized
  preference, and each family's;
- on shifted mixes: each family's prompts five times over (about half of the traffic), the
  multiplier refitted on that mix (the policy's causal refit, with perfect hindsight).

Also printed: the preference model's held-out log loss, and each family's predicted and
recorded chance that the baseline is preferred; and, at the default bound, how much
evidence the quality loop's margin needs to see each shifted mix's shortfall: the gap
between expected and realised preference as :class:`~sprout.policy.assign.MarginEstimate`
measures it from verdicts (every held-out verdict read as one on the policy's own choice),
its spread per verdict, and the verdicts a standard error of 0.02 takes. Last, the standard
mix with each family held to its own floor (its label known, which no request carries):
what the per-request policy saves when no family's brevity is paid for by another's.

    python benchmarks/family_calibration.py [--bounds none,0.3,0.2,0.15,0.1] [--ci 300]

The last line is ``BENCH {...}``: the worst family's realised preference on a shifted mix,
per bound, and the pooled saving on the standard mix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import emit


def main(argv: list[str] | None = None) -> int:
    from sprout.accounting import embodied_rate_g_per_s
    from sprout.data import LEVELS
    from sprout.policy.assign import (
        MarginEstimate,
        bounded_cost,
        choose,
        expected_carbon_g,
        multiplier,
    )
    from sprout.policy.base import DEFAULT_MAX_LOSS, parse_max_loss
    from sprout.sim.methods.contextual import _preferred_levels, _trained
    from sprout.sim.workload import PromptSplit, bundled_workload

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bounds", default="none,0.3,0.2,0.15,0.1")
    p.add_argument("--ci", type=float, default=300.0, help="intensity, gCO2e/kWh")
    args = p.parse_args(argv)
    bounds = [parse_max_loss(b) for b in args.bounds.split(",")]

    workload = bundled_workload()
    split = PromptSplit(0, 0.5, ())
    levels = tuple(LEVELS)
    rate = embodied_rate_g_per_s()
    _, _, pred, _ = _trained(workload, split, levels, rate)
    rows = np.flatnonzero(split.evaluated(workload))
    verdict = _preferred_levels(workload.verdict, levels)[rows]
    family = np.repeat(np.array(workload.datasets), workload.count)[rows]
    pref = pred.pref[rows]
    cost = expected_carbon_g(pred.energy_kwh[rows], pred.time_s[rows], args.ci, rate)

    judged = verdict >= 0
    log_loss = float(-np.log(np.clip(pref[judged, verdict[judged]], 1e-12, None)).mean())
    print(f"held-out log loss of the preference model: {log_loss:.4f}")
    print("P(baseline preferred), predicted / recorded, held-out prompts:")
    print(
        "  "
        + "  ".join(
            f"{f} {pref[family == f, 0].mean():.2f}/{(verdict[family == f] == 0).mean():.2f}"
            for f in workload.datasets
        )
    )

    def assign(idx: np.ndarray, bound: float | None) -> np.ndarray:
        c = bounded_cost(cost[idx], pref[idx], bound)
        lam = multiplier(c, pref[idx], float(pref[idx, 0].mean()))
        return choose(c, pref[idx], lam)

    def realised(idx: np.ndarray, k: np.ndarray) -> float:
        return float((verdict[idx] == k).sum() / max(1, (verdict[idx] == 0).sum()))

    def saving(idx: np.ndarray, k: np.ndarray) -> float:
        return float(1.0 - cost[idx, k].sum() / cost[idx, 0].sum())

    everyone = np.arange(rows.size)
    # Each family's held-out prompts, and a mix giving them about half of the traffic (the
    # others once, the family five times over).
    members = {f: np.flatnonzero(family == f) for f in workload.datasets}
    half_mix = {
        f: np.concatenate([np.flatnonzero(family != f)] + [mine] * 5) for f, mine in members.items()
    }
    bench: dict[str, object] = {"ci_g_per_kwh": args.ci, "held_out_log_loss": round(log_loss, 4)}
    print(f"\nCI {args.ci:g} g/kWh; saving % / realised normalized preference %")
    for bound in bounds:
        k = assign(everyone, bound)
        label = "none" if bound is None else f"{bound:g}"
        line = [
            f"max_loss {label:>4}: standard mix {100 * saving(everyone, k):.1f} / "
            f"{100 * realised(everyone, k):.1f}"
        ]
        per_family = []
        shifted = []
        for f, mine in members.items():
            per_family.append(f"{f} {100 * realised(mine, k[mine]):.0f}")
            idx = half_mix[f]
            ks = assign(idx, bound)
            shifted.append((realised(idx, ks), saving(idx, ks), f))
        print(line[0])
        print("    by family on the standard mix: " + ", ".join(per_family))
        print(
            "    each family at ~half the traffic: "
            + ", ".join(f"{f} {100 * s:.0f} / {100 * r:.0f}" for r, s, f in shifted)
        )
        worst = min(shifted)
        bench[f"max_loss_{label}"] = {
            "standard_saving_pct": round(100 * saving(everyone, k), 1),
            "standard_pref_pct": round(100 * realised(everyone, k), 1),
            "worst_shifted_pref_pct": round(100 * worst[0], 1),
            "worst_shifted_family": worst[2],
        }
    # The margin's evidence: what one verdict tells of a mix's shortfall.
    print(
        f"\nmax_loss {DEFAULT_MAX_LOSS:g}, each family at ~half the traffic: the margin's evidence"
    )
    print("    family: expected / realised preference %, the gap the verdicts measure, its")
    print("    spread per verdict, and the verdicts a standard error of 0.02 takes")
    evidence: dict[str, object] = {}
    for f, idx in half_mix.items():
        k = assign(idx, DEFAULT_MAX_LOSS)
        p = pref[idx]
        expected = float(p[np.arange(idx.size), k].sum() / p[:, 0].sum())
        estimate = MarginEstimate(0.0)
        used = estimate.record(p, k, verdict[idx])
        measured = estimate.gap()
        if measured is None:
            continue
        gap, se = measured
        # Each held-out prompt appears five times over: the spread per verdict is what
        # counts, not the standard error of these repeats.
        spread = se * used**0.5
        needed = (spread / 0.02) ** 2
        print(
            f"    {f}: {100 * expected:.1f} / {100 * realised(idx, k):.1f}, "
            f"gap {gap:+.3f}, spread {spread:.2f}: {needed:,.0f} verdicts"
        )
        evidence[f] = {"gap": round(gap, 3), "verdicts_for_se_0.02": round(needed)}
    bench["margin_evidence"] = evidence

    # Each family held to its own floor, its label known (a bound on any kind-aware floor):
    # what the standard mix saves when no family's brevity is paid for by another's.
    k = np.zeros(rows.size, dtype=np.int64)
    for mine in members.values():
        k[mine] = assign(mine, DEFAULT_MAX_LOSS)
    print(
        f"\nmax_loss {DEFAULT_MAX_LOSS:g}, each family held to its own floor (labels known): "
        f"standard mix {100 * saving(everyone, k):.1f} / {100 * realised(everyone, k):.1f}"
    )
    print(
        "    by family: "
        + ", ".join(f"{f} {100 * realised(m, k[m]):.0f}" for f, m in members.items())
    )
    bench["per_family_floor"] = {
        "standard_saving_pct": round(100 * saving(everyone, k), 1),
        "standard_pref_pct": round(100 * realised(everyone, k), 1),
    }
    emit(bench)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
