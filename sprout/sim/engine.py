"""The simulation driver: load inputs once, then for each seed draw the workload and run every
method at every xi on the same draws (common random numbers, so differences between methods
and between xi values are not sampling noise)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sprout.accounting import SPROUT_EMBODIED_G, SPROUT_LIFETIME_YEARS, embodied_rate_g_per_s
from sprout.carbon.trace import CarbonTrace, load_trace
from sprout.data import LEVELS, default_policy_path, load_pai_jobs
from sprout.directives import DirectiveSet
from sprout.errors import ConfigError
from sprout.judge.timing import TimingRule
from sprout.policy.base import DEFAULT_MAX_LOSS
from sprout.sim.carbon import DEFAULT_HISTORY_HOURS, MODES, CarbonWindow, carbon_window
from sprout.sim.evaluate import JUDGE_ENERGY_WH, MethodSeries, run_method
from sprout.sim.loop import LoopConfig
from sprout.sim.methods.base import SimSetup
from sprout.sim.methods.registry import create_method, method_class
from sprout.sim.metrics import Spread, carbon_saving, normalized_preference
from sprout.sim.mix import mix_schedule
from sprout.sim.sampling import N_ENERGY, N_JUDGED, sample_hours
from sprout.sim.scenario import shift_shares, validate_family_share, validate_unseen
from sprout.sim.workload import PromptSplit, WorkloadArrays, bundled_workload

#: The methods run when none are named, in report order.
DEFAULT_METHODS: tuple[str, ...] = (
    "base",
    "co2_opt",
    "model_opt",
    "static",
    "sprout",
    "oracle",
    "oracle_request",
)


@dataclass(frozen=True)
class SimConfig:
    """What to simulate.

    Attributes:
        carbon: a bundled zone name or the path of an hourly CSV.
        column: ``ci_direct`` or ``ci_lca``.
        start_hour: first trace hour of the window.
        hours: window length.
        xis: quality concessions to run (several: a sweep).
        mode: ``paper`` (the paper's look-ahead) or ``causal`` (trailing history only).
        methods: method names (the registry's).
        seeds: workload-draw seeds.
        policy_file: directive policy file (None: the bundled default).
        history_hours: trailing history of causal mode.
        n_judged, n_energy: prompts sampled per hour for quality and for energy.
        embodied_g, lifetime_years: the server's embodied carbon and its amortisation.
        split: which judged prompts are evaluated.
        timing: the offline evaluator's timing rule.
        family_share: ``(family, share)`` pairs fixing those families' share of every hour
            (the others keep their relative shares); unseen families are ``split.unseen``.
        judge_energy_wh: energy of one judge call, Wh (the judging overhead's).
        requests_per_hour: served requests per hour the overhead is set against (None: the
            hour's sampled prompts, ``n_judged``). Sprout's evaluator judges ``n_judged``
            prompts per run whatever the traffic; a per-request sample grows with it.
        loop: the quality loop of the per-request policy (judge share, retraining).
        policy_max_loss: the per-request policy's bound on one request's loss of predicted
            preference (None: no bound; see :func:`sprout.policy.assign.bounded_cost`).
    """

    carbon: str | Path = "GB"
    column: str = "ci_direct"
    start_hour: int = 800
    hours: int = 720
    xis: tuple[float, ...] = (0.1,)
    mode: str = "causal"
    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: tuple[int, ...] = (0,)
    policy_file: str | Path | None = None
    history_hours: int = DEFAULT_HISTORY_HOURS
    n_judged: int = N_JUDGED
    n_energy: int = N_ENERGY
    embodied_g: float = SPROUT_EMBODIED_G
    lifetime_years: float = SPROUT_LIFETIME_YEARS
    split: PromptSplit = field(default_factory=PromptSplit)
    timing: TimingRule = field(default_factory=TimingRule)
    family_share: tuple[tuple[str, float], ...] = ()
    judge_energy_wh: float = JUDGE_ENERGY_WH
    requests_per_hour: int | None = None
    loop: LoopConfig = field(default_factory=LoopConfig)
    policy_max_loss: float | None = DEFAULT_MAX_LOSS

    def __post_init__(self) -> None:
        if self.policy_max_loss is not None and not 0.0 <= self.policy_max_loss <= 1.0:
            raise ConfigError(
                f"--max-loss: expected a share in [0, 1] (or none), got {self.policy_max_loss!r}"
            )
        if self.requests_per_hour is not None and self.requests_per_hour < 1:
            raise ConfigError(
                f"--requests-per-hour: expected an integer >= 1, got {self.requests_per_hour}"
            )
        if not (self.judge_energy_wh >= 0.0 and np.isfinite(self.judge_energy_wh)):
            raise ConfigError(
                f"--judge-energy-wh: expected a finite number >= 0, got {self.judge_energy_wh!r}"
            )
        if not self.xis:
            raise ConfigError("xi: at least one value is required")
        bad = [x for x in self.xis if not 0.0 <= x <= 1.0]
        if bad:
            raise ConfigError(f"xi must lie in [0, 1], got {bad[0]!r}")
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose one of: {', '.join(MODES)}")
        if not self.methods:
            raise ConfigError("methods: at least one method is required")
        for name in self.methods:
            method_class(name)
        dupes = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if dupes:
            raise ConfigError(f"methods: {', '.join(dupes)} named more than once")
        if not self.seeds:
            raise ConfigError("seeds: at least one seed is required")
        if any(s < 0 for s in self.seeds):
            raise ConfigError(f"seeds must be >= 0, got {min(self.seeds)}")
        if self.hours < 1:
            raise ConfigError(f"hours must be >= 1, got {self.hours}")
        if self.start_hour < 0:
            raise ConfigError(f"start hour must be >= 0, got {self.start_hour}")

    @property
    def loop_grades(self) -> bool:
        """Whether a per-request method retrains in the window, so that quality is graded on
        the half of the held-out prompts its loop never samples (see sprout.sim.loop)."""
        learns = any(getattr(method_class(n), "trains_on_verdicts", False) for n in self.methods)
        return learns and self.loop.retrains


@dataclass(frozen=True)
class MethodSummary:
    """One method's results at one xi, over the seeds.

    Attributes:
        name: the method.
        levels: the levels of ``mix``.
        carbon_saving, normalized_preference, carbon_g_per_request: spread over seeds
            (``carbon_saving`` is gross: the served requests only).
        overhead_share: the verdicts' carbon over the baseline's served carbon.
        net_saving: ``carbon_saving - overhead_share`` = (baseline - served - overhead) /
            baseline.
        overhead_g: the verdicts' carbon over the window, grams.
        judged: requests judged over the window.
        mix: mean share of requests per level (over hours, then seeds).
        per_seed: each figure per seed, in seed order.
        per_request: the method assigned levels per request.
        note: caveat to print beside the figures.
    """

    name: str
    levels: tuple[str, ...]
    carbon_saving: Spread
    normalized_preference: Spread
    carbon_g_per_request: Spread
    mix: tuple[float, ...]
    per_seed: dict[str, list[float]]
    per_request: bool
    note: str
    overhead_share: Spread
    net_saving: Spread
    overhead_g: Spread
    judged: Spread


@dataclass(frozen=True)
class XiRun:
    """All methods at one xi.

    Attributes:
        xi: the quality concession.
        methods: summaries by method name, in the configured order.
        first_seed: every method's hourly series for the first seed (for plots).
    """

    xi: float
    methods: dict[str, MethodSummary]
    first_seed: dict[str, MethodSeries]


@dataclass(frozen=True)
class SimResult:
    """A whole simulation.

    Attributes:
        config: what was run.
        zone: the trace's zone.
        source: the trace file.
        carbon: the window's carbon contexts.
        evaluator_runs: (hours,) when Sprout's offline evaluator ran.
        runs: one per xi, in the configured order.
    """

    config: SimConfig
    zone: str
    source: str
    carbon: CarbonWindow
    evaluator_runs: np.ndarray
    runs: list[XiRun]


def load_directives(policy_file: str | Path | None) -> DirectiveSet:
    """The directive levels to simulate; each must have recorded costs and verdicts.

    Raises:
        ConfigError: naming the directives that cannot be simulated.
    """
    directives = DirectiveSet.load(policy_file or default_policy_path())
    unknown = [n for n in directives.names if n not in LEVELS]
    if unknown:
        raise ConfigError(
            f"{directives.source}: directive(s) {', '.join(unknown)} have no recorded answers "
            f"and verdicts to replay; the simulator can replay: {', '.join(LEVELS)}"
        )
    return directives


def seed_generators(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The workload-mix generator and the prompt-sampling generator of ``seed``."""
    mix_seq, sample_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(mix_seq), np.random.default_rng(sample_seq)


def _setups(
    config: SimConfig,
    workload: WorkloadArrays,
    carbon: CarbonWindow,
    evaluator_runs: np.ndarray,
    directives: DirectiveSet,
    embodied: float,
    seed: int,
) -> list[SimSetup]:
    mix_rng, sample_rng = seed_generators(seed)
    schedule = mix_schedule(load_pai_jobs(), config.hours, mix_rng, len(workload.datasets))
    shares = shift_shares(schedule.shares, workload.datasets, config.family_share)
    evaluated = config.split.evaluated(workload)
    samples = sample_hours(
        workload,
        shares,
        sample_rng,
        evaluated=evaluated,
        n_judged=config.n_judged,
        n_energy=config.n_energy,
    )
    loop_pool = graded = None
    if config.loop_grades:
        loop_pool, graded = config.loop.pools(
            evaluated, workload.start, workload.count, config.split.seed
        )
    return [
        SimSetup(
            workload,
            carbon,
            samples,
            evaluator_runs,
            directives,
            xi,
            embodied,
            config.split,
            config.judge_energy_wh,
            config.requests_per_hour or 0,
            config.loop,
            loop_pool,
            graded,
            seed,
            config.policy_max_loss,
        )
        for xi in config.xis
    ]


def simulate(
    config: SimConfig,
    trace: CarbonTrace | None = None,
    workload: WorkloadArrays | None = None,
    progress: Callable[[str], None] | None = None,
) -> SimResult:
    """Run ``config``.

    Args:
        config: what to simulate.
        trace: the carbon trace (loaded from ``config.carbon`` if None).
        workload: the prompts (the bundled workloads if None).
        progress: called with a short line after each seed.

    Raises:
        SproutError: a ConfigError, TraceError or DataError naming the problem.
    """
    directives = load_directives(config.policy_file)
    trace = trace if trace is not None else load_trace(config.carbon, config.column)
    workload = workload if workload is not None else bundled_workload()
    validate_family_share(config.family_share, workload.datasets)
    validate_unseen(config.split.unseen, workload.datasets)
    carbon = carbon_window(
        trace, config.start_hour, config.hours, config.mode, config.history_hours
    )
    evaluator_runs = carbon.evaluator_runs(config.timing)
    embodied = embodied_rate_g_per_s(config.embodied_g, config.lifetime_years)

    names = config.methods
    # series[i][name]: one MethodSeries per seed at xi i; bases[i]: always-L0, every seed.
    series: list[dict[str, list[MethodSeries]]] = [{n: [] for n in names} for _ in config.xis]
    bases: list[list[MethodSeries]] = [[] for _ in config.xis]
    for seed in config.seeds:
        setups = _setups(config, workload, carbon, evaluator_runs, directives, embodied, seed)
        inputs = [setups[0].hour(h) for h in range(config.hours)]  # the same for every xi
        for i, setup in enumerate(setups):
            base = run_method(create_method("base"), setup, inputs)  # the yardstick, always
            bases[i].append(base)
            for name in names:
                s = base if name == "base" else run_method(create_method(name), setup, inputs)
                series[i][name].append(s)
        if progress is not None:
            progress(f"seed {seed} done")

    runs = [
        XiRun(
            xi=xi,
            methods={n: _summarise(n, series[i][n], bases[i]) for n in names},
            first_seed={n: series[i][n][0] for n in names},
        )
        for i, xi in enumerate(config.xis)
    ]
    return SimResult(config, trace.zone, trace.source, carbon, evaluator_runs, runs)


def _summarise(
    name: str, runs: Sequence[MethodSeries], bases: Sequence[MethodSeries]
) -> MethodSummary:
    saving = [carbon_saving(r.carbon_g, b.carbon_g) for r, b in zip(runs, bases, strict=True)]
    pref = [normalized_preference(r.quality, r.base_quality) for r in runs]
    grams = [float(r.carbon_g.mean()) for r in runs]
    overhead_g = [float(r.overhead_g.sum()) for r in runs]
    overhead = [
        o / (float(b.carbon_g.sum()) * r.requests_per_hour)
        for o, r, b in zip(overhead_g, runs, bases, strict=True)
    ]
    net = [s - o for s, o in zip(saving, overhead, strict=True)]
    mix = np.mean([r.mix.mean(axis=0) for r in runs], axis=0)
    return MethodSummary(
        name=name,
        levels=runs[0].levels,
        carbon_saving=Spread.of(saving),
        normalized_preference=Spread.of(pref),
        carbon_g_per_request=Spread.of(grams),
        mix=tuple(float(v) for v in mix),
        per_seed={
            "carbon_saving": saving,
            "normalized_preference": pref,
            "carbon_g_per_request": grams,
            "overhead_share": overhead,
            "net_saving": net,
            "overhead_g": overhead_g,
        },
        per_request=runs[0].per_request,
        note=method_class(name).note,
        overhead_share=Spread.of(overhead),
        net_saving=Spread.of(net),
        overhead_g=Spread.of(overhead_g),
        judged=Spread.of([float(r.judged) for r in runs]),
    )
