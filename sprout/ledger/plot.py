"""``sprout ledger plot``: carbon intensity, emissions and savings over time (matplotlib)."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Any

from sprout.errors import ConfigError
from sprout.ledger.audit_report import Report

BUCKETS: tuple[str, ...] = ("hour", "day")


def plot_report(report: Report, out_path: str | Path, *, title: str | None = None) -> Path:
    """Draw an hourly or daily :class:`~sprout.ledger.audit_report.Report` to an image file.

    Three panels sharing the time axis: the energy-weighted carbon intensity of the served
    requests; operational and embodied gCO2e; savings against always-L0 per bucket and
    cumulated (over the requests that have a counterfactual), net of evaluation overhead.

    Args:
        report: a report grouped by ``hour`` or ``day``.
        out_path: the image (format from its suffix, e.g. ``.png``, ``.svg``, ``.pdf``).
        title: the figure's title (default: the ledger and window).

    Returns:
        The path written.

    Raises:
        ConfigError: the report is not grouped by time, or matplotlib is missing.
    """
    if report.group_by not in BUCKETS:
        raise ConfigError(f"plot needs a report by {' or '.join(BUCKETS)}, not {report.group_by}")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ConfigError("plotting needs matplotlib: pip install 'sprout[plot]'") from e

    rows = [r for r in report.rows if r.start is not None]
    x = [r.start for r in rows]
    nan = math.nan

    def series(values: list[Any]) -> list[float]:
        return [nan if v is None else float(v) for v in values]

    ci = series([r.ci_g_per_kwh for r in rows])
    op = [r.operational_g for r in rows]
    emb = [r.embodied_g for r in rows]
    saved = series([r.saved_g for r in rows])
    net = series([r.net_saved_g for r in rows])
    cumulative, running = [], 0.0
    for value in net:
        running += 0.0 if math.isnan(value) else value
        cumulative.append(running)

    width_days = (1 / 24 if report.group_by == "hour" else 1.0) * 0.8
    fig, (ax_ci, ax_g, ax_s) = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True)
    try:
        # Points at the middle of their bucket, over the bars below.
        half = timedelta(days=width_days / 0.8 / 2)
        mid = [t + half for t in x]
        ax_ci.plot(mid, ci, color="tab:brown", marker=".", linewidth=1.2)
        ax_ci.set_ylabel("carbon intensity\n(gCO2e/kWh)")
        ax_ci.grid(alpha=0.3)

        # Bars start at their bucket's start and cover most of it.
        bar = {"width": width_days, "align": "edge"}
        ax_g.bar(x, op, color="tab:red", label="operational", **bar)
        ax_g.bar(x, emb, bottom=op, color="tab:gray", label="embodied", **bar)
        ax_g.set_ylabel("emissions\n(gCO2e)")
        ax_g.legend(loc="upper left", fontsize="small")
        ax_g.grid(alpha=0.3)

        ax_s.bar(x, saved, color="tab:green", label="saved vs always-L0", **bar)
        ax_s.axhline(0.0, color="black", linewidth=0.6)
        ax_cum = ax_s.twinx()
        ax_cum.plot(mid, cumulative, color="tab:blue", linewidth=1.5, label="cumulative, net")
        ax_s.set_ylabel("savings\n(gCO2e)")
        ax_cum.set_ylabel("cumulative net\n(gCO2e)")
        handles = ax_s.get_legend_handles_labels()
        more = ax_cum.get_legend_handles_labels()
        ax_s.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize="small")
        ax_s.grid(alpha=0.3)

        t = report.totals
        coverage = (
            f"savings over {t.baseline_n} of {t.serve_requests} served requests with a "
            f"counterfactual; net of {t.eval_requests} evaluation generations"
        )
        window = (
            f"{report.since:%Y-%m-%d %H:%M} .. {report.until:%Y-%m-%d %H:%M} UTC"
            if report.since and report.until
            else "all receipts"
        )
        fig.suptitle(title or f"Sprout carbon ledger, {window}")
        ax_s.set_title(coverage, fontsize="small")
        fig.autofmt_xdate()
        fig.tight_layout()
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        return out
    finally:
        plt.close(fig)


__all__ = ["BUCKETS", "plot_report"]
