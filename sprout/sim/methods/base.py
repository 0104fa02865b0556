"""The interface every simulated method implements, and the registry of methods by name.

A method is created fresh for each run (one seed, one xi), told the run's setup once
(:meth:`Method.start`), then asked hour by hour, in order (:meth:`Method.decide`). Each hour
it answers either with :class:`Shares` (a population mix over its levels, as Sprout's LP
gives) or with an :class:`Assignment` (one level per judged prompt of the hour, as a
per-request policy gives). The engine, not the method, computes carbon and quality, so no
method can grade itself.

Honesty is by contract: :class:`HourInputs` carries the hour's true quality (oracles use it)
and whether the offline evaluator runs this hour (Sprout may only refresh its estimate then).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from sprout.accounting import carbon_g
from sprout.data import LEVELS
from sprout.directives import DirectiveSet
from sprout.policy.base import CarbonContext
from sprout.sim.carbon import CarbonWindow
from sprout.sim.loop import LoopConfig
from sprout.sim.sampling import HourSamples
from sprout.sim.workload import PromptSplit, WorkloadArrays


def verdict_code(level: str) -> int | None:
    """Index of ``level`` in the judge's verdict coding (``L0, L1, L2``), None if unjudged."""
    return LEVELS.index(level) if level in LEVELS else None


@dataclass(frozen=True)
class HourInputs:
    """What a method is shown in one hour.

    Attributes:
        hour: index in the window (from 0).
        carbon: intensity now and the min/max/mean the mode allows.
        energy_kwh: (keys,) mean energy per request per recorded key, this hour's sample.
        time_s: (keys,) mean latency per request per recorded key.
        quality: (3,) true share of this hour's judged prompts preferring L0, L1, L2.
        judged_rows: (n,) workload rows of this hour's judged prompts (the requests a
            per-request method assigns).
        evaluator_runs: the offline evaluator runs this hour (Sprout's timing rule).
    """

    hour: int
    carbon: CarbonContext
    energy_kwh: np.ndarray
    time_s: np.ndarray
    quality: np.ndarray
    judged_rows: np.ndarray
    evaluator_runs: bool


@dataclass(frozen=True)
class SimSetup:
    """Everything fixed for one run: one seed's samples, one xi, one mode.

    Attributes:
        workload: the prompts and their measured costs and verdicts.
        carbon: the per-hour carbon contexts.
        samples: the per-hour samples.
        evaluator_runs: (hours,) when the offline evaluator runs.
        directives: the directive levels (index 0 is the baseline).
        xi: the largest relative quality concession.
        embodied_g_per_s: the server's embodied-carbon rate.
        split: which judged prompts are evaluated (the rest may train a method).
        judge_energy_wh: energy of one judge call, Wh (charged to methods that judge).
        requests_per_hour: served requests per hour the overhead is set against (0: the
            hour's sampled prompts).
        loop: the quality loop's configuration (per-request methods that learn).
        loop_pool: (rows,) rows the quality loop may sample (None: every row).
        graded: (rows,) rows whose verdicts grade quality (None: every judged row); see
            :mod:`sprout.sim.loop` on why a retraining loop grades on a separate half.
        seed: the workload seed (the loop's sampler draws from it).
        policy_max_loss: the per-request policy's bound on one request's loss of predicted
            preference (None: no bound).
    """

    workload: WorkloadArrays
    carbon: CarbonWindow
    samples: HourSamples
    evaluator_runs: np.ndarray
    directives: DirectiveSet
    xi: float
    embodied_g_per_s: float
    split: PromptSplit = field(default_factory=PromptSplit)
    judge_energy_wh: float = 0.0
    requests_per_hour: int = 0
    loop: LoopConfig = field(default_factory=LoopConfig)
    loop_pool: np.ndarray | None = None
    graded: np.ndarray | None = None
    seed: int = 0
    policy_max_loss: float | None = None

    @property
    def traffic_per_hour(self) -> int:
        """Served requests per hour: ``requests_per_hour``, else the hour's sampled prompts."""
        return self.requests_per_hour or int(self.samples.judged_rows.shape[1])

    @property
    def hours(self) -> int:
        """Length of the window."""
        return self.carbon.hours

    def hour(self, h: int) -> HourInputs:
        """The inputs of hour ``h``."""
        s = self.samples
        return HourInputs(
            hour=h,
            carbon=self.carbon.context(h),
            energy_kwh=s.energy_kwh[h],
            time_s=s.time_s[h],
            quality=s.quality[h],
            judged_rows=s.judged_rows[h],
            evaluator_runs=bool(self.evaluator_runs[h]),
        )

    def level_carbon_g(self, levels: tuple[str, ...]) -> np.ndarray:
        """(hours, levels) mean carbon per request at each level, by the hourly samples."""
        cols = [self.workload.key_index(name) for name in levels]
        s = self.samples
        return carbon_g(
            s.energy_kwh[:, cols],
            s.time_s[:, cols],
            self.carbon.ci_g_per_kwh[:, None],
            self.embodied_g_per_s,
        )


@dataclass(frozen=True)
class JudgeEvent:
    """Verdicts a method bought: ``rows`` judged at ``hour`` (the evaluator's run).

    Each judged request costs its answers under every other directive and one (listwise)
    judge call. The served directive is ``served_level`` (per row, indices into the method's
    levels) or, for a population mix, ``served_mix`` (the expected cost of the others).
    ``share_of_traffic``: the rows stand for a share of the served requests (a per-request
    sample, which grows with the traffic), not a fixed count (Sprout's evaluator judges a
    fixed number of prompts per run).
    """

    hour: int
    rows: np.ndarray
    served_level: np.ndarray | None = None
    served_mix: np.ndarray | None = None
    share_of_traffic: bool = False


@dataclass(frozen=True)
class Shares:
    """A population mix: share of requests per level of the method (sums to 1)."""

    x: np.ndarray


@dataclass(frozen=True)
class Assignment:
    """A per-request choice: for each of the hour's judged prompts, a level index."""

    level: np.ndarray


class Method(abc.ABC):
    """A policy under evaluation.

    Subclasses set :attr:`name` and implement :meth:`decide`; they may override
    :meth:`levels` (default: the policy file's directives) and :meth:`start`.
    """

    #: Registry key, e.g. ``sprout``.
    name: ClassVar[str] = ""
    #: One line for ``--help`` and reports.
    summary: ClassVar[str] = ""
    #: A note printed beside the method's results (e.g. why preference is missing).
    note: ClassVar[str] = ""

    def levels(self, setup: SimSetup) -> tuple[str, ...]:
        """The levels this method's decisions index (recorded keys)."""
        return setup.directives.names

    def start(self, setup: SimSetup) -> None:  # noqa: B027 - optional hook
        """Called once before hour 0."""

    def record_judging(
        self,
        hour: int,
        rows: np.ndarray,
        served_level: np.ndarray | None = None,
        served_mix: np.ndarray | None = None,
        share_of_traffic: bool = False,
    ) -> None:
        """Note verdicts this method learns from, so that the engine charges their carbon
        (see :class:`JudgeEvent`)."""
        events: list[JudgeEvent] = self.__dict__.setdefault("_judge_events", [])
        events.append(
            JudgeEvent(
                hour,
                np.asarray(rows).copy(),
                None if served_level is None else np.asarray(served_level).copy(),
                None if served_mix is None else np.asarray(served_mix, dtype=float).copy(),
                share_of_traffic,
            )
        )

    def judge_events(self) -> list[JudgeEvent]:
        """The verdicts recorded so far (empty for a method that learns none)."""
        return list(self.__dict__.get("_judge_events", []))

    @abc.abstractmethod
    def decide(self, hour: HourInputs) -> Shares | Assignment:
        """The method's decision for ``hour``."""
