"""Software Carbon Intensity arithmetic (pure, no I/O).

The Green Software Foundation's SCI specification (ISO/IEC 21031:2024)::

    SCI = ((E * I) + M) per R

- ``E``: energy in kWh, including the data centre's overhead: the model server's energy
  (as metered or estimated per request) times the PUE;
- ``I``: the location-based grid intensity in gCO2e/kWh (energy-weighted over the requests,
  so ``E * I`` is the sum of each request's energy times the intensity it ran at);
- ``M``: the embodied emissions' share, gCO2e (not scaled by PUE: it is hardware, not energy);
- ``R``: the functional unit: one served request, and, as a second unit, 1,000 output tokens
  served.

A market-based figure (GHG Protocol scope 2 dual reporting) replaces ``I`` by a contractual
emission factor: ``(E * F + M) per R``.

Every figure here is a sum over requests except the ratios, so figures of disjoint groups add
up (:func:`combine`) and the ratios of the sum are taken from the summed figures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

#: Output tokens in the second functional unit.
TOKENS_PER_UNIT = 1000
#: The PUE that adds no data-centre overhead (also the setting's default).
NO_OVERHEAD_PUE = 1.0


def check_pue(pue: float) -> float:
    """``pue`` if it is a valid power usage effectiveness.

    Raises:
        ValueError: ``pue`` is not a finite number >= 1.0.
    """
    if isinstance(pue, bool) or not isinstance(pue, int | float):
        raise ValueError(f"PUE must be a number >= 1.0, got {pue!r}")
    if not math.isfinite(pue) or pue < NO_OVERHEAD_PUE:
        raise ValueError(
            f"PUE must be a finite number >= 1.0 (the data centre's total energy over its IT "
            f"energy; 1.0 adds no overhead), got {pue!r}"
        )
    return float(pue)


def check_emission_factor(ci_g_per_kwh: float | None) -> float | None:
    """``ci_g_per_kwh`` if it is a valid contractual emission factor (None: none given).

    Raises:
        ValueError: not a finite number >= 0 gCO2e/kWh.
    """
    if ci_g_per_kwh is None:
        return None
    if isinstance(ci_g_per_kwh, bool) or not isinstance(ci_g_per_kwh, int | float):
        raise ValueError(f"emission factor must be a number of gCO2e/kWh, got {ci_g_per_kwh!r}")
    if not math.isfinite(ci_g_per_kwh) or ci_g_per_kwh < 0:
        raise ValueError(
            f"emission factor must be a finite number >= 0 gCO2e/kWh, got {ci_g_per_kwh!r}"
        )
    return float(ci_g_per_kwh)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


@dataclass(frozen=True)
class SciFigures:
    """The SCI terms of a set of requests, and the ratios derived from them.

    Attributes:
        it_energy_kwh: the model server's energy, as metered or estimated (before PUE).
        pue: the power usage effectiveness applied.
        energy_kwh: ``E`` = ``it_energy_kwh * pue``.
        operational_g: ``E * I``, location-based, gCO2e.
        embodied_g: ``M``, gCO2e.
        requests: ``R``, the served requests.
        output_tokens: output tokens of the served requests (the second functional unit).
        market_ci_g_per_kwh: the contractual emission factor ``F`` (None: no market figure).
    """

    it_energy_kwh: float
    pue: float
    energy_kwh: float
    operational_g: float
    embodied_g: float
    requests: int
    output_tokens: int
    market_ci_g_per_kwh: float | None = None

    @property
    def intensity_g_per_kwh(self) -> float | None:
        """``I``: the energy-weighted grid intensity (None without energy)."""
        return _ratio(self.operational_g, self.energy_kwh)

    @property
    def carbon_g(self) -> float:
        """``E * I + M``, gCO2e."""
        return self.operational_g + self.embodied_g

    @property
    def per_request(self) -> float | None:
        """SCI per served request, gCO2e (None without a served request)."""
        return _ratio(self.carbon_g, self.requests)

    @property
    def per_1k_output_tokens(self) -> float | None:
        """SCI per 1,000 output tokens served, gCO2e (None without any)."""
        return _ratio(self.carbon_g, self.output_tokens / TOKENS_PER_UNIT)

    @property
    def market_operational_g(self) -> float | None:
        """``E * F``, gCO2e (None without a contractual factor)."""
        f = self.market_ci_g_per_kwh
        return None if f is None else self.energy_kwh * f

    @property
    def market_carbon_g(self) -> float | None:
        """``E * F + M``, gCO2e (None without a contractual factor)."""
        op = self.market_operational_g
        return None if op is None else op + self.embodied_g

    @property
    def market_per_request(self) -> float | None:
        """Market-based SCI per served request, gCO2e."""
        carbon = self.market_carbon_g
        return None if carbon is None else _ratio(carbon, self.requests)

    @property
    def market_per_1k_output_tokens(self) -> float | None:
        """Market-based SCI per 1,000 output tokens served, gCO2e."""
        carbon = self.market_carbon_g
        return None if carbon is None else _ratio(carbon, self.output_tokens / TOKENS_PER_UNIT)


def sci(
    *,
    it_energy_kwh: float,
    ci_kwh: float,
    embodied_g: float,
    requests: int,
    output_tokens: int,
    pue: float = NO_OVERHEAD_PUE,
    market_ci_g_per_kwh: float | None = None,
) -> SciFigures:
    """The SCI terms of a set of requests from their sums.

    Args:
        it_energy_kwh: the sum of the requests' energy (as metered or estimated), kWh.
        ci_kwh: the sum of each request's energy times its grid intensity, gCO2e (its
            location-based operational carbon before PUE).
        embodied_g: the sum of the requests' embodied shares, gCO2e.
        requests: ``R``: how many of the requests were served (functional units).
        output_tokens: output tokens of the served requests.
        pue: power usage effectiveness, >= 1.0; scales the energy and so ``E * I``.
        market_ci_g_per_kwh: a contractual emission factor for the market-based figure.

    Raises:
        ValueError: a bad PUE or emission factor, or a negative sum.
    """
    pue = check_pue(pue)
    factor = check_emission_factor(market_ci_g_per_kwh)
    for name, value in (
        ("energy", it_energy_kwh),
        ("operational carbon", ci_kwh),
        ("embodied carbon", embodied_g),
        ("requests", requests),
        ("output tokens", output_tokens),
    ):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return SciFigures(
        it_energy_kwh=it_energy_kwh,
        pue=pue,
        energy_kwh=it_energy_kwh * pue,
        operational_g=ci_kwh * pue,
        embodied_g=embodied_g,
        requests=requests,
        output_tokens=output_tokens,
        market_ci_g_per_kwh=factor,
    )


def combine(
    parts: Iterable[SciFigures],
    *,
    pue: float = NO_OVERHEAD_PUE,
    market_ci_g_per_kwh: float | None = None,
) -> SciFigures:
    """The figures of the union of disjoint groups: every term is summed (in order), so the
    total is exactly the sum over the groups; its ratios are taken from the sums.

    Args:
        parts: the groups' figures, all with ``pue`` and ``market_ci_g_per_kwh``.
        pue, market_ci_g_per_kwh: what the groups were computed with (the result's, also
            when ``parts`` is empty).

    Raises:
        ValueError: a group computed with another PUE or emission factor.
    """
    pue = check_pue(pue)
    factor = check_emission_factor(market_ci_g_per_kwh)
    it_kwh = kwh = op = emb = 0.0
    requests = tokens = 0
    for part in parts:
        if part.pue != pue or part.market_ci_g_per_kwh != factor:
            raise ValueError("cannot combine SCI figures computed with another PUE or factor")
        it_kwh += part.it_energy_kwh
        kwh += part.energy_kwh
        op += part.operational_g
        emb += part.embodied_g
        requests += part.requests
        tokens += part.output_tokens
    return SciFigures(it_kwh, pue, kwh, op, emb, requests, tokens, factor)


__all__ = [
    "NO_OVERHEAD_PUE",
    "TOKENS_PER_UNIT",
    "SciFigures",
    "check_emission_factor",
    "check_pue",
    "combine",
    "sci",
]
