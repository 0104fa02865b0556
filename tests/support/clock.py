"""A fake clock: wall time that a test sets or moves, and a monotonic clock moving with it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: Where :class:`FakeClock` starts unless told otherwise.
DEFAULT_START = datetime(2023, 6, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """A settable wall clock (``t``, read by :meth:`now`) and a matching monotonic clock.

    Setting ``t`` or calling :meth:`advance` moves both: :meth:`monotonic` is
    ``monotonic_start`` plus the wall time elapsed since ``start``. ``monotonic_start``
    defaults to ``start``'s POSIX timestamp, so that :meth:`monotonic` is ``t.timestamp()``.
    Pass the bound methods where Sprout takes a clock (``clock=c.now``,
    ``monotonic=c.monotonic``).
    """

    def __init__(
        self, start: datetime = DEFAULT_START, *, monotonic_start: float | None = None
    ) -> None:
        self.t = start
        self._start = start
        self._monotonic_start = start.timestamp() if monotonic_start is None else monotonic_start

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return self._monotonic_start + (self.t - self._start).total_seconds()

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)
