"""The carbon provider base class; the reading types it returns live in
:mod:`sprout.readings` (pure, so that the ledger can name them) and are re-exported here."""

from __future__ import annotations

import abc
from datetime import UTC, datetime

from sprout.readings import (
    FALLBACK_ORDER,
    CarbonReading,
    EmissionFactor,
    Fallback,
    SignalReading,
    SignalType,
)


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


__all__ = [
    "FALLBACK_ORDER",
    "CarbonProvider",
    "CarbonReading",
    "EmissionFactor",
    "Fallback",
    "SignalReading",
    "SignalType",
    "utcnow",
]
