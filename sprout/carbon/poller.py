"""The carbon poller: the job that keeps a :class:`~sprout.carbon.signal.CarbonSignal` fresh
off the request path and records what it fetched in the ledger.

Each tick asks the signal whether a refresh is due (its refresh interval passed, or its retry
interval after a failure); if so it refreshes (provider, then the secondary), stores the
fresh reading in the ledger's ``carbon_readings`` table, and, every ``forecast_interval_s``,
the provider's forecast too. It runs as an APScheduler 3.x interval job: in the background
(:meth:`CarbonPoller.start`, used by :meth:`CarbonSignal.start_polling`) or in the
foreground (:meth:`CarbonPoller.run`, used by ``sprout poll``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sprout.carbon.base import CarbonProvider
from sprout.carbon.ports import PolledSignal, ReadingStore
from sprout.errors import SproutError
from sprout.readings import CarbonReading, SignalReading
from sprout.scheduler import (
    add_interval_job,
    create_scheduler,
    remove_job,
    run_blocking,
    start_scheduler,
    stop_scheduler,
)

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

log = logging.getLogger("sprout.carbon.poller")

#: APScheduler job id of the carbon poll.
JOB_ID = "sprout-carbon-poll"


@dataclass(frozen=True)
class PollResult:
    """What one poll did.

    Attributes:
        signal: what the signal serves after the poll.
        refreshed: whether the providers were asked (False: not due yet).
        stored: readings newly stored in the ledger (the fresh reading and forecasts).
        forecasts: forecast readings fetched.
        error: a provider or ledger problem met on the way, else None.
    """

    signal: SignalReading
    refreshed: bool
    stored: int = 0
    forecasts: int = 0
    error: str | None = None


class CarbonPoller:
    """Refreshes a signal and records its readings.

    Args:
        signal: the signal to keep fresh (a :class:`~sprout.carbon.signal.CarbonSignal`).
        ledger: where readings and forecasts are stored (None: not stored), under its
            cluster-wide ``poll`` lock (a :class:`~sprout.ledger.store.Ledger`).
        forecast_interval_s: how often the forecast is fetched and stored (0: never).
        forecast_hours: the forecast horizon asked for.
        monotonic: clock for the forecast interval.
    """

    def __init__(
        self,
        signal: PolledSignal,
        *,
        ledger: ReadingStore | None = None,
        forecast_interval_s: float = 3600.0,
        forecast_hours: int = 24,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if forecast_interval_s < 0:
            raise ValueError(f"forecast_interval_s must be >= 0, got {forecast_interval_s!r}")
        self.signal = signal
        self.ledger = ledger
        self.forecast_interval_s = float(forecast_interval_s)
        self.forecast_hours = int(forecast_hours)
        self._monotonic = monotonic
        self._next_forecast_m: float | None = None
        self._lock = threading.Lock()  # one poll at a time, whoever calls it
        self._scheduler: BaseScheduler | None = None
        self._own_scheduler = False
        #: Polls that asked the providers, and those where no provider answered.
        self.refreshes = 0
        self.failures = 0
        #: Readings newly stored in the ledger.
        self.stored = 0
        #: Set once the first refresh has finished (whatever its outcome).
        self.first_poll = threading.Event()

    def poll_once(self, force: bool = False) -> PollResult:
        """Refresh the signal if due (or ``force``), store what was fetched; never raises
        for a provider or ledger failure."""
        with self._lock:
            if not force and not self.signal.due():
                return PollResult(self.signal.read(), refreshed=False)
            served = self.signal.refresh()
            self.refreshes += 1
            fresh = served.fallback in ("provider", "secondary")
            if not fresh:
                self.failures += 1
            problems = [served.error] if served.error else []
            to_store: list[CarbonReading] = [served.reading] if fresh else []
            forecasts: list[CarbonReading] = []
            stored = 0
            with self._cluster_turn(problems) as ours:
                if ours:  # another replica records this round's readings otherwise
                    forecasts = self._forecast_if_due(problems)
                    to_store.extend(forecasts)
                    stored = self._store(to_store, problems)
            self.first_poll.set()
            return PollResult(
                served,
                refreshed=True,
                stored=stored,
                forecasts=len(forecasts),
                error="; ".join(problems) or None,
            )

    @contextlib.contextmanager
    def _cluster_turn(self, problems: list[str]) -> Iterator[bool]:
        """Whether this process records readings now: every replica refreshes its own signal,
        but only the holder of the cluster-wide ``poll`` lock fetches forecasts and writes
        the shared ledger, so replicas don't repeat provider calls or inserts."""
        if self.ledger is None:
            yield True
            return
        with contextlib.ExitStack() as stack:
            try:
                acquired = stack.enter_context(self.ledger.job_lock("poll"))
            except SproutError as e:  # the database is down: storing would fail anyway
                log.error("poll lock unavailable, readings not recorded this round: %s", e)
                problems.append(f"ledger: {e}")
                acquired = False
            yield acquired

    def _forecast_if_due(self, problems: list[str]) -> list[CarbonReading]:
        if self.forecast_interval_s <= 0:
            return []
        now_m = self._monotonic()
        if self._next_forecast_m is not None and now_m < self._next_forecast_m:
            return []
        sources: list[tuple[CarbonProvider, str]] = [(self.signal.provider, self.signal.zone)]
        if self.signal.secondary is not None:
            sources.append((self.signal.secondary, self.signal.secondary_zone))
        for provider, zone in sources:
            try:
                readings = provider.forecast(zone, self.forecast_hours)
            except Exception as e:  # a forecast is a bonus: the next source, or next time
                log.warning("forecast from %r for %s failed: %s", provider.name, zone, e)
                problems.append(f"forecast: {e}")
                continue
            self._next_forecast_m = now_m + self.forecast_interval_s
            return [r for r in readings if isinstance(r, CarbonReading)]
        # Every source failed: try again at the next refresh rather than in an hour.
        return []

    def _store(self, readings: list[CarbonReading], problems: list[str]) -> int:
        if self.ledger is None or not readings:
            return 0
        try:
            stored = self.ledger.add_readings(readings)
        except Exception as e:  # the database being down must not stop the polling
            log.error("storing %d carbon reading(s) failed: %s", len(readings), e)
            problems.append(f"ledger: {e}")
            return 0
        self.stored += stored
        return stored

    def _job(self) -> None:
        try:
            self.poll_once()
        except Exception:  # keep the schedule alive whatever happens
            log.exception("carbon poll failed")

    # ------------------------------------------------------------------ scheduling

    def start(self, tick_s: float, *, scheduler: BaseScheduler | None = None) -> None:
        """Poll in the background: a job every ``tick_s`` seconds, the first at once.

        Args:
            tick_s: how often to check whether a refresh is due.
            scheduler: an APScheduler scheduler to add the job to (started here if it is not
                running); default: a private background scheduler that :meth:`stop` shuts.
        """

        if self._scheduler is not None:
            raise RuntimeError("the poller is already started")
        own = scheduler is None
        sched = scheduler if scheduler is not None else create_scheduler()
        add_interval_job(sched, self._job, interval_s=tick_s, job_id=JOB_ID, name="carbon poll")
        self._scheduler, self._own_scheduler = sched, own
        start_scheduler(sched)

    def stop(self, wait: bool = True) -> None:
        """Remove the job (and shut a private scheduler down). Idempotent."""

        sched, self._scheduler = self._scheduler, None
        if sched is None:
            return
        if self._own_scheduler:
            stop_scheduler(sched, wait=wait)
        else:
            remove_job(sched, JOB_ID)

    def run(
        self,
        tick_s: float,
        *,
        max_polls: int | None = None,
        on_result: Callable[[PollResult], None] | None = None,
    ) -> None:
        """Poll in the foreground until interrupted (or after ``max_polls`` refreshes).

        Used by ``sprout poll``: a blocking scheduler runs the job every ``tick_s`` seconds,
        the first at once; Ctrl-C or SIGTERM stops it.

        Args:
            tick_s: how often to check whether a refresh is due.
            max_polls: stop after this many refreshes (None: run until stopped).
            on_result: called with each refresh's result (default: logged at INFO).
        """

        sched = create_scheduler(blocking=True)
        remaining = [max_polls]

        def job() -> None:
            result = None
            try:
                result = self.poll_once()
            except Exception:
                log.exception("carbon poll failed")
            if result is not None and result.refreshed:
                (on_result or _report)(result)
                if remaining[0] is not None:
                    remaining[0] -= 1
                    if remaining[0] <= 0:
                        sched.shutdown(wait=False)

        add_interval_job(sched, job, interval_s=tick_s, job_id=JOB_ID, name="carbon poll")
        run_blocking(sched)


def _report(result: PollResult) -> None:
    r = result.signal.reading
    log.info(
        "carbon poll: %s %.1f g/kWh for %s from %s (%s); stored %d, forecasts %d%s",
        r.time.isoformat(),
        r.ci_g_per_kwh,
        r.zone,
        r.provider,
        result.signal.fallback,
        result.stored,
        result.forecasts,
        f"; {result.error}" if result.error else "",
    )
