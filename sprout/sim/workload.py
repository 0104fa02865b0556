"""The bundled workloads as numpy arrays, built once, for fast sampling.

Rows of all six datasets are concatenated in :data:`~sprout.data.DATASETS` order; a
dataset's rows are ``start[d] : start[d] + count[d]``. Columns of the cost arrays follow
:data:`~sprout.data.RECORDED_KEYS` (``L0, L1, L2, 7b_L0``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sprout.data import DATASETS, LEVELS, RECORDED_KEYS, WorkloadRecord, load_workload
from sprout.errors import ConfigError

#: No verdict (not judged, or the judge picked no clear winner).
NO_VERDICT = -1


@dataclass(frozen=True)
class WorkloadArrays:
    """Cost and verdict arrays of a set of workload records.

    Attributes:
        datasets: dataset names, in row order.
        keys: recorded generation keys, the columns of ``energy_kwh`` and ``time_s``.
        ids: prompt id per row.
        energy_kwh: (rows, keys) measured energy per request.
        time_s: (rows, keys) measured latency per request.
        verdict: per row, the index in :data:`~sprout.data.LEVELS` of the level the judge
            preferred, or :data:`NO_VERDICT`.
        start, count: first row and number of rows per dataset.
    """

    datasets: tuple[str, ...]
    keys: tuple[str, ...]
    ids: tuple[str, ...]
    energy_kwh: np.ndarray
    time_s: np.ndarray
    verdict: np.ndarray
    start: np.ndarray
    count: np.ndarray

    @property
    def rows(self) -> int:
        """Number of prompts."""
        return int(self.energy_kwh.shape[0])

    def key_index(self, name: str) -> int:
        """Column of the recorded key ``name``."""
        try:
            return self.keys.index(name)
        except ValueError:
            raise ConfigError(
                f"no recorded measurements for level {name!r}; recorded: {', '.join(self.keys)}"
            ) from None

    def dataset_of(self, rows: np.ndarray) -> np.ndarray:
        """Dataset index of each row in ``rows``."""
        return np.searchsorted(self.start, rows, side="right") - 1

    @classmethod
    def from_records(
        cls, records: Sequence[WorkloadRecord], datasets: Sequence[str] = DATASETS
    ) -> WorkloadArrays:
        """Arrays from records, grouped by dataset in ``datasets`` order."""
        by_dataset = {d: [r for r in records if r.dataset == d] for d in datasets}
        empty = [d for d, rs in by_dataset.items() if not rs]
        if empty:
            raise ConfigError(f"no workload records for dataset(s) {', '.join(empty)}")
        ordered = [r for d in datasets for r in by_dataset[d]]
        keys = RECORDED_KEYS
        energy = np.array([[r.energy_kwh[k] for k in keys] for r in ordered], dtype=float)
        time = np.array([[r.time_s[k] for k in keys] for r in ordered], dtype=float)
        verdict = np.array(
            [
                r.judge_best
                if r.judge_sampled and r.judge_best is not None and r.judge_best < len(LEVELS)
                else NO_VERDICT
                for r in ordered
            ],
            dtype=np.int8,
        )
        count = np.array([len(by_dataset[d]) for d in datasets], dtype=np.int64)
        start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        return cls(
            datasets=tuple(datasets),
            keys=keys,
            ids=tuple(r.id for r in ordered),
            energy_kwh=energy,
            time_s=time,
            verdict=verdict,
            start=start,
            count=count,
        )


@functools.lru_cache(maxsize=1)
def bundled_workload() -> WorkloadArrays:
    """The six bundled workloads as arrays (built once per process)."""
    return WorkloadArrays.from_records(load_workload(DATASETS))


@dataclass(frozen=True)
class PromptSplit:
    """Which judged prompts the simulator evaluates on.

    Today every judged prompt is evaluated (``held_out_fraction=1``). A per-request policy
    trained on verdicts must be evaluated on prompts it did not train on: a fraction below 1
    holds out that share of each dataset's judged prompts, chosen by ``seed``, and the rest
    form the training split.

    Families named in ``unseen`` are kept out of training entirely: all their judged prompts
    are evaluated and none of their rows is in :meth:`training` or :meth:`seen` (the other
    families' split is the same as without them).

    Attributes:
        seed: seed of the split (fixed and documented, independent of the workload seeds).
        held_out_fraction: share of each dataset's judged prompts that are evaluated.
        unseen: datasets no training input may touch (``sprout simulate --unseen``).
    """

    seed: int = 0
    held_out_fraction: float = 1.0
    unseen: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.held_out_fraction <= 1.0:
            raise ConfigError(
                f"held_out_fraction must lie in (0, 1], got {self.held_out_fraction!r}"
            )

    def evaluated(self, workload: WorkloadArrays) -> np.ndarray:
        """Boolean mask over rows: judged prompts with a verdict that are evaluated."""
        judged = workload.verdict != NO_VERDICT
        if self.held_out_fraction >= 1.0:
            return judged
        rng = np.random.default_rng(self.seed)
        mask = np.zeros(workload.rows, dtype=bool)
        for name, start, count in zip(
            workload.datasets, workload.start, workload.count, strict=True
        ):
            rows = start + np.flatnonzero(judged[start : start + count])
            n_held = max(1, round(self.held_out_fraction * len(rows)))
            order = rng.permutation(rows)  # drawn for every dataset: the others' split is fixed
            mask[rows if name in self.unseen else order[:n_held]] = True
        return mask

    def seen(self, workload: WorkloadArrays) -> np.ndarray:
        """Boolean mask over rows: rows of datasets not in :attr:`unseen`."""
        mask = np.ones(workload.rows, dtype=bool)
        for name, start, count in zip(
            workload.datasets, workload.start, workload.count, strict=True
        ):
            if name in self.unseen:
                mask[start : start + count] = False
        return mask

    def training(self, workload: WorkloadArrays) -> np.ndarray:
        """Boolean mask over rows: judged prompts with a verdict that are not evaluated (never
        a row of an unseen dataset)."""
        return (workload.verdict != NO_VERDICT) & ~self.evaluated(workload) & self.seen(workload)
