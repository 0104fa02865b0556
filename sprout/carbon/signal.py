"""The cached carbon signal the controller reads on every request.

A read is an attribute lookup and a subtraction: it serves the reading held in memory and
says how old it is and which layer it came from. The layers, in order:

1. ``provider``: the configured provider's latest good value;
2. ``secondary``: the provider failed, a second (fallback) provider answered;
3. ``cache``: both failed; the last good reading is served while it is at most
   ``max_age_s`` old;
4. ``default``: nothing usable; the configured default intensity, marked estimated.

Who asks the providers: once :meth:`CarbonSignal.start_polling` runs, only the background
poller does (see :mod:`sprout.carbon.poller`), so a request never waits on the network.
Without a poller, a read that finds the reading due refreshes it inline (at most once per
``refresh_s``; after a failure, once per ``retry_after_s``), which suits local providers
such as the trace and the embedded demo.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sprout.carbon.base import CarbonProvider, utcnow
from sprout.carbon.poller import CarbonPoller
from sprout.errors import ConfigError

# SignalReading, Fallback and FALLBACK_ORDER live in sprout.readings (pure, so that the
# poller, the ledger and the receipt name them without this module); re-exported here.
from sprout.readings import FALLBACK_ORDER, CarbonReading, Fallback, SignalReading

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from sprout.carbon.poller import CarbonPoller
    from sprout.carbon.ports import ReadingStore

log = logging.getLogger("sprout.carbon")

#: Longest wait before a failed provider is asked again (shorter if ``refresh_s`` is).
RETRY_AFTER_FAILURE_S = 30.0


@dataclass(frozen=True)
class _State:
    """Everything a read needs, swapped as one object so reads need no lock."""

    last_good: CarbonReading | None = None
    fetched_at: float | None = None  # monotonic time of the last successful fetch
    failed_at: float | None = None  # monotonic time of the last failure, None after a success
    error: str | None = None
    layer: Fallback | None = None  # who produced last_good in the latest refresh; None: nobody
    primary_retry_at: float | None = None  # the provider asked us not to call before this


class CarbonSignal:
    """A provider's latest reading for one zone, cached, with fallbacks.

    Args:
        provider: where readings come from.
        zone: the grid zone to read.
        refresh_s: serve a fetched reading this long before asking the provider again (the
            poll interval once a poller runs).
        max_age_s: when the providers fail, serve the last good reading only while it is
            at most this old (by its timestamp); then the default.
        default_ci_g_per_kwh: the intensity used when no usable reading exists.
        clock: wall clock (timezone-aware) for ages and the default reading's time.
        monotonic: clock for the refresh and retry intervals.
        secondary: a fallback provider asked when ``provider`` fails.
        secondary_zone: the zone to ask ``secondary`` for (default: ``zone``), for providers
            that name zones differently (a WattTime region, a UK ``region:N``).

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
        secondary: CarbonProvider | None = None,
        secondary_zone: str | None = None,
    ) -> None:
        if not isinstance(zone, str) or not zone.strip():
            raise ConfigError(f"carbon signal: zone must be a non-empty string, got {zone!r}")
        if secondary_zone is not None and (
            not isinstance(secondary_zone, str) or not secondary_zone.strip()
        ):
            raise ConfigError(
                f"carbon signal: secondary_zone must be a non-empty string, got {secondary_zone!r}"
            )
        for name, value in (
            ("refresh_s", refresh_s),
            ("max_age_s", max_age_s),
            ("default_ci_g_per_kwh", default_ci_g_per_kwh),
        ):
            if math.isnan(value) or value < 0 or (name != "max_age_s" and math.isinf(value)):
                raise ConfigError(f"carbon signal: {name} must be a number >= 0, got {value!r}")
        self.provider = provider
        self.zone = zone
        self.secondary = secondary
        self.secondary_zone = secondary_zone or zone
        self.refresh_s = float(refresh_s)
        self.max_age_s = float(max_age_s)
        self.default_ci_g_per_kwh = float(default_ci_g_per_kwh)
        self.retry_after_s = min(self.refresh_s, RETRY_AFTER_FAILURE_S)
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._state = _State()
        self._poller: CarbonPoller | None = None
        # While a poller runs, reads never refresh; a reading older than this many seconds
        # since its fetch means the poller stalled, and is served as the cache.
        self._stale_after_s: float | None = None

    @property
    def last_good(self) -> CarbonReading | None:
        """The last reading a provider returned (or that :meth:`prime` seeded)."""
        return self._state.last_good

    @property
    def polling(self) -> bool:
        """Whether a background poller refreshes the signal (reads then never do)."""
        return self._stale_after_s is not None

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
                # A seeded reading was not fetched: it serves as the cache.
                self._state = _State(
                    newest,
                    state.fetched_at,
                    state.failed_at,
                    state.error,
                    None,
                    state.primary_retry_at,
                )

    def read(self) -> SignalReading:
        """The reading to use now.

        Without a poller, asks the providers when the cached reading is due; with one, never.
        """
        state = self._state
        if self._stale_after_s is None and self._due(state, self._monotonic()):
            with self._lock:  # one refresh at a time; the others then see its result
                state = self._state
                now_m = self._monotonic()
                if self._due(state, now_m):
                    state = self._refresh(state, now_m)
        return self._serve(state)

    def due(self) -> bool:
        """Whether the providers should be asked now (the refresh or retry interval passed)."""
        return self._due(self._state, self._monotonic())

    def refresh(self) -> SignalReading:
        """Ask the providers now, whatever the interval, and return what a read now serves.

        The provider is skipped (the secondary asked directly) while it has asked us to
        wait (HTTP 429 with ``Retry-After``). Never raises for a provider failure.
        """
        with self._lock:
            state = self._refresh(self._state, self._monotonic())
        return self._serve(state)

    # ------------------------------------------------------------------ polling

    def start_polling(
        self,
        *,
        ledger: ReadingStore | None = None,
        forecast_interval_s: float = 3600.0,
        forecast_hours: int = 24,
        tick_s: float | None = None,
        scheduler: BaseScheduler | None = None,
        wait_first_s: float = 0.0,
    ) -> CarbonPoller:
        """Refresh in the background from now on; reads no longer touch the providers.

        A background APScheduler job asks the providers every ``refresh_s`` (sooner after a
        failure), stores each fresh reading, and the provider's forecast every
        ``forecast_interval_s``, in ``ledger`` when one is given. The first poll starts at
        once; until it lands, reads serve the cache or the default (``wait_first_s`` waits
        for it, so that the first requests after a start get a live reading).

        Args:
            ledger: where readings and forecasts are stored (None: not stored).
            forecast_interval_s: how often the forecast is fetched (0: never).
            forecast_hours: the forecast horizon asked for.
            tick_s: how often the job wakes to check whether a refresh is due (default:
                the retry interval, at least 1 s).
            scheduler: a running or not yet started APScheduler scheduler to add the job to
                (default: a private background scheduler, stopped by :meth:`stop_polling`).
            wait_first_s: wait up to this long for the first poll before returning.

        Returns:
            The poller (its :meth:`~sprout.carbon.poller.CarbonPoller.poll_once` can also be
            called directly).

        Raises:
            RuntimeError: if a poller is already running.
        """

        if self._poller is not None:
            raise RuntimeError("the carbon signal is already being polled")
        poller = CarbonPoller(
            self,
            ledger=ledger,
            forecast_interval_s=forecast_interval_s,
            forecast_hours=forecast_hours,
        )
        tick = tick_s if tick_s is not None else max(1.0, self.retry_after_s)
        # Stale once two polls (plus a slow provider's timeouts) have been missed.
        self._stale_after_s = max(2.0 * self.refresh_s, self.refresh_s + 120.0, 3.0 * tick)
        self._poller = poller
        try:
            poller.start(tick, scheduler=scheduler)
        except BaseException:
            self._poller = None
            self._stale_after_s = None
            raise
        if wait_first_s > 0:
            poller.first_poll.wait(wait_first_s)
        return poller

    def stop_polling(self, wait: bool = True) -> None:
        """Stop the background poller (reads refresh lazily again). Idempotent."""
        poller, self._poller = self._poller, None
        self._stale_after_s = None
        if poller is not None:
            poller.stop(wait=wait)

    def close(self) -> None:
        """Stop polling and release the providers' HTTP sessions."""
        self.stop_polling()
        for provider in (self.provider, self.secondary):
            close = getattr(provider, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as e:  # closing must not fail a shutdown
                    log.debug("closing carbon provider failed: %s", e)

    # ------------------------------------------------------------------ internals

    def _due(self, state: _State, now_m: float) -> bool:
        if state.failed_at is not None:
            return now_m - state.failed_at >= self.retry_after_s
        if state.fetched_at is None:
            return True
        return now_m - state.fetched_at > self.refresh_s

    def _fetch(
        self, provider: CarbonProvider, zone: str, now_m: float
    ) -> tuple[CarbonReading | None, str, float | None]:
        """(reading, error message, monotonic time before which not to ask again)."""
        try:
            reading = provider.latest(zone)
            if not isinstance(reading, CarbonReading):
                raise TypeError(
                    f"provider {provider.name!r} returned {type(reading).__name__}, "
                    "not a CarbonReading"
                )
        except Exception as e:  # any provider failure degrades to a fallback, never fails
            wait_s = getattr(e, "retry_after_s", None)
            retry_at = now_m + wait_s if isinstance(wait_s, int | float) and wait_s > 0 else None
            return None, str(e) or type(e).__name__, retry_at
        return reading, "", None

    def _refresh(self, state: _State, now_m: float) -> _State:
        errors: list[str] = []
        retry_at = state.primary_retry_at
        if retry_at is None or now_m >= retry_at:
            reading, error, retry_at = self._fetch(self.provider, self.zone, now_m)
            if reading is not None:
                self._state = new = _State(reading, now_m, None, None, "provider", None)
                return new
            errors.append(error)
        else:
            errors.append(state.error or f"{self.provider.name}: waiting as the provider asked")
        if self.secondary is not None:
            reading, error, _ = self._fetch(self.secondary, self.secondary_zone, now_m)
            if reading is not None:
                self._state = new = _State(reading, now_m, now_m, errors[0], "secondary", retry_at)
                log.warning(
                    "carbon provider %r failed for zone %s (%s); serving %r's reading, "
                    "retrying in %g s",
                    self.provider.name,
                    self.zone,
                    errors[0],
                    self.secondary.name,
                    self.retry_after_s,
                )
                return new
            errors.append(error)
        new = _State(state.last_good, state.fetched_at, now_m, "; ".join(errors), None, retry_at)
        log.warning(
            "carbon provider %r failed for zone %s (%s); serving %s, retrying in %g s",
            self.provider.name,
            self.zone,
            new.error,
            "the last good reading" if self._usable(new.last_good) else "the default",
            self.retry_after_s,
        )
        self._state = new
        return new

    def _usable(self, reading: CarbonReading | None) -> bool:
        return reading is not None and reading.age_s(self._clock()) <= self.max_age_s

    def _serve(self, state: _State) -> SignalReading:
        now = self._clock()
        good = state.last_good
        layer = state.layer
        error = state.error
        stale_after = self._stale_after_s
        if (
            layer is not None
            and stale_after is not None
            and state.fetched_at is not None
            and self._monotonic() - state.fetched_at > stale_after
        ):
            layer = None  # the poller stopped delivering: this is a cached reading now
            error = error or f"no fresh reading for over {stale_after:g} s (poller stalled)"
        if good is not None:
            age_s = good.age_s(now)
            if layer is not None:
                return SignalReading(good, age_s, layer, error)
            if age_s <= self.max_age_s:
                return SignalReading(good, age_s, "cache", error)
        default = CarbonReading(
            zone=self.zone,
            ci_g_per_kwh=self.default_ci_g_per_kwh,
            time=now,
            provider="default",
            is_estimated=True,
        )
        return SignalReading(default, 0.0, "default", error)


__all__ = [
    "FALLBACK_ORDER",
    "RETRY_AFTER_FAILURE_S",
    "CarbonSignal",
    "Fallback",
    "SignalReading",
]
