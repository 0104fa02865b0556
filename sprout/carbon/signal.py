"""The cached carbon signal the controller reads on every request.

The provider is asked at most once per ``refresh_s``; in between, a read is an attribute
lookup. When the provider fails, the last good reading is served while it is no older than
``max_age_s``, then a configured default: the request always gets a reading, labelled with
where it came from.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sprout.carbon.base import CarbonProvider, CarbonReading, utcnow
from sprout.errors import ConfigError

log = logging.getLogger("sprout.carbon")

Fallback = Literal["provider", "cache", "default"]

#: Longest wait before a failed provider is asked again (shorter if ``refresh_s`` is).
RETRY_AFTER_FAILURE_S = 30.0


@dataclass(frozen=True)
class SignalReading:
    """What :meth:`CarbonSignal.read` returns.

    Attributes:
        reading: the carbon reading to use.
        age_s: seconds between ``reading.time`` and now (wall clock), >= 0.
        fallback: ``provider`` (the provider's latest good value), ``cache`` (the provider
            failed; the last good reading is served) or ``default`` (no usable reading; the
            configured default, marked estimated).
        error: the provider's error message when a fallback is served, else None.
    """

    reading: CarbonReading
    age_s: float
    fallback: Fallback
    error: str | None = None


@dataclass(frozen=True)
class _State:
    """Everything a read needs, swapped as one object so reads need no lock."""

    last_good: CarbonReading | None = None
    fetched_at: float | None = None  # monotonic time of the last successful fetch
    failed_at: float | None = None  # monotonic time of the last failure, None after a success
    error: str | None = None


class CarbonSignal:
    """A provider's latest reading for one zone, cached, with fallbacks.

    Args:
        provider: where readings come from.
        zone: the grid zone to read.
        refresh_s: serve a fetched reading this long before asking the provider again.
        max_age_s: when the provider fails, serve the last good reading only while it is
            at most this old (by its timestamp); then the default.
        default_ci_g_per_kwh: the intensity used when no usable reading exists.
        clock: wall clock (timezone-aware) for ages and the default reading's time.
        monotonic: clock for the refresh and retry intervals.

    Raises:
        ConfigError: naming the argument, if one is invalid.
    """

    def __init__(
        self,
        provider: CarbonProvider,
        zone: str,
        *,
        refresh_s: float = 300.0,
        max_age_s: float = 10800.0,
        default_ci_g_per_kwh: float = 400.0,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(zone, str) or not zone.strip():
            raise ConfigError(f"carbon signal: zone must be a non-empty string, got {zone!r}")
        for name, value in (
            ("refresh_s", refresh_s),
            ("max_age_s", max_age_s),
            ("default_ci_g_per_kwh", default_ci_g_per_kwh),
        ):
            if math.isnan(value) or value < 0 or (name != "max_age_s" and math.isinf(value)):
                raise ConfigError(f"carbon signal: {name} must be a number >= 0, got {value!r}")
        self.provider = provider
        self.zone = zone
        self.refresh_s = float(refresh_s)
        self.max_age_s = float(max_age_s)
        self.default_ci_g_per_kwh = float(default_ci_g_per_kwh)
        self.retry_after_s = min(self.refresh_s, RETRY_AFTER_FAILURE_S)
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._state = _State()

    @property
    def last_good(self) -> CarbonReading | None:
        """The last reading the provider returned (or that :meth:`prime` seeded)."""
        return self._state.last_good

    def prime(self, readings: Iterable[CarbonReading]) -> None:
        """Seed the last good reading, e.g. from history, so that a provider failing from the
        start falls back to it rather than to the default.

        The newest of ``readings`` is kept if it is newer than the current last good reading.
        The provider is still asked on the next :meth:`read`.

        Raises:
            ValueError: if a reading is for another zone.
        """
        newest: CarbonReading | None = None
        for reading in readings:
            if reading.zone != self.zone:
                raise ValueError(
                    f"cannot prime the signal for zone {self.zone!r} with a reading "
                    f"for zone {reading.zone!r}"
                )
            if newest is None or reading.time > newest.time:
                newest = reading
        if newest is None:
            return
        with self._lock:
            state = self._state
            if state.last_good is None or newest.time > state.last_good.time:
                self._state = _State(newest, state.fetched_at, state.failed_at, state.error)

    def read(self) -> SignalReading:
        """The reading to use now; asks the provider only when the cached one is due."""
        state = self._state
        if self._due(state, self._monotonic()):
            with self._lock:  # one refresh at a time; the others then see its result
                state = self._state
                now_m = self._monotonic()
                if self._due(state, now_m):
                    state = self._refresh(state, now_m)
        return self._serve(state)

    def _due(self, state: _State, now_m: float) -> bool:
        if state.failed_at is not None:
            return now_m - state.failed_at >= self.retry_after_s
        if state.fetched_at is None:
            return True
        return now_m - state.fetched_at > self.refresh_s

    def _refresh(self, state: _State, now_m: float) -> _State:
        try:
            reading = self.provider.latest(self.zone)
            if not isinstance(reading, CarbonReading):
                raise TypeError(
                    f"provider {self.provider.name!r} returned {type(reading).__name__}, "
                    "not a CarbonReading"
                )
        except Exception as e:  # any provider failure degrades to a fallback, never fails
            new = _State(state.last_good, state.fetched_at, now_m, str(e) or type(e).__name__)
            log.warning(
                "carbon provider %r failed for zone %s (%s); serving %s, retrying in %g s",
                self.provider.name,
                self.zone,
                new.error,
                "the last good reading" if self._usable(new.last_good) else "the default",
                self.retry_after_s,
            )
        else:
            new = _State(reading, now_m, None, None)
        self._state = new
        return new

    def _usable(self, reading: CarbonReading | None) -> bool:
        return reading is not None and reading.age_s(self._clock()) <= self.max_age_s

    def _serve(self, state: _State) -> SignalReading:
        now = self._clock()
        good = state.last_good
        if good is not None and state.error is None and state.fetched_at is not None:
            return SignalReading(good, good.age_s(now), "provider")
        if good is not None and good.age_s(now) <= self.max_age_s:
            return SignalReading(good, good.age_s(now), "cache", state.error)
        default = CarbonReading(
            zone=self.zone,
            ci_g_per_kwh=self.default_ci_g_per_kwh,
            time=now,
            provider="default",
            is_estimated=True,
        )
        return SignalReading(default, 0.0, "default", state.error)
