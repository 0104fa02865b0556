"""Shared helpers for the benchmark scripts.

The convention every benchmark follows: a runnable script (``python benchmarks/NAME.py``)
that measures in one run what it compares, prints its figures for a person, and ends with
one line ``BENCH {json}`` naming them, for tools to parse. Targets are compared as figures
and ratios printed here, not asserted in timed unit tests.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``, nearest-rank."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_us(samples_s: Sequence[float]) -> dict[str, float]:
    """Median, p99 and mean of durations in seconds, as microseconds."""
    return {
        "p50_us": percentile(samples_s, 50) * 1e6,
        "p99_us": percentile(samples_s, 99) * 1e6,
        "mean_us": statistics.fmean(samples_s) * 1e6,
    }


def emit(figures: dict[str, float | int | str]) -> None:
    """Print the closing ``BENCH {json}`` line."""
    print("BENCH " + json.dumps(figures, sort_keys=True))
