"""``sprout retrain``: rebuild the per-request policy and store it as a policy version.

Wired into the main parser by :func:`register` (see ``sprout.cli.app.SUBCOMMAND_MODULES``).
Trains on the ledger's judged requests (``--data``, see
:func:`sprout.training.sources.choose_sources`): beside the bundled recorded workloads while
the ledger holds few verdicts, alone once it holds enough, the bundled data alone on a fresh
install; evaluates on a held-out split (``--split-seed``, ``--held-out``); stores the model
with its metrics in the ledger, where running controllers pick it up (``policy_refresh_s``).
``--schedule`` keeps retraining on the ``retrain_cron`` setting (APScheduler, UTC).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from sprout.cli.options import add_settings_options, parse_time_option, settings_for, write_json
from sprout.policy.base import DATA_CHOICES, MIN_LEDGER_EXAMPLES

log = logging.getLogger("sprout.training")


def _summary(result: Any) -> str:
    m = result.metrics
    tr, ho = m["training"], m.get("held_out", {})
    lines = [
        f"examples: {m['examples']['total']} ({m['examples']['judged']} judged, "
        f"{m['examples']['held_out']} held out; sources: {', '.join(m['examples']['sources'])})",
        f"training: {tr['n_judged']} judged prompts, {tr['n_terms']} terms; out-of-fold "
        f"accuracy {tr['oof_accuracy']:.3f}, log loss {tr['oof_log_loss']:.4f} (prior "
        f"{tr['prior_log_loss']:.4f}); safety margin {tr['margin']:.4f} (out-of-fold optimism "
        f"{tr['margin_gap']:.4f}, standard error {tr['margin_se']:.4f})",
    ]
    if ho.get("n_held_out"):
        lines.append(
            f"held out: {ho['n_held_out']} prompts; accuracy {ho['accuracy']:.3f}, log loss "
            f"{ho['log_loss']:.4f} (prior {ho['prior_log_loss']:.4f})"
        )
        check = ho.get("check")
        if check:
            lines.append(
                f"held-out check at {check['ci_g_per_kwh']:g} gCO2e/kWh: carbon saving "
                f"{check['carbon_saving'] * 100:.1f} %, normalized preference "
                f"{check['normalized_preference'] * 100:.1f} % (expected "
                f"{check['expected_normalized_preference'] * 100:.1f} %)"
            )
    return "\n".join(lines)


def _retrain_once(args: argparse.Namespace, settings: Any) -> Any:
    from sprout.accounting import embodied_rate_g_per_s
    from sprout.factory import build_ledger
    from sprout.training.retrain import retrain

    # Read for its verdicts unless neither reading nor storing is asked for.
    ledger = None if args.no_store and args.data == "bundled" else build_ledger(settings)
    try:
        return retrain(
            ledger,
            store=not args.no_store,
            split_seed=args.split_seed,
            held_out_fraction=args.held_out,
            embodied_g_per_s=embodied_rate_g_per_s(settings.embodied_g, settings.lifetime_years),
            refit_all=args.refit_all,
            data=args.data,
            now=parse_time_option(args.as_of, "--as-of"),  # None: now, at each run
            max_loss=settings.policy_max_loss,
        )
    finally:
        if ledger is not None:
            ledger.close()


def _cmd_retrain(args: argparse.Namespace) -> int:
    from sprout.training.sources import RetrainOptions

    RetrainOptions(args.data, args.split_seed, args.held_out, args.refit_all)  # validates
    settings = settings_for(args, retrain_cron=args.cron)
    if args.schedule:
        return _schedule(args, settings)
    result = _retrain_once(args, settings)
    print(_summary(result))
    if result.version is not None:
        print(f"stored contextual policy version {result.version}")
    if args.json is not None:
        write_json(args.json, result.metrics)
    return 0


def _schedule(args: argparse.Namespace, settings: Any) -> int:
    from sprout.errors import SproutError
    from sprout.scheduler import create_scheduler, run_blocking
    from sprout.training.schedule import schedule_retrain

    def job() -> None:
        try:
            result = _retrain_once(args, settings)
        except SproutError as e:  # logged; the next run may succeed
            log.error("scheduled retrain failed: %s", e)
            return
        log.warning("scheduled retrain stored contextual policy version %s", result.version)

    scheduler = create_scheduler(blocking=True, max_workers=1)
    schedule_retrain(scheduler, job, settings.retrain_cron)
    print(
        f"retraining on cron {settings.retrain_cron!r} (UTC); Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    run_blocking(scheduler)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``retrain`` to ``subparsers`` (from ``add_subparsers()``)."""
    p = subparsers.add_parser(
        "retrain",
        help="rebuild the per-request (contextual) policy and store it as a policy version",
        description=(
            "Fits the contextual policy's model (prompt text -> each directive's chance of "
            "being preferred by the judge, and its energy and latency) on the ledger's judged "
            "requests (prompt, verdict, measured energy and latency), with the bundled recorded "
            "workloads beside them while the ledger holds few verdicts (alone on a fresh "
            "install); "
            "evaluates it on held-out prompts and stores it, with its metrics, as a new "
            "policy version that running controllers pick up without a restart."
        ),
    )
    add_settings_options(p)
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the held-out split (default 0: the split `sprout simulate` evaluates on)",
    )
    p.add_argument(
        "--held-out",
        type=float,
        default=0.5,
        help="share of each workload's judged prompts held out for evaluation (default 0.5; "
        "0: train on all, no evaluation)",
    )
    p.add_argument(
        "--data",
        choices=DATA_CHOICES,
        default="auto",
        help="training data: auto (default: the ledger's verdicts, plus the bundled "
        f"recordings while the ledger has fewer than {MIN_LEDGER_EXAMPLES} judged requests), "
        "ledger, bundled, or both",
    )
    p.add_argument(
        "--as-of",
        metavar="TIME",
        help="the time the ledger's verdicts are weighed at (recency weights, the 8 "
        "half-life horizon), ISO 8601 UTC; default: now (set it to retrain a replayed ledger, "
        "e.g. the demo's)",
    )
    p.add_argument(
        "--refit-all",
        action="store_true",
        help="after evaluating, refit on every example and store that model",
    )
    p.add_argument(
        "--no-store", action="store_true", help="fit and evaluate; store nothing in the ledger"
    )
    p.add_argument("--json", type=Path, metavar="OUT.json", help="write the metrics as JSON")
    p.add_argument(
        "--schedule",
        action="store_true",
        help="keep running, retraining on the retrain_cron setting (default '0 3 * * *', UTC)",
    )
    p.add_argument("--cron", help="crontab line for --schedule (overrides retrain_cron)")
    p.set_defaults(func=_cmd_retrain)
    return p
