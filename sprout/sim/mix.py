"""The shifting mix of workloads over time, as in the Sprout protocol (pure).

Each workload gets its own random start offset into the PAI hourly job-count trace. At each
mix change the workloads' counts are read at their offsets (each offset then advances by one,
wrapping at the end of the trace) and normalized to shares. The next change comes after
``round(Normal(24, 4.8))`` hours (at least one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sprout.errors import ConfigError

MEAN_INTERVAL_H = 24.0
SD_INTERVAL_H = 4.8


@dataclass(frozen=True)
class MixSchedule:
    """Workload shares per hour.

    Attributes:
        shares: (hours, workloads) shares, each row summing to 1.
        change_hours: hours at which the mix changed (starting with 0).
        offsets: each workload's initial offset into the job-count trace.
    """

    shares: np.ndarray
    change_hours: tuple[int, ...]
    offsets: tuple[int, ...]

    @property
    def intervals_h(self) -> np.ndarray:
        """Hours between consecutive changes (the last, cut by the window, excluded)."""
        return np.diff(np.asarray(self.change_hours))


def mix_schedule(
    job_counts: Sequence[int] | np.ndarray,
    hours: int,
    rng: np.random.Generator,
    workloads: int = 6,
    mean_interval_h: float = MEAN_INTERVAL_H,
    sd_interval_h: float = SD_INTERVAL_H,
) -> MixSchedule:
    """Draw the workload mix for ``hours`` hours.

    The draws are consumed in a fixed order (the offsets, then one interval per change), so a
    shorter run is a prefix of a longer one with the same generator state.

    Args:
        job_counts: hourly job counts (the PAI trace).
        hours: length of the schedule.
        rng: the seeded generator.
        workloads: number of workloads.
        mean_interval_h, sd_interval_h: the normal distribution of hours between changes.
    """
    counts = np.asarray(job_counts, dtype=float)
    if (
        counts.ndim != 1
        or counts.size == 0
        or np.any(counts < 0)
        or not np.all(np.isfinite(counts))
    ):
        raise ConfigError("job_counts: expected a non-empty series of finite counts >= 0")
    if hours < 1:
        raise ConfigError(f"hours must be >= 1, got {hours}")
    offsets = rng.integers(0, counts.size, size=workloads)
    position = offsets.copy()
    shares = np.empty((hours, workloads))
    changes: list[int] = []
    t = 0
    while t < hours:
        read = counts[position % counts.size]
        total = read.sum()
        # An all-zero reading has no shares to give: treat the workloads as equally busy.
        row = read / total if total > 0 else np.full(workloads, 1.0 / workloads)
        position += 1
        interval = max(1, int(np.rint(rng.normal(mean_interval_h, sd_interval_h))))
        shares[t : t + interval] = row
        changes.append(t)
        t += interval
    return MixSchedule(shares, tuple(changes), tuple(int(o) for o in offsets))
