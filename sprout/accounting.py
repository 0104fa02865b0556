"""Pure carbon-accounting formulas (no I/O).

Sprout's carbon model for one request::

    C = CI * E + C_embodied * T / T_life

with ``CI`` in gCO2e/kWh, ``E`` in kWh, ``T`` the request's duration in seconds and the
server's embodied carbon ``C_embodied`` amortised over its lifetime ``T_life``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeVar

#: A number or a numpy array (the formulas are elementwise and broadcast).
Amount = TypeVar("Amount")

KWH_PER_J = 1 / 3_600_000
J_PER_KWH = 3_600_000
SECONDS_PER_YEAR = 365 * 24 * 3600
#: Pounds to grams, exact by definition of the avoirdupois pound.
G_PER_LB = 453.59237
#: Embodied carbon of the Sprout paper's inference server, gCO2e.
SPROUT_EMBODIED_G = 26_356.568
#: The server lifetime the Sprout paper amortises that carbon over, years.
SPROUT_LIFETIME_YEARS = 5.0


def j_to_kwh(energy_j: float) -> float:
    """Joules to kilowatt-hours."""
    return energy_j / J_PER_KWH  # dividing by the exact integer rounds once


def kwh_to_j(energy_kwh: float) -> float:
    """Kilowatt-hours to joules."""
    return energy_kwh * J_PER_KWH


def lbs_per_mwh_to_g_per_kwh(value_lbs_per_mwh: float) -> float:
    """Convert an emission rate in lbs/MWh (WattTime's MOER unit) to g/kWh."""
    return value_lbs_per_mwh * G_PER_LB / 1000.0


def embodied_rate_g_per_s(
    embodied_g: float = SPROUT_EMBODIED_G, lifetime_years: float = SPROUT_LIFETIME_YEARS
) -> float:
    """Embodied carbon amortised per second of server time, gCO2e/s."""
    if embodied_g < 0 or not math.isfinite(embodied_g):
        raise ValueError(f"embodied carbon must be a finite number >= 0, got {embodied_g!r}")
    if lifetime_years <= 0 or not math.isfinite(lifetime_years):
        raise ValueError(f"lifetime must be a finite number > 0 years, got {lifetime_years!r}")
    return embodied_g / (lifetime_years * SECONDS_PER_YEAR)


def operational_g(energy_kwh: float, ci_g_per_kwh: float) -> float:
    """Operational carbon of ``energy_kwh`` at intensity ``ci_g_per_kwh``, gCO2e."""
    return energy_kwh * ci_g_per_kwh


def embodied_g(duration_s: float, rate_g_per_s: float) -> float:
    """Embodied carbon attributed to ``duration_s`` of server time, gCO2e."""
    return duration_s * rate_g_per_s


@dataclass(frozen=True)
class Carbon:
    """The carbon of one request, split by kind (gCO2e)."""

    operational_g: float
    embodied_g: float

    @property
    def total_g(self) -> float:
        """Operational plus embodied carbon."""
        return self.operational_g + self.embodied_g


def carbon_g(energy_kwh: Amount, time_s: Amount, ci_g_per_kwh: Any, rate_g_per_s: Any) -> Amount:
    """``E * CI + rate * T``, gCO2e: operational plus embodied carbon, the one carbon
    formula. Elementwise on numbers or numpy arrays (``ci_g_per_kwh`` may broadcast, e.g. one
    intensity per hour as a column); :func:`request_carbon` gives the split of one request.
    """
    return energy_kwh * ci_g_per_kwh + rate_g_per_s * time_s  # type: ignore[operator]


def request_carbon(
    energy_kwh: float, duration_s: float, ci_g_per_kwh: float, rate_g_per_s: float
) -> Carbon:
    """Carbon of one request: ``CI * E`` operational plus ``rate * T`` embodied."""
    return Carbon(operational_g(energy_kwh, ci_g_per_kwh), embodied_g(duration_s, rate_g_per_s))


def saving(actual_g: float, baseline_g: float) -> float:
    """Fractional saving of ``actual_g`` against ``baseline_g`` (0.25 means 25% less)."""
    if baseline_g <= 0:
        raise ValueError(f"baseline carbon must be > 0 to compute a saving, got {baseline_g!r}")
    return 1.0 - actual_g / baseline_g
