"""The evaluation metrics of the Sprout protocol (pure).

- ``carbon_saving = 1 - sum_h carbon(method)_h / sum_h carbon(base)_h``, carbon per request;
- ``normalized_preference = mean_h quality(method)_h / quality(base)_h``, where quality is the
  share of requests served at the judge-preferred level: ``sum_k q_k x_k`` for a mix, the
  realized share for a per-request assignment, and ``q_0`` for always-L0. It may exceed 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def carbon_saving(
    carbon_g: Sequence[float] | np.ndarray, base_carbon_g: Sequence[float] | np.ndarray
) -> float:
    """Fractional carbon saving of hourly per-request carbon against the baseline's."""
    base = float(np.sum(base_carbon_g))
    if not base > 0:
        raise ValueError(f"baseline carbon must be > 0, got {base!r}")
    return 1.0 - float(np.sum(carbon_g)) / base


def normalized_preference(
    quality: Sequence[float] | np.ndarray, base_quality: Sequence[float] | np.ndarray
) -> float:
    """Mean over hours of the served quality over the baseline's (NaN if any is unknown).

    Hours where the baseline's quality is 0 carry no information and are skipped.
    """
    q = np.asarray(quality, dtype=float)
    q0 = np.asarray(base_quality, dtype=float)
    if q.shape != q0.shape:
        raise ValueError(f"quality and base_quality differ in shape: {q.shape} vs {q0.shape}")
    if np.any(np.isnan(q)):
        return math.nan
    keep = q0 > 0
    if not np.any(keep):
        return math.nan
    return float(np.mean(q[keep] / q0[keep]))


def mix_quality(x: np.ndarray, quality: np.ndarray) -> float:
    """Expected share of requests at their preferred level under mix ``x``: ``sum_k q_k x_k``."""
    return float(np.dot(x, quality))


@dataclass(frozen=True)
class Spread:
    """Mean, min and max of a figure over seeds (NaN if any seed's figure is NaN)."""

    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values``."""
        arr = np.asarray(values, dtype=float)
        if arr.size == 0:
            raise ValueError("no values to summarise")
        if np.any(np.isnan(arr)):
            return cls(math.nan, math.nan, math.nan)
        return cls(float(arr.mean()), float(arr.min()), float(arr.max()))

    def contains(self, value: float, tol: float = 0.0) -> bool:
        """Whether ``value`` lies within [min - tol, max + tol]."""
        return self.min - tol <= value <= self.max + tol
