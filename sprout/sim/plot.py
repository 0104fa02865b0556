"""The ``--plot`` figure: the window's carbon intensity under Sprout's hourly directive mix,
and every method's carbon saving against its preference (matplotlib, imported lazily)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sprout.errors import ConfigError
from sprout.sim.engine import SimResult

_COLORS = {
    "base": "#444444",
    "co2_opt": "#8c564b",
    "model_opt": "#9467bd",
    "static": "#ff7f0e",
    "sprout": "#2ca02c",
    "oracle": "#1f77b4",
    "oracle_request": "#d62728",
}
_LEVEL_COLORS = ("#c6dbef", "#6baed6", "#2171b5")
#: Label offsets (points) that keep neighbouring methods' names apart.
_LABEL_OFFSETS = {"sprout": (-44, 6), "oracle": (6, -12)}


def plot_result(result: SimResult, path: str | Path) -> Path:
    """Write the figure to ``path`` (PNG, PDF or SVG by extension).

    Raises:
        ConfigError: if matplotlib is missing (``pip install 'sprout[plot]'``) or the file
            cannot be written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ConfigError("--plot needs matplotlib: pip install 'sprout[plot]'") from e

    c = result.config
    run = next((r for r in result.runs if math.isclose(r.xi, 0.1)), result.runs[0])
    fig, (ax_t, ax_s) = plt.subplots(
        1, 2, figsize=(16, 5.6), gridspec_kw={"width_ratios": [2.2, 1]}, layout="constrained"
    )

    # Left: the directive mix as a stacked area (left axis), intensity on top (right axis).
    days = np.arange(c.hours) / 24.0
    shown = next((n for n in ("sprout", "oracle", "static") if n in run.first_seed), None)
    if shown is not None:
        series = run.first_seed[shown]
        ax_t.stackplot(
            days,
            100 * series.mix.T,
            labels=[f"{shown}: share at {lvl}" for lvl in series.levels],
            colors=_LEVEL_COLORS[: len(series.levels)],
            alpha=0.75,
            step="post",
        )
    ax_t.set_ylim(0, 100)
    ax_t.set_xlim(0, days[-1])
    ax_t.set_ylabel("share of requests (%)")
    ax_t.set_xlabel(f"day of window (trace hours {c.start_hour}-{c.start_hour + c.hours - 1})")
    ax_ci = ax_t.twinx()
    ax_ci.plot(days, result.carbon.ci_g_per_kwh, color="black", lw=1.0, label="carbon intensity")
    if c.mode == "causal":
        ax_ci.plot(
            days,
            result.carbon.ci_mean,
            color="black",
            lw=0.9,
            ls=":",
            label=f"trailing {c.history_hours} h mean",
        )
    else:
        ax_ci.axhline(result.carbon.ci_mean[0], color="black", lw=0.9, ls=":", label="window mean")
    runs_at = np.flatnonzero(result.evaluator_runs)
    ax_ci.plot(
        days[runs_at],
        result.carbon.ci_g_per_kwh[runs_at],
        "v",
        color="#d62728",
        ms=5,
        label="offline evaluator runs",
    )
    ax_ci.set_ylabel(f"carbon intensity ({c.column}, gCO2e/kWh)")
    ax_ci.set_ylim(0, 1.08 * float(result.carbon.ci_g_per_kwh.max()))
    h1, l1 = ax_t.get_legend_handles_labels()
    h2, l2 = ax_ci.get_legend_handles_labels()
    ax_t.legend(
        h1 + h2,
        l1 + l2,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncol=6,
        fontsize=8,
        frameon=False,
    )
    title = f"{result.zone}, {c.mode} mode, xi {run.xi:g}"
    if shown is not None:
        title += f": {shown}'s hourly directive mix under the grid's intensity (seed {c.seeds[0]})"
    ax_t.set_title(title, fontsize=11)

    # Right: saving against preference, min-max over seeds; a sweep draws each frontier.
    for name in run.methods:
        color = _COLORS.get(name)
        points = [r.methods[name] for r in result.runs]
        saving = np.array([100 * m.carbon_saving.mean for m in points])
        s_err = [
            saving - np.array([100 * m.carbon_saving.min for m in points]),
            np.array([100 * m.carbon_saving.max for m in points]) - saving,
        ]
        pref = np.array([100 * m.normalized_preference.mean for m in points])
        if np.all(np.isnan(pref)):
            ax_s.axhline(saving[0], color=color, ls="--", lw=1)
            ax_s.annotate(
                f"{name}: {saving[0]:.1f}% (carbon only, no 7B verdicts)",
                (0.01, saving[0]),
                xycoords=("axes fraction", "data"),
                xytext=(0, 3),
                textcoords="offset points",
                fontsize=8,
                color=color,
            )
            continue
        p_err = [
            pref - np.array([100 * m.normalized_preference.min for m in points]),
            np.array([100 * m.normalized_preference.max for m in points]) - pref,
        ]
        ax_s.errorbar(
            pref,
            saving,
            xerr=p_err,
            yerr=s_err,
            fmt="o-" if len(points) > 1 else "o",
            color=color,
            ms=6,
            capsize=3,
            lw=1,
        )
        if len(points) > 1 and name == "sprout":  # one frontier labelled with its xi values
            for r, px, sy in zip(result.runs, pref, saving, strict=True):
                ax_s.annotate(
                    f"xi {r.xi:g}",
                    (px, sy),
                    xytext=(4, -10),
                    textcoords="offset points",
                    fontsize=7,
                    color=color,
                )
        ax_s.annotate(
            name,
            (pref[-1], saving[-1]),
            xytext=_LABEL_OFFSETS.get(name, (6, 4)),
            textcoords="offset points",
            fontsize=9,
            color=color,
            weight="bold",
        )
    ax_s.set_xlabel("normalized preference vs always-L0 (%)")
    ax_s.set_ylabel("carbon saving vs always-L0 (%)")
    if len(c.seeds) > 1:
        spread = f"mean; bars: min-max over {len(c.seeds)} seeds"
    else:
        spread = f"seed {c.seeds[0]}"
    sweep = f", xi {', '.join(f'{r.xi:g}' for r in result.runs)}" if len(result.runs) > 1 else ""
    ax_s.set_title(f"saving vs preference\n({spread}{sweep})", fontsize=11)
    ax_s.grid(alpha=0.3)
    ax_s.set_ylim(-5, 100)

    path = Path(path)
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--plot {path}: cannot write the figure ({e})") from e
    finally:
        plt.close(fig)
    return path
