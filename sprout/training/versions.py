"""Where the LP policy's versions come from: the bundled level statistics it starts from,
the prior quality the quality loop shrinks its estimates toward, and the LP versions stored
in the ledger.

The wiring (:mod:`sprout.factory`) starts a controller from these; the quality loop
(:mod:`sprout.quality_loop`) stores a new LP version each time it refreshes the quality. Both
store through :func:`lp_policy_version`, so that equal statistics share one version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sprout.data import LEVELS, load_workload
from sprout.errors import ConfigError
from sprout.policy.base import LP_KIND
from sprout.policy.stats import LevelStats, level_stats

if TYPE_CHECKING:
    from sprout.directives import DirectiveSet
    from sprout.ledger.store import Ledger


def bundled_level_stats(directives: DirectiveSet) -> LevelStats:
    """Per-level energy, time and judged quality from the bundled recordings.

    Raises:
        ConfigError: if the directive set does not name the recorded levels.
    """
    missing = [level for level in LEVELS if level not in directives.names]
    if missing:
        raise ConfigError(
            f"{directives.source}: the bundled recordings give quality and energy for "
            f"directives {', '.join(LEVELS)}, but this policy file lacks {', '.join(missing)}; "
            "name the recorded levels L0, L1, L2 (they may add caps or variants)"
        )
    return level_stats(load_workload(), LEVELS)


def prior_quality(directives: DirectiveSet) -> tuple[float, ...]:
    """Prior quality per directive: the bundled GPT-4 judgments for the recorded levels
    (L0, L1, L2), uniform for a directive set that does not name them.

    A directive the recordings do not cover (a fourth level added to the policy file) gets
    the baseline's prior: assumed as good as the baseline until verdicts say otherwise. Never
    0: a prior of 0 would hold its estimate near 0, whatever its verdicts, for as long as
    the prior outweighs them.
    """
    n = len(directives)
    if not set(LEVELS) <= set(directives.names):
        return tuple([1.0 / n] * n)
    stats = bundled_level_stats(directives)
    by_name = dict(zip(stats.levels, stats.quality, strict=True))
    fallback = by_name.get(directives.baseline.name, max(stats.quality))
    return tuple(by_name.get(name, fallback) for name in directives.names)


def lp_policy_version(ledger: Ledger, stats: LevelStats, xi: float) -> int:
    """Id of the stored LP policy version matching ``stats`` and ``xi``, storing it if new.

    Processes starting together on one ledger (proxy workers, replicas) take turns under a
    job lock, so that they store one version between them rather than one each.
    """
    # The ledger's modules import SQLAlchemy: loaded when a version is stored, not at import.
    from sprout.ledger.locks import job_lock
    from sprout.ledger.store import params_sha256

    params = {"stats": stats.as_dict(), "xi": xi}
    with job_lock(ledger.engine, "lp-policy-version", wait_s=30.0):
        latest = ledger.latest_policy_version(LP_KIND)
        # Compare hashes: stored params come back JSON-normalised (tuples as lists).
        if latest is not None and latest.sha256 == params_sha256(params):
            return latest.id
        return ledger.save_policy_version(
            LP_KIND,
            params,
            {"n_energy": stats.n_energy, "n_judged": stats.n_judged},
            note="level statistics from the bundled recordings",
        )


__all__ = ["bundled_level_stats", "lp_policy_version", "prior_quality"]
