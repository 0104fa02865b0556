"""A trailing window of hourly carbon intensity (pure, no I/O)."""

from __future__ import annotations

import math
from collections import deque
from datetime import datetime

from sprout.policy.base import CarbonContext


class CIWindow:
    """The last ``hours`` hourly readings, for the optimizer's CI min, max and mean.

    Readings are keyed by hour: a second reading for an hour already seen replaces it,
    so polling more often than hourly does not skew the statistics.
    """

    def __init__(self, hours: int) -> None:
        if hours < 1:
            raise ValueError(f"window must hold at least one hour, got {hours}")
        self.hours = hours
        self._values: deque[tuple[datetime, float]] = deque(maxlen=hours)
        # (min, max, mean) of the window, recomputed when it changes (at most hourly), so
        # that context() on the request path costs the same for 1 hour or 720.
        self._stats: tuple[float, float, float] | None = None

    def __len__(self) -> int:
        return len(self._values)

    def add(self, hour: datetime, ci_g_per_kwh: float) -> None:
        """Record the intensity of the hour starting at ``hour`` (later hours last)."""
        if not math.isfinite(ci_g_per_kwh) or ci_g_per_kwh < 0:
            raise ValueError(f"carbon intensity must be finite and >= 0, got {ci_g_per_kwh!r}")
        hour = hour.replace(minute=0, second=0, microsecond=0)
        if self._values and self._values[-1][0] == hour:
            if self._values[-1][1] == ci_g_per_kwh:
                return  # the same reading again: nothing changes
            self._values[-1] = (hour, ci_g_per_kwh)
        elif self._values and hour < self._values[-1][0]:
            return  # an older hour arriving late adds nothing to a trailing window
        else:
            self._values.append((hour, ci_g_per_kwh))
        self._stats = None

    def context(self, ci_g_per_kwh: float, *, include_current: bool = True) -> CarbonContext:
        """The carbon context for ``ci_g_per_kwh`` now.

        Min and max include ``ci_g_per_kwh`` unless ``include_current`` is False (for a
        configured default, which is no observation of the grid and must not stretch the
        range); the mean is over the window's hours (or is ``ci_g_per_kwh`` when the window
        is empty), so callers that :meth:`add` the current hour first, as the controller
        does, count it once.
        """
        if not self._values:
            low = high = mean = ci_g_per_kwh
        else:
            if self._stats is None:
                values = [v for _, v in self._values]
                self._stats = (min(values), max(values), sum(values) / len(values))
            low, high, mean = self._stats
        if include_current:
            low, high = min(low, ci_g_per_kwh), max(high, ci_g_per_kwh)
        return CarbonContext(ci_g_per_kwh=ci_g_per_kwh, ci_min=low, ci_max=high, ci_mean=mean)
