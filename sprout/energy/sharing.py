"""Meters over a device-wide energy counter, and how they share it among requests.

NVML and RAPL count the energy of a whole device (a GPU, a CPU package), not of one
request. :class:`CounterMeter` turns such a counter into per-window samples.

The sharing rule
----------------
1. The counter is read whenever a window opens or closes. This cuts time into *segments*
   during which the same windows are open. Energy used while no window is open (idle) is
   nobody's and is not attributed.
2. A segment's energy is shared among the windows open during it in proportion to the
   tokens each processed in it. A window's tokens (input + output, from its ``Usage``) are
   taken to be processed evenly over the window, so its weight in a segment is its token
   rate (tokens / window duration) times the segment's length.
3. A receipt cannot wait, so a window settles its shares when it closes. Windows still open
   then have no token count yet: each is weighted at the mean token rate of the windows
   recently closed on this meter (an exponential moving average), or, before any window has
   closed, at the closing window's own rate (an even split). What the closing window does
   not take stays with the windows still open; the last window in a segment takes the rest.
   So every segment's energy is attributed exactly once, and the samples of overlapping
   windows add up to what the counter measured while they were open.

A window with no tokens (a failed generation) takes nothing from a segment it shares with
other windows. With the first token's time (``Usage.first_token_s``) a window's
energy is split into prefill (before it) and decode (after), segment by segment, evenly in
time within a segment.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sprout.energy.base import EnergyMeter, EnergySample, Usage
from sprout.errors import MeterError

#: Millijoules in one kilowatt-hour (exact).
MJ_PER_KWH = 3_600_000_000


@dataclass
class _Segment:
    t0: float
    t1: float
    remaining_mj: float
    holders: set[str] = field(default_factory=set)


class CounterMeter(EnergyMeter):
    """Per-window energy from a cumulative device counter, shared by the rule above.

    Subclasses implement :meth:`read_mj` (the counter, mJ, never decreasing) and set
    ``source`` and ``device``.

    Args:
        clock: monotonic clock, seconds (injectable for tests).
        rate_smoothing: weight of the latest closed window in the token-rate average.
    """

    #: What is metered, e.g. ``gpu:0 (NVIDIA H100)``; recorded in receipts.
    device: str = ""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, rate_smoothing: float = 0.2
    ) -> None:
        if not 0 < rate_smoothing <= 1:
            raise ValueError(f"rate_smoothing must lie in (0, 1], got {rate_smoothing!r}")
        self._clock = clock
        self._alpha = rate_smoothing
        self._lock = threading.Lock()
        self._open: dict[str, float] = {}
        self._segments: list[_Segment] = []
        self._last: tuple[float, float] | None = None  # (time, counter mJ) at the last event
        self._rate_tokens_per_s: float | None = None

    @abc.abstractmethod
    def read_mj(self) -> float:
        """The device's cumulative energy, mJ.

        Raises:
            MeterError: the counter cannot be read.
        """

    def _drop_holder(self, window: str) -> None:
        for seg in self._segments:
            seg.holders.discard(window)
        self._segments = [seg for seg in self._segments if seg.holders]

    @property
    def open_windows(self) -> int:
        """Windows currently open."""
        return len(self._open)

    def _cut(self, now: float) -> None:
        """End the current segment at ``now`` (called with the lock held)."""
        energy_mj = self.read_mj()
        if self._open and self._last is not None:
            t0, e0 = self._last
            # A counter never runs backwards; a reset (driver reload) counts as zero.
            self._segments.append(_Segment(t0, now, max(0.0, energy_mj - e0), set(self._open)))
        self._last = (now, energy_mj)

    def begin(self, window: str) -> None:
        with self._lock:
            if window in self._open:
                raise MeterError(f"energy window {window!r} is already open")
            now = self._clock()
            self._cut(now)
            self._open[window] = now

    def end(self, window: str, usage: Usage) -> EnergySample:
        with self._lock:
            if window not in self._open:
                raise MeterError(f"energy window {window!r} was never opened")
            now = self._clock()
            try:
                self._cut(now)
            except BaseException:
                # The window is gone: release its claim on the segments it shared.
                self._open.pop(window)
                self._drop_holder(window)
                raise
            started = self._open.pop(window)
            duration_s = max(0.0, now - started)
            tokens = max(0, usage.input_tokens) + max(0, usage.output_tokens)
            rate = tokens / duration_s if duration_s > 0 else float(tokens)
            others_rate = self._rate_tokens_per_s if self._rate_tokens_per_s is not None else rate
            first_token_at = None
            if usage.first_token_s is not None:
                first_token_at = min(now, started + max(0.0, usage.first_token_s))
            total_mj = prefill_mj = 0.0
            kept: list[_Segment] = []
            for seg in self._segments:
                if window in seg.holders:
                    take = _share(seg, rate, others_rate)
                    seg.remaining_mj -= take
                    seg.holders.discard(window)
                    total_mj += take
                    if first_token_at is not None and seg.t1 > seg.t0:
                        before = min(1.0, max(0.0, (first_token_at - seg.t0) / (seg.t1 - seg.t0)))
                        prefill_mj += take * before
                if seg.holders:
                    kept.append(seg)
            self._segments = kept
            if tokens > 0 and duration_s > 0:
                previous = self._rate_tokens_per_s
                self._rate_tokens_per_s = (
                    rate if previous is None else previous + self._alpha * (rate - previous)
                )
        energy_kwh = total_mj / MJ_PER_KWH
        split = first_token_at is not None
        return EnergySample(
            energy_kwh=energy_kwh,
            source=self.source,
            duration_s=duration_s,
            device=self.device,
            prefill_kwh=prefill_mj / MJ_PER_KWH if split else None,
            decode_kwh=(total_mj - prefill_mj) / MJ_PER_KWH if split else None,
        )


def _share(seg: _Segment, rate: float, others_rate: float) -> float:
    """The closing window's share of ``seg``'s remaining energy, mJ."""
    others = len(seg.holders) - 1
    if others <= 0:
        return seg.remaining_mj
    if rate <= 0:
        return 0.0  # no tokens (a failed generation): the others did the work
    weight = rate + others * others_rate
    fraction = rate / weight if weight > 0 else 1.0 / (others + 1)
    return seg.remaining_mj * fraction


class PowerIntegrator:
    """Integrates power readings (mW) over time into energy (mJ): the trapezoid rule.

    For devices without an energy counter. A daemon thread samples every ``interval_s``
    once :meth:`start` is called; :meth:`energy_mj` also samples, so window boundaries are
    read exactly rather than at the last tick.

    Args:
        read_power_mw: returns the current power draw, mW.
        interval_s: sampling period of the thread.
        clock: monotonic clock, seconds.
    """

    def __init__(
        self,
        read_power_mw: Callable[[], float],
        *,
        interval_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self._read = read_power_mw
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._energy_mj = 0.0
        self._last: tuple[float, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def sample(self) -> float:
        """Take one reading; returns the energy integrated so far, mJ."""
        power_mw = float(self._read())
        with self._lock:
            now = self._clock()
            if self._last is not None:
                t0, p0 = self._last
                self._energy_mj += (p0 + power_mw) / 2 * max(0.0, now - t0)  # mW x s = mJ
            self._last = (now, power_mw)
            return self._energy_mj

    energy_mj = sample

    def start(self) -> None:
        """Start the sampling thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sprout-power-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception as e:  # keep the error for the next reader; stop sampling
                self.error = e
                return

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop the sampling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
