"""What the poller needs from the signal it refreshes and the store it records into.

Structural types only, so that :mod:`sprout.carbon.poller` depends on neither
:mod:`sprout.carbon.signal` (which starts pollers) nor the ledger (an adapter of its own):
:class:`~sprout.carbon.signal.CarbonSignal` is a :class:`PolledSignal` and
:class:`~sprout.ledger.store.Ledger` a :class:`ReadingStore`, without naming either.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

from sprout.carbon.base import CarbonProvider
from sprout.readings import CarbonReading, SignalReading


class ReadingStore(Protocol):
    """Where the poller stores readings, with the cluster-wide lock that makes one replica
    record each round."""

    def add_readings(
        self, readings: Iterable[CarbonReading], fetched_at: datetime | None = None
    ) -> int:
        """Store readings not stored yet; how many were new. Raises when it cannot write."""
        ...

    def job_lock(self, name: str) -> AbstractContextManager[bool]:
        """A block holding job ``name``'s cluster-wide lock if it can be had (yields whether
        it is held); entering raises :class:`~sprout.errors.SproutError` when the lock
        cannot be asked for."""
        ...


class PolledSignal(Protocol):
    """A cached signal the poller refreshes off the request path."""

    provider: CarbonProvider
    zone: str
    secondary: CarbonProvider | None
    secondary_zone: str

    def due(self) -> bool:
        """Whether the providers should be asked now."""
        ...

    def refresh(self) -> SignalReading:
        """Ask the providers now; what a read now serves. Never raises for a provider."""
        ...

    def read(self) -> SignalReading:
        """The reading to use now."""
        ...


__all__ = ["PolledSignal", "ReadingStore"]
