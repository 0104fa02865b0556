"""Carbon-intensity readings (pure value types, shared with the ledger and the receipt).

:class:`CarbonReading` is what a provider returns; :class:`SignalReading` is what the cached
signal serves. They depend on nothing, so that the ledger and the receipt can name them
without importing the carbon adapters (:mod:`sprout.carbon.base` re-exports them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

SignalType = Literal["average", "marginal"]
EmissionFactor = Literal["direct", "lifecycle"]
Fallback = Literal["provider", "secondary", "cache", "default"]
#: The layers of :class:`~sprout.carbon.signal.CarbonSignal`, in the order they are tried.
FALLBACK_ORDER: tuple[Fallback, ...] = ("provider", "secondary", "cache", "default")


@dataclass(frozen=True)
class CarbonReading:
    """One carbon-intensity value for a zone and hour.

    Attributes:
        zone: grid zone id (Electricity Maps naming, e.g. ``GB``, ``US-CAL-CISO``).
        ci_g_per_kwh: carbon intensity, gCO2e/kWh.
        time: the instant the value applies to (timezone-aware, UTC).
        provider: which provider produced it (``trace``, ``static``, ``electricitymaps``...).
        signal_type: ``average`` (grid mix) or ``marginal`` (e.g. WattTime MOER).
        emission_factor: ``direct`` (combustion) or ``lifecycle``.
        is_forecast: the value is a forecast, not an observation.
        is_estimated: the provider estimated the value.
    """

    zone: str
    ci_g_per_kwh: float
    time: datetime
    provider: str
    signal_type: SignalType = "average"
    emission_factor: EmissionFactor = "direct"
    is_forecast: bool = False
    is_estimated: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.ci_g_per_kwh) or self.ci_g_per_kwh < 0:
            raise ValueError(
                f"carbon intensity must be a finite number >= 0 g/kWh, got {self.ci_g_per_kwh!r}"
            )
        if self.time.tzinfo is None:
            raise ValueError("reading time must be timezone-aware (UTC)")
        if self.signal_type not in ("average", "marginal"):
            raise ValueError(
                f"signal_type must be 'average' or 'marginal', got {self.signal_type!r}"
            )
        if self.emission_factor not in ("direct", "lifecycle"):
            raise ValueError(
                f"emission_factor must be 'direct' or 'lifecycle', got {self.emission_factor!r}"
            )

    def age_s(self, now: datetime) -> float:
        """Seconds between the reading's time and ``now`` (0 if the reading is ahead)."""
        return max(0.0, (now - self.time).total_seconds())


@dataclass(frozen=True)
class SignalReading:
    """What :meth:`CarbonSignal.read <sprout.carbon.signal.CarbonSignal.read>` returns.

    Attributes:
        reading: the carbon reading to use (its ``provider`` names who produced it).
        age_s: seconds between ``reading.time`` and now (wall clock), >= 0.
        fallback: the layer that served it: ``provider``, ``secondary`` (the provider
            failed; the fallback provider's value), ``cache`` (both failed; the last good
            reading) or ``default`` (no usable reading; the configured default, estimated).
        error: why the provider failed when another layer serves, else None.
    """

    reading: CarbonReading
    age_s: float
    fallback: Fallback
    error: str | None = None


__all__ = [
    "FALLBACK_ORDER",
    "CarbonReading",
    "EmissionFactor",
    "Fallback",
    "SignalReading",
    "SignalType",
]
