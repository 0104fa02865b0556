"""Hourly carbon-intensity traces in the Electricity Maps export format, and the trace
provider that serves them as if live.

The CSV has a header with at least ``datetime_utc``, ``zone``, ``ci_direct`` and ``ci_lca``;
one row per hour, consecutive, no gaps.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sprout.carbon.base import CarbonProvider, CarbonReading, utcnow
from sprout.data import carbon_trace_path, open_text
from sprout.errors import TraceError, UnknownZoneError

if TYPE_CHECKING:
    from sprout.config import Settings

REQUIRED_COLUMNS = ("datetime_utc", "zone", "ci_direct", "ci_lca")
COLUMNS = ("ci_direct", "ci_lca")
_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class CarbonTrace:
    """An hourly carbon-intensity series for one zone.

    Attributes:
        zone: the zone id from the CSV.
        start: the first hour (UTC).
        ci_g_per_kwh: one value per consecutive hour, gCO2e/kWh.
        column: which CSV column the values came from.
        source: the file read.
    """

    zone: str
    start: datetime
    ci_g_per_kwh: np.ndarray
    column: str
    source: str

    def __len__(self) -> int:
        return int(self.ci_g_per_kwh.shape[0])

    def time_of(self, hour: int) -> datetime:
        """The UTC start of trace hour ``hour``."""
        return self.start + hour * _HOUR

    def hour_of(self, when: datetime) -> int:
        """Index of the trace hour that contains ``when``, wrapping around the trace's length
        so that a year-long trace can stand in for any year."""
        offset = math.floor((when - self.start) / _HOUR)
        return offset % len(self)

    def window(self, start_hour: int, hours: int) -> np.ndarray:
        """Values of hours ``[start_hour, start_hour + hours)``.

        Raises:
            TraceError: if the window runs past either end of the trace.
        """
        if start_hour < 0 or hours < 1 or start_hour + hours > len(self):
            raise TraceError(
                f"{self.source}: window of {hours} h from hour {start_hour} does not fit a "
                f"trace of {len(self)} h (last start for this length: {len(self) - hours})"
            )
        return self.ci_g_per_kwh[start_hour : start_hour + hours]


def resolve_trace_path(zone_or_path: str | Path) -> Path:
    """A bundled zone name or a CSV path (``.csv`` or ``.csv.gz``) to a file path."""
    candidate = Path(zone_or_path)
    if candidate.suffix in (".csv", ".gz") or candidate.exists():
        if not candidate.is_file():
            raise TraceError(f"{candidate}: no such file")
        return candidate
    return carbon_trace_path(str(zone_or_path))


def load_trace(zone_or_path: str | Path, column: str = "ci_direct") -> CarbonTrace:
    """Read and validate an hourly trace.

    Raises:
        TraceError: naming the file, and the row and column where relevant, for missing
            columns, unparseable times, gaps or repeats, non-numeric or negative values, or
            several zones in one file.
    """
    if column not in COLUMNS:
        raise TraceError(f"column must be one of {COLUMNS}, got {column!r}")
    path = resolve_trace_path(zone_or_path)
    try:
        with open_text(path) as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                raise TraceError(f"{path}: empty file (no header, no data)")
            header = reader.fieldnames
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise TraceError(
                    f"{path}: missing column(s) {', '.join(missing)} "
                    f"(expected the Electricity Maps hourly export: {', '.join(REQUIRED_COLUMNS)})"
                )
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise TraceError(f"{path}: cannot read ({e})") from e
    if not rows:
        raise TraceError(f"{path}: no data rows")
    zones = {r["zone"] for r in rows}
    if len(zones) != 1:
        raise TraceError(f"{path}: expected one zone, found {sorted(zones)}")
    values = np.empty(len(rows))
    previous: datetime | None = None
    start: datetime | None = None
    for i, row in enumerate(rows):
        line = i + 2  # header is line 1
        stamp = _parse_time(row["datetime_utc"], path, line)
        if previous is None:
            start = stamp
        elif stamp - previous != _HOUR:
            problem = "a gap" if stamp > previous else "a repeated or out-of-order hour"
            raise TraceError(
                f"{path}:{line}: {problem} in datetime_utc ({previous:%Y-%m-%d %H:%M} then "
                f"{stamp:%Y-%m-%d %H:%M}); the trace must be consecutive hours"
            )
        previous = stamp
        raw = row[column]
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise TraceError(f"{path}:{line}: {column} is not a number: {raw!r}") from None
        if not math.isfinite(value) or value < 0:
            raise TraceError(f"{path}:{line}: {column} must be a finite number >= 0, got {raw!r}")
        values[i] = value
    assert start is not None
    return CarbonTrace(zones.pop(), start, values, column, str(path))


def _utc_hour(when: datetime) -> datetime:
    """Start of the UTC hour containing ``when`` (aware datetimes in any zone; a zone with a
    half-hour offset would otherwise put the hour's start 30 minutes off)."""
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.replace(minute=0, second=0, microsecond=0)


def _parse_time(raw: str | None, path: Path, line: int) -> datetime:
    try:
        stamp = datetime.fromisoformat((raw or "").strip().replace("Z", "+00:00"))
    except ValueError:
        raise TraceError(f"{path}:{line}: datetime_utc is not a date-time: {raw!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


class TraceProvider(CarbonProvider):
    """Serves a recorded trace as if it were live: the reading for ``clock()``'s hour.

    The trace's year stands in for any year: times outside it wrap around by the trace
    length. Readings are marked ``is_estimated=False`` and keep the trace's emission factor.
    """

    name = "trace"

    def __init__(
        self,
        trace: CarbonTrace,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.trace = trace
        self._clock = clock
        self._factor = "direct" if trace.column == "ci_direct" else "lifecycle"

    @classmethod
    def from_source(
        cls,
        zone_or_path: str | Path,
        column: str = "ci_direct",
        clock: Callable[[], datetime] = utcnow,
    ) -> TraceProvider:
        """Load a bundled zone's trace or a CSV and serve it."""
        return cls(load_trace(zone_or_path, column), clock)

    def _check_zone(self, zone: str) -> None:
        if zone != self.trace.zone:
            raise UnknownZoneError(
                f"trace: zone {zone!r} is not in {self.trace.source} (it holds {self.trace.zone!r})"
            )

    def _reading(self, hour_time: datetime, hour: int) -> CarbonReading:
        return CarbonReading(
            zone=self.trace.zone,
            ci_g_per_kwh=float(self.trace.ci_g_per_kwh[hour]),
            time=hour_time,
            provider=self.name,
            emission_factor=self._factor,  # type: ignore[arg-type]
        )

    def at(self, zone: str, when: datetime) -> CarbonReading:
        """The reading for the hour containing ``when``."""
        self._check_zone(zone)
        hour_start = _utc_hour(when)
        return self._reading(hour_start, self.trace.hour_of(when))

    def latest(self, zone: str) -> CarbonReading:
        """The reading for the current hour of the provider's clock."""
        return self.at(zone, self._clock())

    def history(self, zone: str, start: datetime, end: datetime) -> list[CarbonReading]:
        """Hourly readings in ``[start, end)``."""
        self._check_zone(zone)
        out = []
        t = _utc_hour(start)
        if t < start:
            t += _HOUR
        while t < end:
            out.append(self._reading(t, self.trace.hour_of(t)))
            t += _HOUR
        return out

    def forecast(self, zone: str, hours: int = 24) -> list[CarbonReading]:
        """The trace's next ``hours`` hours, marked as forecasts (a perfect forecast)."""
        now = _utc_hour(self._clock())
        return [
            CarbonReading(**{**r.__dict__, "is_forecast": True})
            for r in self.history(zone, now + _HOUR, now + (hours + 1) * _HOUR)
        ]


def from_settings(
    settings: Settings, clock: Callable[[], datetime] = utcnow, zone: str | None = None
) -> TraceProvider:
    """The trace provider: ``settings.carbon_trace``, else the bundled trace of ``zone``
    (default: ``settings.zone``), in ``settings.carbon_column``."""
    return TraceProvider.from_source(
        settings.carbon_trace or zone or settings.zone, settings.carbon_column, clock
    )
