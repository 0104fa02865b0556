"""Per-hour prompt samples, drawn by the hour's workload mix (pure numpy).

Each hour, as in the Sprout protocol: quality is measured on ``n_judged`` (1,000) judged
prompts drawn by the current mix, and mean energy and latency per level over ``n_energy``
(10,000) prompts drawn by the current mix. Every prompt is drawn independently: its workload
by the mix, then a prompt of that workload uniformly (with replacement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sprout.data import LEVELS
from sprout.errors import ConfigError
from sprout.sim.workload import WorkloadArrays

N_JUDGED = 1_000
N_ENERGY = 10_000
#: Hours sampled at once for the energy means: bounds memory (~40 MB per chunk at 10k).
_CHUNK_HOURS = 64


@dataclass(frozen=True)
class HourSamples:
    """What was sampled in each hour.

    Attributes:
        energy_kwh: (hours, keys) mean energy per request at each recorded key.
        time_s: (hours, keys) mean latency per request at each recorded key.
        quality: (hours, levels) share of the hour's judged prompts whose preferred level
            is each of :data:`~sprout.data.LEVELS` (``L0, L1, L2``).
        judged_rows: (hours, n_judged) workload rows of the hour's judged prompts.
        n_energy: prompts per hour behind the energy and latency means.
    """

    energy_kwh: np.ndarray
    time_s: np.ndarray
    quality: np.ndarray
    judged_rows: np.ndarray
    n_energy: int

    @property
    def hours(self) -> int:
        """Number of hours."""
        return int(self.energy_kwh.shape[0])


def _draw_rows(
    shares: np.ndarray,
    n: int,
    pool_rows: np.ndarray,
    pool_start: np.ndarray,
    pool_count: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """(hours, n) rows: each draw's workload by the hour's shares, then a uniform pool row."""
    counts = rng.multinomial(n, shares)
    workload = np.repeat(np.tile(np.arange(shares.shape[1]), shares.shape[0]), counts.ravel())
    pick = (rng.random(workload.size) * pool_count[workload]).astype(np.int64)
    return pool_rows[pool_start[workload] + pick].reshape(shares.shape[0], n)


def sample_hours(
    workload: WorkloadArrays,
    shares: np.ndarray,
    rng: np.random.Generator,
    evaluated: np.ndarray | None = None,
    n_judged: int = N_JUDGED,
    n_energy: int = N_ENERGY,
) -> HourSamples:
    """Draw every hour's samples.

    Args:
        workload: the prompts.
        shares: (hours, workloads) mix per hour, workloads in ``workload.datasets`` order.
        rng: the seeded generator.
        evaluated: boolean mask over rows of the judged prompts quality is measured on (all
            judged prompts with a verdict if None).
        n_judged: judged prompts per hour.
        n_energy: prompts per hour for the energy and latency means.
    """
    if n_judged < 1 or n_energy < 1:
        raise ConfigError(f"sample sizes must be >= 1, got {n_judged} judged, {n_energy} energy")
    shares = np.asarray(shares, dtype=float)
    n_workloads = len(workload.datasets)
    if shares.ndim != 2 or shares.shape[1] != n_workloads:
        raise ConfigError(f"shares: expected (hours, {n_workloads}), got {shares.shape}")
    mask = workload.verdict >= 0 if evaluated is None else np.asarray(evaluated, dtype=bool)
    judged_pool = np.flatnonzero(mask)
    judged_count = np.array(
        [int(mask[s : s + c].sum()) for s, c in zip(workload.start, workload.count, strict=True)]
    )
    empty = [
        d
        for d, c, s in zip(workload.datasets, judged_count, shares.max(0), strict=True)
        if c == 0 and s > 0
    ]
    if empty:
        raise ConfigError(f"no evaluated judged prompts in workload(s) {', '.join(empty)}")
    judged_start = np.concatenate([[0], np.cumsum(judged_count)[:-1]])
    judged_rows = _draw_rows(shares, n_judged, judged_pool, judged_start, judged_count, rng)

    verdict = workload.verdict[judged_rows]
    quality = np.stack([(verdict == k).mean(axis=1) for k in range(len(LEVELS))], axis=1)

    # Energy and latency together: one gather per draw instead of two.
    costs = np.concatenate([workload.energy_kwh, workload.time_s], axis=1)
    all_rows = np.arange(workload.rows)
    means = np.empty((shares.shape[0], costs.shape[1]))
    for lo in range(0, shares.shape[0], _CHUNK_HOURS):
        chunk = shares[lo : lo + _CHUNK_HOURS]
        rows = _draw_rows(chunk, n_energy, all_rows, workload.start, workload.count, rng)
        means[lo : lo + len(chunk)] = costs[rows].mean(axis=1)
    n_keys = len(workload.keys)
    return HourSamples(
        energy_kwh=means[:, :n_keys],
        time_s=means[:, n_keys:],
        quality=quality,
        judged_rows=judged_rows.astype(np.int32),
        n_energy=n_energy,
    )
