"""Small slices of the bundled workload, for tests that train or simulate in about a second."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from sprout.data import DATASETS, load_workload
from sprout.policy.contextual import FeatureConfig
from sprout.sim.workload import WorkloadArrays
from sprout.training.sources import TrainingExample

#: A per-request model configuration that trains fast.
FAST = FeatureConfig(max_features=2000, cv_folds=3)


class SmallBundled:
    """The first judged prompts of each bundled workload (fast to train on)."""

    name = "bundled-small"
    #: Judged prompts taken from each dataset.
    per_dataset = 120

    def examples(self) -> Iterable[TrainingExample]:
        for d in DATASETS:
            rows = [r for r in load_workload((d,)) if r.judge_sampled][: self.per_dataset]
            for r in rows:
                yield TrainingExample(
                    r.instruction,
                    None if r.judge_best is None else ("L0", "L1", "L2")[r.judge_best],
                    r.energy_kwh,
                    r.time_s,
                    group=r.dataset,
                    source=self.name,
                )


def bundled_prompt() -> str:
    """A bundled prompt that the replay engine has every answer of (a judged one)."""
    return next(r.instruction for r in load_workload(("triviaqa",)) if r.judge_sampled)


@functools.lru_cache(maxsize=1)
def small_workload(per_dataset: int = 240) -> WorkloadArrays:
    """The first ``per_dataset`` judged prompts of each bundled dataset, as simulator arrays
    (training on them takes about a second). Cached: treat it as read-only."""
    records = []
    for d in DATASETS:
        records.extend([r for r in load_workload((d,)) if r.judge_sampled][:per_dataset])
    return WorkloadArrays.from_records(records)
