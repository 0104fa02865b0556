"""``sprout simulate``: the trace-driven evaluation, from the command line.

Wire it into the main parser with :func:`add_simulate_parser`; the parsed arguments run with
:func:`run_simulate` (also set as the sub-parser's ``func`` default). ``--seeds`` and ``--xi``
are read by :mod:`sprout.sim.specs`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sprout.cli.options import write_json
from sprout.errors import ConfigError, SproutError
from sprout.policy.base import DEFAULT_MAX_LOSS, parse_max_loss
from sprout.sim.specs import parse_seeds, parse_xis

_DEFAULT_METHODS = "base,co2_opt,model_opt,static,sprout,oracle,oracle_request"
#: The default of ``--judge-energy-wh`` (sprout.sim.evaluate.JUDGE_ENERGY_WH; kept here so
#: that building the parser imports no numpy).
JUDGE_ENERGY_WH_DEFAULT = 0.3
#: Defaults of ``--judge-share`` and ``--retrain-every`` (sprout.judge.sampler's
#: RECOMMENDED_JUDGE_SHARE, sprout.sim.loop's DEFAULT_RETRAIN_EVERY_H).
JUDGE_SHARE_DEFAULT = 0.02
RETRAIN_EVERY_DEFAULT = 24


def parse_methods(spec: str) -> tuple[str, ...]:
    """Method names from a comma list, checked against the registry.

    Raises:
        ConfigError: naming an unknown method and the known ones.
    """
    from sprout.sim.methods.registry import method_class

    names = tuple(p.strip() for p in spec.split(",") if p.strip())
    if not names:
        raise ConfigError("--methods: no method named")
    for name in names:
        try:
            method_class(name)
        except ConfigError as e:
            raise ConfigError(f"--methods: {e}") from None
    return names


def add_simulate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``simulate`` sub-command to ``subparsers`` (from ``add_subparsers()``)."""
    p = subparsers.add_parser(
        "simulate",
        help="replay recorded workloads over a carbon trace (the Sprout evaluation protocol)",
        description=(
            "Trace-driven evaluation: the six recorded workloads, mixed over time as in the "
            "Sprout paper, served under each method over a window of hourly carbon intensity. "
            "Prints carbon saving and normalized preference against always-L0."
        ),
    )
    p.add_argument(
        "--carbon",
        default="GB",
        metavar="ZONE_OR_CSV",
        help="bundled zone (GB, US-CAL-CISO, US-TEX-ERCO) or an hourly CSV in the "
        "Electricity Maps export format (default: GB)",
    )
    p.add_argument(
        "--column",
        default="ci_direct",
        choices=("ci_direct", "ci_lca"),
        help="intensity column (default: ci_direct, as the paper)",
    )
    p.add_argument("--start-hour", type=int, default=800, help="first trace hour (default: 800)")
    p.add_argument("--hours", type=int, default=720, help="window length (default: 720)")
    p.add_argument(
        "--xi",
        default="0.1",
        help="quality concession in [0, 1], or a comma list to sweep (default: 0.1)",
    )
    p.add_argument(
        "--mode",
        default="causal",
        choices=("paper", "causal"),
        help="paper: year-wide CI min/max and window mean (look-ahead, for "
        "reproduction); causal: trailing history only (default)",
    )
    p.add_argument(
        "--methods", default=_DEFAULT_METHODS, help=f"comma list (default: {_DEFAULT_METHODS})"
    )
    p.add_argument(
        "--seeds", default="0", help="workload-draw seeds: 0, 0-19 or 0,3,5 (default: 0)"
    )
    p.add_argument("--json", type=Path, metavar="OUT.json", help="write the results as JSON")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="write a figure")
    p.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="directive policy file (default: the bundled policies/default.toml)",
    )
    p.add_argument(
        "--history-hours",
        type=int,
        default=720,
        help="trailing CI history of causal mode (default: 720)",
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the split of judged prompts into training and held-out halves "
        "(default: 0); used when a method trains on verdicts (contextual)",
    )
    p.add_argument(
        "--held-out",
        type=float,
        metavar="FRACTION",
        help="share of each workload's judged prompts held out for evaluation, for every "
        "method (default: 0.5 when a method trains on verdicts, e.g. contextual, which "
        "trains on the rest; else 1, all judged prompts)",
    )
    p.add_argument(
        "--judged-per-hour",
        type=int,
        default=1000,
        help="judged prompts sampled per hour for quality (default: 1000)",
    )
    p.add_argument(
        "--energy-per-hour",
        type=int,
        default=10000,
        help="prompts sampled per hour for energy and latency (default: 10000)",
    )
    p.add_argument(
        "--family-share",
        metavar="FAMILY=S[,FAMILY=S...]",
        help="shift the traffic: each named workload family gets share S in (0, 1) of every "
        "hour, the others keep their relative shares of the rest (families: alpaca, math, "
        "mmlu, naturalqa, scienceqa, triviaqa)",
    )
    p.add_argument(
        "--unseen",
        metavar="FAMILY[,FAMILY...]",
        help="keep these families out of every training input (no verdict, text, vocabulary "
        "or cost regression of theirs); their prompts still arrive as traffic. Sprout's LP "
        "has no training data: it learns q^ from its evaluator's verdicts on served "
        "traffic, as in the paper",
    )
    p.add_argument(
        "--judge-energy-wh",
        type=float,
        default=JUDGE_ENERGY_WH_DEFAULT,
        metavar="WH",
        help="energy of one judge call, Wh, charged with the other directives' answers to "
        "methods that learn from verdicts (net saving). Default 0.3: an estimate, Epoch AI's "
        "~0.3 Wh per GPT-4o-class query ('How much energy does ChatGPT use?', 2025); vary "
        "it, e.g. 2.9 (EPRI 2024's per-ChatGPT-request figure)",
    )
    p.add_argument(
        "--requests-per-hour",
        type=int,
        metavar="N",
        help="served requests per hour the judging overhead is set against (default: "
        "--judged-per-hour, the requests each hour replays). Sprout's evaluator judges a "
        "fixed --judged-per-hour prompts per run; contextual judges a share of the traffic",
    )
    p.add_argument(
        "--judge-share",
        type=float,
        default=JUDGE_SHARE_DEFAULT,
        metavar="S",
        help="share of the per-request policy's served requests its quality loop judges "
        f"(default {JUDGE_SHARE_DEFAULT:g}: the share recommended for production, see "
        "docs/results.md; 0: no loop)",
    )
    p.add_argument(
        "--retrain-every",
        type=int,
        default=RETRAIN_EVERY_DEFAULT,
        metavar="HOURS",
        help="hours between the quality loop's scheduled retrains of the per-request policy "
        f"(default {RETRAIN_EVERY_DEFAULT}: retrain_cron's daily schedule; 0: never)",
    )
    p.add_argument(
        "--max-loss",
        type=_max_loss,
        default=DEFAULT_MAX_LOSS,
        metavar="D",
        help="the per-request policy's bound on how much one request's predicted chance of "
        "preference may fall below the baseline's, 0-1, or 'none' (default "
        f"{'none' if DEFAULT_MAX_LOSS is None else DEFAULT_MAX_LOSS}: the product's "
        "policy_max_loss)",
    )
    p.set_defaults(func=run_simulate)
    return p


def _max_loss(text: str) -> float | None:
    """``--max-loss``: a number or ``none`` (its range is checked by ``SimConfig``)."""
    try:
        return parse_max_loss(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def split_for(
    methods: tuple[str, ...],
    seed: int,
    held_out: float | None,
    unseen: tuple[str, ...] = (),
) -> Any:
    """The prompt split: ``held_out`` if given, else half held out when a method trains on
    verdicts (every method is then evaluated on the same held-out prompts), else none.

    Raises:
        ConfigError: a fraction outside (0, 1], or none left to train a method that must.
    """
    from sprout.sim.methods.registry import method_class
    from sprout.sim.workload import PromptSplit

    trains = [m for m in methods if getattr(method_class(m), "trains_on_verdicts", False)]
    if held_out is None:
        held_out = 0.5 if trains else 1.0
    if not 0.0 < held_out <= 1.0:
        raise ConfigError(f"--held-out: {held_out:g} is outside (0, 1]")
    if trains and held_out >= 1.0:
        raise ConfigError(
            f"--held-out 1 leaves no training prompts for {', '.join(trains)}; give a "
            "fraction below 1"
        )
    return PromptSplit(seed, held_out, unseen)


def _config(args: argparse.Namespace) -> Any:
    from sprout.sim.engine import SimConfig
    from sprout.sim.loop import LoopConfig
    from sprout.sim.scenario import parse_family_share, parse_unseen

    methods = parse_methods(args.methods)
    family_share = parse_family_share(args.family_share)
    unseen = parse_unseen(args.unseen)
    return SimConfig(
        carbon=args.carbon,
        column=args.column,
        start_hour=args.start_hour,
        hours=args.hours,
        xis=parse_xis(args.xi),
        mode=args.mode,
        methods=methods,
        seeds=parse_seeds(args.seeds),
        policy_file=args.policy,
        history_hours=args.history_hours,
        n_judged=args.judged_per_hour,
        n_energy=args.energy_per_hour,
        split=split_for(methods, args.split_seed, args.held_out, unseen),
        family_share=family_share,
        judge_energy_wh=args.judge_energy_wh,
        requests_per_hour=args.requests_per_hour,
        loop=LoopConfig(judge_share=args.judge_share, retrain_every_h=args.retrain_every),
        policy_max_loss=args.max_loss,
    )


def run_simulate(args: argparse.Namespace) -> int:
    """Run ``sprout simulate``; 0 on success, 2 on bad input (message on stderr)."""
    try:
        from sprout.sim.engine import simulate
        from sprout.sim.report import format_result, to_json

        config = _config(args)
        many = len(config.seeds) > 1

        def progress(line: str) -> None:
            if many:
                print(f"  {line}", file=sys.stderr, flush=True)

        result = simulate(config, progress=progress)
        print(format_result(result))
        if args.json is not None:
            write_json(args.json, to_json(result))
        if args.plot is not None:
            from sprout.sim.plot import plot_result

            print(f"wrote {plot_result(result, args.plot)}")
    except SproutError as e:
        print(f"sprout simulate: error: {e}", file=sys.stderr)
        return 2
    return 0


#: The name :mod:`sprout.cli.app` looks up in each command module.
register = add_simulate_parser
