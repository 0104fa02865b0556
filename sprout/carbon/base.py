"""Carbon-intensity readings and the provider base class."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

SignalType = Literal["average", "marginal"]
EmissionFactor = Literal["direct", "lifecycle"]


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


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class CarbonProvider(abc.ABC):
    """A source of carbon-intensity readings. One subclass per vendor.

    Vendor errors are converted at the edge into :class:`sprout.errors.ProviderError` or
    :class:`sprout.errors.UnknownZoneError`.
    """

    #: Short provider name recorded in readings and receipts.
    name: str = "abstract"

    @abc.abstractmethod
    def latest(self, zone: str) -> CarbonReading:
        """The most recent reading for ``zone``."""

    def history(self, zone: str, start: datetime, end: datetime) -> list[CarbonReading]:
        """Readings for ``zone`` in ``[start, end)``, oldest first.

        Providers without history return an empty list; callers then build history from
        the readings they observe.
        """
        return []

    def forecast(self, zone: str, hours: int = 24) -> list[CarbonReading]:
        """Forecast readings for the next ``hours`` hours (empty if unsupported)."""
        return []
