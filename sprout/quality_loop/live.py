"""The quality loop's estimates applied to a live controller.

A refreshed estimate (:class:`~sprout.judge.quality.QualityEstimate`) reaches the serving
policy here: the LP gets the new quality (stored as a new LP policy version), the quality
guard its baseline share, and a contextual policy its safety margin, revised from the
verdicts on its own choices. Policies are swapped only through
:meth:`~sprout.controller.Controller.swap_policy`, so that a retrained version swapped in
meanwhile is never undone. :func:`restore_quality` does the same at start-up, and
:class:`QualityFollower` for a controller whose judge job runs elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sprout.errors import LedgerError, SproutError
from sprout.judge.quality import QualityEstimate, QualityGuardPolicy, refreshed_stats, unwrap
from sprout.policy.base import QUALITY_KIND
from sprout.policy.contextual import ContextualPolicy
from sprout.policy.recency import DEFAULT_HALF_LIFE_H
from sprout.policy.sprout_lp import SproutLPPolicy
from sprout.scheduler import add_interval_job
from sprout.training.verdicts import LedgerVerdictSource, margin_verdicts
from sprout.training.versions import lp_policy_version

if TYPE_CHECKING:
    from apscheduler.job import Job
    from apscheduler.schedulers.base import BaseScheduler

    from sprout.controller import Controller
    from sprout.directives import Directive
    from sprout.ledger.store import Ledger
    from sprout.policy.base import Policy
    from sprout.policy.stats import LevelStats

# The quality loop's logger since it lived in sprout.judge: operators filter on the name.
log = logging.getLogger("sprout.judge")


def policy_with_estimate(
    policy: Policy, estimate: QualityEstimate, baseline: Directive
) -> tuple[Policy, LevelStats | None]:
    """``policy`` updated by ``estimate``: an LP gets the new quality, and the whole is
    wrapped in the quality guard while it is engaged.

    Returns:
        The new policy and, for an LP, its statistics (else None).
    """
    inner = unwrap(policy)
    stats = None
    if isinstance(inner, SproutLPPolicy):
        stats = refreshed_stats(inner.stats, estimate)
        if stats != inner.stats:
            # A new object rather than a mutation: requests deciding now keep a consistent one.
            inner = SproutLPPolicy(inner.directives, stats, inner.xi, inner.embodied_g_per_s)
    if estimate.l0_share > 0.0:
        return QualityGuardPolicy(inner, baseline, estimate.l0_share), stats
    return inner, stats


def latest_estimate(ledger: Ledger) -> QualityEstimate | None:
    """The quality loop's latest stored estimate, or None (none, or unreadable: logged)."""
    try:
        version = ledger.latest_policy_version(QUALITY_KIND)
        return None if version is None else QualityEstimate.from_params(version.params)
    except (LedgerError, ValueError) as e:
        log.error("quality loop: the stored quality estimate cannot be used: %s", e)
        return None


def restore_quality(
    ledger: Ledger, policy: Policy, stats: LevelStats, baseline: Directive
) -> tuple[Policy, LevelStats]:
    """``policy`` and ``stats`` with the latest stored estimate applied (at start-up, so
    that a restarted controller keeps what the quality loop learnt)."""
    estimate = latest_estimate(ledger)
    if estimate is None:
        return policy, stats
    new_policy, new_stats = policy_with_estimate(policy, estimate, baseline)
    if estimate.below_floor:
        log.warning("quality loop: %s", estimate.warning())
    return new_policy, new_stats or stats


#: Attempts to apply an estimate while other writers keep swapping the serving policy.
_SWAP_TRIES = 3


def apply_estimate(controller: Controller, estimate: QualityEstimate, xi: float) -> None:
    """Give ``controller`` the estimate: its LP the new quality (stored as a new LP policy
    version, which its receipts then name), and the quality guard its baseline share.

    The new policy is derived from the serving one and swapped in only if that still serves
    (a retrained version may be swapped in meanwhile: then it is derived again from that).
    """
    for _ in range(_SWAP_TRIES):
        current, version = controller.serving()
        policy, stats = policy_with_estimate(current, estimate, controller.directives.baseline)
        if stats is not None and controller.ledger is not None:
            try:
                version = lp_policy_version(controller.ledger, stats, xi)
            except SproutError as e:  # the receipts then keep the older version's id
                log.error("quality loop: refreshed LP statistics not stored: %s", e)
        if controller.swap_policy(policy, version, replacing=current, keep_guard=False):
            return
    log.warning(
        "quality loop: the serving policy kept changing; the estimate applies at the next run"
    )


def refresh_margin(
    controller: Controller,
    now: datetime,
    half_life_h: float,
    verdicts: Iterable[Mapping[str, Any]] | None = None,
) -> int | None:
    """Revise the safety margin of ``controller``'s contextual policy from the ledger's
    verdicts on its own choices (recency-weighted, replacing what it had learnt).
    ``verdicts``: the rows of the last 8 half-lives, when the caller has read them already.

    Returns:
        the verdicts used, or None when the controller serves no contextual policy.

    Raises:
        LedgerError: the ledger cannot be read.
    """
    served, version = controller.serving()
    policy = unwrap(served)
    if not isinstance(policy, ContextualPolicy) or controller.ledger is None:
        return None
    source = LedgerVerdictSource(controller.ledger, policy.model.levels, half_life_h=half_life_h)
    mine = margin_verdicts(source.examples(now, verdicts), policy.model.levels, version)
    return policy.learn_verdicts(mine, replace=True)


def restore_margin(controller: Controller, half_life_h: float) -> None:
    """Revise the contextual policy's safety margin from the verdicts already stored on its
    own choices (at start-up, so that a restart keeps what the quality loop measured)."""
    try:
        refresh_margin(controller, controller.now(), half_life_h)
    except SproutError as e:  # the training margin serves until the judge's next run
        logging.getLogger("sprout.policy").warning(
            "contextual policy: stored verdicts not read, keeping the training margin: %s", e
        )


class QualityFollower:
    """Keeps a controller up to date with the estimates a judge job elsewhere stores (another
    process, another replica): :meth:`poll` applies the latest one when it is new.

    Args:
        controller: the controller (with a ledger).
        xi: the optimizer's xi (for the LP policy versions).
    """

    def __init__(
        self, controller: Controller, xi: float, half_life_h: float = DEFAULT_HALF_LIFE_H
    ) -> None:
        if controller.ledger is None:
            raise ValueError("following the quality loop needs the controller's ledger")
        self.controller = controller
        self.xi = xi
        self.half_life_h = half_life_h
        self._seen: int | None = None

    def poll(self) -> bool:
        """Apply the latest stored estimate if it is new; whether one was applied.

        Raises:
            LedgerError: the ledger cannot be read.
        """
        assert self.controller.ledger is not None
        version = self.controller.ledger.latest_policy_version(QUALITY_KIND)
        if version is None or version.id == self._seen:
            return False
        self._seen = version.id
        try:
            estimate = QualityEstimate.from_params(version.params)
        except ValueError as e:
            log.error("quality loop: stored estimate %d cannot be used: %s", version.id, e)
            return False
        apply_estimate(self.controller, estimate, self.xi)
        refresh_margin(self.controller, self.controller.now(), self.half_life_h)
        if estimate.below_floor:
            log.warning("quality loop: %s", estimate.warning())
        return True

    def schedule(self, scheduler: BaseScheduler, interval_s: float = 600.0) -> Job:
        """Add :meth:`poll` to ``scheduler`` every ``interval_s`` seconds."""

        def job() -> None:
            try:
                self.poll()
            except SproutError as e:  # the next poll retries
                log.warning("quality loop: estimates not refreshed: %s", e)

        return add_interval_job(
            scheduler, job, interval_s=interval_s, job_id="sprout-quality-follow"
        )


__all__ = [
    "QualityFollower",
    "apply_estimate",
    "latest_estimate",
    "policy_with_estimate",
    "refresh_margin",
    "restore_margin",
    "restore_quality",
]
