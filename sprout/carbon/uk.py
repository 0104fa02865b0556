"""The GB Carbon Intensity API (National Grid ESO, ``api.carbonintensity.org.uk``): no key.

Zones:

- ``GB`` (or ``national``): national intensity. ``/intensity`` -> ``{"data": [{"from",
  "to", "intensity": {"forecast", "actual", "index"}}]}``; the outturn ``actual`` is used
  when published, else the ``forecast`` (then the reading is marked estimated).
- ``region:N`` (N = 1-18, the API's region ids): ``/regional/regionid/N`` -> ``{"data":
  [{"regionid", "dnoregion", "shortname", "data": [{"from", "to", "intensity":
  {"forecast", "index"}, "generationmix": [...]}]}]}``. Regional values are modelled, so
  readings are marked estimated.
- ``postcode:OUTWARD`` (e.g. ``postcode:RG10``): ``/regional/postcode/RG10``, same shape
  plus ``"postcode"``.

Forecasts: ``/intensity/{from}/fw24h`` (national, ``{"data": [...]}``) and
``/regional/intensity/{from}/fw24h/regionid/N`` or ``.../postcode/P`` (regional, where
``data`` is one object holding ``"data": [...]``). Half-hour periods; the reading's time is
the period's start.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests

from sprout.carbon.base import CarbonProvider, CarbonReading, utcnow
from sprout.carbon.http import (
    HTTPStatusError,
    JsonClient,
    http_options,
    parse_intensity,
    parse_time,
    require,
)
from sprout.errors import ProviderError, UnknownZoneError

if TYPE_CHECKING:
    from sprout.config import Settings

DEFAULT_BASE_URL = "https://api.carbonintensity.org.uk"
REGION_IDS = range(1, 19)
_POSTCODE = re.compile(r"^[A-Z]{1,2}[0-9][0-9A-Z]?$")
#: Longest span one history call is asked for (the API refuses longer ranges).
_HISTORY_CHUNK = timedelta(days=14)
_HALF_HOUR = timedelta(minutes=30)


@dataclass(frozen=True)
class UKZone:
    """A parsed UK zone: ``kind`` is ``national``, ``region`` or ``postcode``."""

    kind: str
    key: str = ""

    @property
    def path_suffix(self) -> str:
        """The ``/regionid/N`` or ``/postcode/P`` path tail of regional endpoints."""
        return f"/{'regionid' if self.kind == 'region' else 'postcode'}/{quote(self.key)}"


def parse_zone(zone: str) -> UKZone:
    """``GB``/``national``, ``region:N`` or ``postcode:OUTWARD`` as a :class:`UKZone`.

    Raises:
        UnknownZoneError: naming the accepted forms.
    """
    text = zone.strip()
    if text.upper() in ("GB", "NATIONAL"):
        return UKZone("national")
    kind, _, key = text.partition(":")
    kind, key = kind.strip().lower(), key.strip()
    if kind == "region" and key.isdigit() and int(key) in REGION_IDS:
        return UKZone("region", str(int(key)))
    if kind == "postcode" and _POSTCODE.match(key.upper().split()[0] if key else ""):
        return UKZone("postcode", key.upper().split()[0])
    raise UnknownZoneError(
        f"uk: unknown zone {zone!r}; use GB (national), region:N with N in 1-18, or "
        "postcode:OUTWARD such as postcode:RG10"
    )


class UKCarbonIntensityProvider(CarbonProvider):
    """GB grid carbon intensity from the National Grid ESO Carbon Intensity API.

    Args:
        base_url: the API root (a mirror or a test server).
        timeout_s: per-attempt timeout, seconds.
        retries: further attempts after transient failures.
        max_wait_s: longest ``Retry-After`` honoured by waiting.
        session: a ``requests.Session`` to share (default: a new one).
        clock: wall clock (the ``{from}`` of forecasts).
    """

    name = "uk"

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 5.0,
        retries: int = 2,
        max_wait_s: float = 10.0,
        session: requests.Session | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.http = JsonClient(
            self.name,
            base_url,
            timeout_s=timeout_s,
            retries=retries,
            max_wait_s=max_wait_s,
            session=session,
        )
        self._clock = clock

    def __repr__(self) -> str:
        return f"UKCarbonIntensityProvider(base_url={self.http.base_url!r})"

    def latest(self, zone: str) -> CarbonReading:
        """The current half hour's intensity for ``zone``.

        Raises:
            UnknownZoneError: a zone not in the accepted forms, or one the API refuses.
            ProviderError: any other failure.
        """
        where = parse_zone(zone)
        if where.kind == "national":
            periods = require(self._get("intensity", zone), "data", self.name, list)
        else:
            path = f"regional{where.path_suffix}"
            regions = require(self._get(path, zone), "data", self.name, list)
            if not regions:
                raise ProviderError(self.name, f"{path}: no region in the answer")
            periods = self._regional_periods(regions[0], where)
        if not periods:
            raise ProviderError(self.name, f"no intensity period for zone {zone!r}")
        return self._reading(periods[0], zone, forecast=False)

    def forecast(self, zone: str, hours: int = 24) -> list[CarbonReading]:
        """Half-hourly forecasts from the current period for ``hours`` hours (24 or 48 asked)."""
        where = parse_zone(zone)
        now = self._clock().astimezone(UTC)
        span = "fw48h" if hours > 24 else "fw24h"
        start = _stamp(now)
        if where.kind == "national":
            periods = require(self._get(f"intensity/{start}/{span}", zone), "data", self.name, list)
        else:
            path = f"regional/intensity/{start}/{span}{where.path_suffix}"
            periods = self._regional_periods(
                require(self._get(path, zone), "data", self.name, dict), where
            )
        horizon = now + timedelta(hours=hours)
        readings = [self._reading(p, zone, forecast=True) for p in periods]
        return [r for r in readings if now - _HALF_HOUR < r.time <= horizon]

    def history(self, zone: str, start: datetime, end: datetime) -> list[CarbonReading]:
        """Half-hourly readings in ``[start, end)``, asked for in spans of at most 14 days."""
        where = parse_zone(zone)
        out: dict[datetime, CarbonReading] = {}
        t = start
        while t < end:
            stop = min(end, t + _HISTORY_CHUNK)
            if where.kind == "national":
                doc = self._get(f"intensity/{_stamp(t)}/{_stamp(stop)}", zone)
                periods = require(doc, "data", self.name, list)
            else:
                path = f"regional/intensity/{_stamp(t)}/{_stamp(stop)}{where.path_suffix}"
                periods = self._regional_periods(
                    require(self._get(path, zone), "data", self.name, dict), where
                )
            for period in periods:
                reading = self._reading(period, zone, forecast=False)
                if start <= reading.time < end:
                    out[reading.time] = reading
            t = stop
        return [out[k] for k in sorted(out)]

    def close(self) -> None:
        """Release the HTTP session."""
        self.http.close()

    # ------------------------------------------------------------------ internals

    def _get(self, path: str, zone: str) -> Any:
        try:
            return self.http.get_json(path, headers={"Accept": "application/json"})
        except HTTPStatusError as e:
            message = _message(e.body) or e.text
            if e.status == 400:  # the API's answer to an unknown region id or postcode
                raise UnknownZoneError(
                    f"uk: the API refused zone {zone!r} (HTTP {e.status}: {message})"
                ) from e
            raise

    def _regional_periods(self, region: Any, where: UKZone) -> list[Any]:
        if not isinstance(region, dict):
            raise ProviderError(self.name, "expected an object per region")
        if where.kind == "region":
            got = region.get("regionid")
            if str(got) != where.key:
                raise ProviderError(self.name, f"asked for region {where.key} but got {got!r}")
        else:
            got = region.get("postcode")
            if not isinstance(got, str) or got.upper() != where.key:
                raise ProviderError(self.name, f"asked for postcode {where.key} but got {got!r}")
        return require(region, "data", self.name, list)

    def _reading(self, period: Any, zone: str, *, forecast: bool) -> CarbonReading:
        intensity = require(period, "intensity", self.name, dict)
        actual = None if forecast else intensity.get("actual")
        if actual is not None:
            value = parse_intensity(actual, self.name, "intensity.actual")
        else:
            value = parse_intensity(intensity.get("forecast"), self.name, "intensity.forecast")
        return CarbonReading(
            zone=zone,
            ci_g_per_kwh=value,
            time=parse_time(period.get("from"), self.name, "from"),
            provider=self.name,
            signal_type="average",
            emission_factor="direct",
            is_forecast=forecast,
            is_estimated=actual is None,
        )


def _stamp(when: datetime) -> str:
    """The API's path timestamp: ISO 8601 to the minute, UTC, e.g. ``2024-05-01T12:00Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def _message(body: Any) -> str:
    """The message of an API error body (``{"error": {"code", "message"}}``)."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return ": ".join(str(err[k]) for k in ("code", "message") if err.get(k) is not None)
    return ""


def from_settings(
    settings: Settings, clock: Callable[[], datetime] = utcnow, zone: str | None = None
) -> UKCarbonIntensityProvider:
    """The GB Carbon Intensity provider at ``settings.uk_base_url``."""
    return UKCarbonIntensityProvider(
        base_url=settings.uk_base_url, clock=clock, **http_options(settings)
    )
