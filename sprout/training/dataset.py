"""A training set: the examples as arrays, and the held-out split (the simulator's split:
the same seed and fraction hold out the same bundled prompts)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sprout.errors import ConfigError
from sprout.training.sources import DEFAULT_HELD_OUT, DEFAULT_SPLIT_SEED, TrainingExample

if TYPE_CHECKING:
    pass


log = logging.getLogger("sprout.training")


@dataclass(frozen=True)
class TrainingSet:
    """Examples as arrays, with the held-out mask.

    Attributes:
        levels: the levels (columns), index 0 the baseline.
        prompts: the prompt texts.
        preferred: (n,) index of the preferred level, -1 if unjudged.
        energy_kwh, time_s: (n, levels) measured cost, NaN where not measured.
        groups: (n,) the stratum of each example.
        weights: (n,) the examples' weights.
        held_out: (n,) the judged examples held out for evaluation.
        sources: names of the sources the examples came from.
    """

    levels: tuple[str, ...]
    prompts: tuple[str, ...]
    preferred: np.ndarray
    energy_kwh: np.ndarray
    time_s: np.ndarray
    groups: tuple[str, ...]
    weights: np.ndarray
    held_out: np.ndarray
    sources: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Number of examples."""
        return len(self.prompts)


def held_out_mask(
    groups: Sequence[str], judged: np.ndarray, seed: int, fraction: float
) -> np.ndarray:
    """Which judged examples are held out: ``fraction`` of each group's, chosen by ``seed``.

    The same draw as :meth:`sprout.sim.workload.PromptSplit.evaluated` (groups in order of
    first appearance, one generator across them), so the bundled data split alike here and
    in the simulator.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"held-out fraction must lie in (0, 1], got {fraction!r}")
    judged = np.asarray(judged, dtype=bool)
    if fraction >= 1.0:
        return judged.copy()
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(groups), dtype=bool)
    order: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        order.setdefault(g, []).append(i)
    for members in order.values():
        rows = np.array([i for i in members if judged[i]], dtype=np.int64)
        n_held = max(1, round(fraction * len(rows)))
        if rows.size:
            mask[rng.permutation(rows)[:n_held]] = True
    return mask


def training_set(
    examples: Iterable[TrainingExample],
    levels: Sequence[str],
    *,
    split_seed: int = DEFAULT_SPLIT_SEED,
    held_out_fraction: float = DEFAULT_HELD_OUT,
    sources: Sequence[str] = (),
) -> TrainingSet:
    """Arrays of ``examples`` over ``levels`` with a held-out split.

    Raises:
        ConfigError: no examples.
    """
    prompts: list[str] = []
    preferred: list[int] = []
    energy: list[list[float]] = []
    time: list[list[float]] = []
    groups: list[str] = []
    weights: list[float] = []
    index = {name: i for i, name in enumerate(levels)}
    for ex in examples:
        prompts.append(ex.prompt)
        preferred.append(index.get(ex.preferred_level, -1) if ex.preferred_level else -1)
        energy.append([float(ex.energy_kwh.get(n, math.nan)) for n in levels])
        time.append([float(ex.time_s.get(n, math.nan)) for n in levels])
        groups.append(ex.group)
        weights.append(float(ex.weight))
    if not prompts:
        raise ConfigError("retrain: no training examples")
    pref = np.array(preferred, dtype=np.int64)
    return TrainingSet(
        levels=tuple(levels),
        prompts=tuple(prompts),
        preferred=pref,
        energy_kwh=np.array(energy, dtype=float),
        time_s=np.array(time, dtype=float),
        groups=tuple(groups),
        weights=np.array(weights, dtype=float),
        held_out=held_out_mask(groups, pref >= 0, split_seed, held_out_fraction)
        if held_out_fraction > 0
        else np.zeros(len(prompts), dtype=bool),
        sources=tuple(sources),
    )
