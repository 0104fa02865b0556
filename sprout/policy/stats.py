"""Per-level statistics the Sprout LP needs, computed from recorded workloads (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sprout.data import WorkloadRecord


@dataclass(frozen=True)
class LevelStats:
    """Mean energy, mean duration and judged quality per directive level.

    Attributes:
        levels: directive names, index 0 the baseline.
        energy_kwh: mean energy per request.
        time_s: mean request duration.
        quality: share of judged prompts whose preferred answer is each level.
        n_energy, n_judged: how many prompts each figure rests on.
    """

    levels: tuple[str, ...]
    energy_kwh: tuple[float, ...]
    time_s: tuple[float, ...]
    quality: tuple[float, ...]
    n_energy: int
    n_judged: int

    def as_dict(self) -> dict[str, object]:
        """JSON-safe form, for storing as a policy version."""
        return {
            "levels": list(self.levels),
            "energy_kwh": list(self.energy_kwh),
            "time_s": list(self.time_s),
            "quality": list(self.quality),
            "n_energy": self.n_energy,
            "n_judged": self.n_judged,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> LevelStats:
        """Inverse of :meth:`as_dict`."""
        return cls(
            levels=tuple(raw["levels"]),  # type: ignore[arg-type]
            energy_kwh=tuple(raw["energy_kwh"]),  # type: ignore[arg-type]
            time_s=tuple(raw["time_s"]),  # type: ignore[arg-type]
            quality=tuple(raw["quality"]),  # type: ignore[arg-type]
            n_energy=int(raw["n_energy"]),  # type: ignore[call-overload]
            n_judged=int(raw["n_judged"]),  # type: ignore[call-overload]
        )


def level_stats(
    records: Iterable[WorkloadRecord], levels: Sequence[str] = ("L0", "L1", "L2")
) -> LevelStats:
    """Stats over ``records``: energy/time means over all, quality over judged ones.

    Quality of level k is the share of judged prompts (with a clear verdict) whose
    ``judge_best`` is k, as in the Sprout paper.
    """
    records = list(records)
    if not records:
        raise ValueError("no workload records to compute level statistics from")
    n = len(levels)
    energy = [0.0] * n
    time = [0.0] * n
    wins = [0] * n
    judged = 0
    for r in records:
        for k, level in enumerate(levels):
            energy[k] += r.energy_kwh[level]
            time[k] += r.time_s[level]
        if r.judge_sampled and r.judge_best is not None and r.judge_best < n:
            wins[r.judge_best] += 1
            judged += 1
    if judged == 0:
        raise ValueError("no judged records: cannot estimate quality per level")
    return LevelStats(
        levels=tuple(levels),
        energy_kwh=tuple(e / len(records) for e in energy),
        time_s=tuple(t / len(records) for t in time),
        quality=tuple(w / judged for w in wins),
        n_energy=len(records),
        n_judged=judged,
    )
