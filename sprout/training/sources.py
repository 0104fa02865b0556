"""Where training examples come from: the ledger's judged live requests and the bundled
recordings, and the rule that picks between them.

:class:`LedgerSource` yields the quality loop's judged live requests (the kept prompt, the
judge's preferred directive, each directive's measured or recorded energy and latency,
recency-weighted: :mod:`sprout.training.verdicts`); :class:`BundledSource` the recorded
workloads a fresh install trains on. :func:`choose_sources` picks between them: by default
the ledger's verdicts, with the bundled data beside them until the ledger holds
:data:`~sprout.policy.base.MIN_LEDGER_EXAMPLES` judged requests of its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sprout.data import DATASETS, LEVELS, load_workload
from sprout.errors import ConfigError
from sprout.policy.base import (
    DATA_CHOICES,
    MIN_LEDGER_EXAMPLES,
)
from sprout.training.verdicts import LedgerVerdictSource

if TYPE_CHECKING:
    from sprout.ledger.store import Ledger


log = logging.getLogger("sprout.training")


#: The default split: seed and share of each group's judged prompts held out (the same as
#: ``sprout simulate --split-seed 0 --held-out 0.5``).
DEFAULT_SPLIT_SEED = 0
DEFAULT_HELD_OUT = 0.5
#: Training prompts whose predictions are stored with a model, to fit the multiplier on
#: before live requests arrive.
REFERENCE_PROMPTS = 500
#: Intensity of the held-out policy check stored in the metrics, gCO2e/kWh.
CHECK_CI_G_PER_KWH = 300.0


@dataclass(frozen=True)
class RetrainOptions:
    """How the scheduled retrain fits (``sprout retrain``'s defaults; the simulator's loop
    retrains with the same).

    Attributes:
        data: which data (see :func:`pick_sources`).
        split_seed, held_out_fraction: the held-out split its metrics are measured on.
        refit_all: store the model refitted on every example (else the one fitted on the
            training part, whose held-out figures are stored with it).
    """

    data: str = "auto"
    split_seed: int = DEFAULT_SPLIT_SEED
    held_out_fraction: float = DEFAULT_HELD_OUT
    refit_all: bool = False

    def __post_init__(self) -> None:
        if self.data not in DATA_CHOICES:
            raise ConfigError(
                f"training data {self.data!r}: choose one of {', '.join(DATA_CHOICES)}"
            )
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ConfigError(f"--held-out: {self.held_out_fraction!r} is outside [0, 1)")


@dataclass(frozen=True)
class TrainingExample:
    """One prompt with what is known about serving it.

    Attributes:
        prompt: the prompt text (the model's only input).
        preferred_level: the level the judge preferred, None if not judged (or no clear
            winner): such examples train only the cost regressions.
        energy_kwh: measured energy per level (levels not measured are absent).
        time_s: measured latency per level.
        group: a stratum for splitting (e.g. the workload); never a feature.
        source: where the example came from (``bundled``, ``ledger``...).
        weight: how much the example counts in the fits (e.g. a recency weight).
    """

    prompt: str
    preferred_level: str | None
    energy_kwh: Mapping[str, float]
    time_s: Mapping[str, float]
    group: str = ""
    source: str = ""
    weight: float = 1.0


class TrainingSource(Protocol):
    """Something that yields training examples."""

    #: Short name, recorded in the policy version's metrics.
    name: str

    def examples(self) -> Iterable[TrainingExample]:
        """The examples, in a stable order (the split depends on it)."""
        ...


class BundledSource:
    """The bundled recorded workloads (what a fresh install trains on).

    Args:
        datasets: the workloads to use (default: all six).
    """

    name = "bundled"

    def __init__(self, datasets: Sequence[str] | None = None) -> None:

        self.datasets = tuple(datasets or DATASETS)

    def examples(self) -> Iterable[TrainingExample]:
        """Every bundled prompt; judged ones carry their verdict."""

        for r in load_workload(self.datasets):
            best = r.judge_best
            judged = r.judge_sampled and best is not None and 0 <= best < len(LEVELS)
            yield TrainingExample(
                prompt=r.instruction,
                preferred_level=LEVELS[best] if judged and best is not None else None,
                energy_kwh=r.energy_kwh,
                time_s=r.time_s,
                group=r.dataset,
                source=self.name,
            )


#: Energy sources a ledger example's energy is trained on: measurements and recordings.
#: An estimate is derived from the tokens, so it teaches the cost model nothing new; a
#: level whose energy was estimated trains only the latency regression.
TRAINABLE_ENERGY_SOURCES: tuple[str, ...] = ("measured-nvml", "measured-rapl", "recorded")


class LedgerSource:
    """The ledger's judged live requests as training examples.

    Each verdict whose prompt is still kept (:class:`sprout.training.verdicts.LedgerVerdictSource`)
    gives one example: the prompt, the judge's preferred directive (None for a tie or no
    verdict: such an example trains only the cost regressions), each directive's energy
    where it was measured or recorded (NaN where estimated, see
    :data:`TRAINABLE_ENERGY_SOURCES`) and its latency, with the verdict's recency weight.

    Args:
        ledger: the ledger.
        levels: the directive names the model chooses among.
        now: the time the recency weights are taken at.
        half_life_h, max_age_h: as :class:`~sprout.training.verdicts.LedgerVerdictSource`.
    """

    name = "ledger"

    def __init__(
        self,
        ledger: Ledger,
        levels: Sequence[str],
        now: datetime,
        *,
        half_life_h: float | None = None,
        max_age_h: float | None = None,
    ) -> None:
        options: dict[str, float] = {} if half_life_h is None else {"half_life_h": half_life_h}
        self.levels = tuple(levels)
        self.now = now
        self._verdicts = LedgerVerdictSource(ledger, self.levels, max_age_h=max_age_h, **options)
        self._examples: list[TrainingExample] | None = None

    def examples(self) -> Iterable[TrainingExample]:
        """The examples, oldest first (read once, then kept).

        Raises:
            LedgerError: the ledger cannot be read.
        """
        if self._examples is None:
            self._examples = [self._example(ex) for ex in self._verdicts.examples(self.now)]
        return self._examples

    def judged(self) -> int:
        """Examples that carry a verdict."""
        return sum(ex.preferred_level is not None for ex in self.examples())

    def _example(self, ex: Any) -> TrainingExample:
        r = ex.record
        energy = {
            level: r.energy_kwh[level]
            if ex.energy_sources.get(level) in TRAINABLE_ENERGY_SOURCES
            else math.nan
            for level in self.levels
        }
        best = r.judge_best
        return TrainingExample(
            prompt=r.instruction,
            preferred_level=self.levels[best] if best is not None else None,
            energy_kwh=energy,
            time_s=dict(r.time_s),
            group=self.name,
            source=self.name,
            weight=ex.weight,
        )


def choose_sources(
    data: str,
    ledger: Ledger | None,
    levels: Sequence[str],
    now: datetime,
    *,
    min_ledger_examples: int = MIN_LEDGER_EXAMPLES,
) -> list[TrainingSource]:
    """The training sources for ``data`` (see :func:`pick_sources`), the ledger's judged
    requests read as :class:`LedgerSource`.

    Raises:
        ConfigError: an unknown choice, ``ledger`` without a ledger or with no judged
            requests in it.
        LedgerError: the ledger cannot be read.
    """
    if data not in DATA_CHOICES:
        raise ConfigError(f"training data {data!r}: choose one of {', '.join(DATA_CHOICES)}")
    if ledger is None:
        if data == "ledger":
            raise ConfigError("training data 'ledger' needs a ledger (--db), not --no-store")
        return [BundledSource()]
    if data == "bundled":
        return [BundledSource()]
    return pick_sources(
        data, LedgerSource(ledger, levels, now), BundledSource(), min_ledger_examples
    )


def pick_sources(
    data: str,
    live: TrainingSource,
    bundled: TrainingSource,
    min_ledger_examples: int = MIN_LEDGER_EXAMPLES,
) -> list[TrainingSource]:
    """Which of the live verdicts and the bundled recordings to train on (pure; the
    scheduled retrain and the simulator's both decide here):

    - ``auto``: the live verdicts, plus the bundled recordings while there are fewer than
      ``min_ledger_examples`` judged examples (a fresh install: the bundled alone);
    - ``ledger``: the live verdicts alone; ``bundled``: the recordings alone; ``both``: both.

    ``live`` must have ``judged()``: its examples that carry a verdict.

    Raises:
        ConfigError: an unknown choice, or ``ledger`` with no judged example.
    """
    if data not in DATA_CHOICES:
        raise ConfigError(f"training data {data!r}: choose one of {', '.join(DATA_CHOICES)}")
    if data == "bundled":
        return [bundled]
    judged = live.judged()  # type: ignore[attr-defined]
    if data == "ledger":
        if judged == 0:
            raise ConfigError(
                "training data 'ledger': the ledger has no judged requests with kept prompts "
                "(enable the quality loop: judge_sample_share > 0, then `sprout judge run`)"
            )
        return [live]
    if judged >= min_ledger_examples and data == "auto":
        return [live]
    has_any = bool(list(live.examples()))  # unjudged ones still train the cost model
    return [live, bundled] if has_any else [bundled]
