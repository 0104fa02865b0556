"""Electricity Maps API v3: grid-average carbon intensity by zone (or by coordinates).

Endpoints used, all ``GET`` with the key in the ``auth-token`` header:

- ``/carbon-intensity/latest?zone=Z`` -> ``{"zone", "carbonIntensity", "datetime",
  "updatedAt", "createdAt", "emissionFactorType", "isEstimated", "estimationMethod"}``
- ``/carbon-intensity/history?zone=Z`` -> ``{"zone", "history": [<as latest>, ...]}``
  (the past 24 hours)
- ``/carbon-intensity/forecast?zone=Z`` -> ``{"zone", "forecast": [{"carbonIntensity",
  "datetime"}, ...], "updatedAt"}``

A zone given as ``"LAT,LON"`` (e.g. ``"48.86,2.35"``) is sent as ``lat``/``lon`` and the
readings take the zone the API resolves it to.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import requests

from sprout.carbon.base import CarbonProvider, CarbonReading, EmissionFactor, utcnow
from sprout.carbon.http import (
    HTTPStatusError,
    JsonClient,
    http_options,
    parse_intensity,
    parse_time,
    require,
)
from sprout.errors import ConfigError, ProviderError, UnknownZoneError

if TYPE_CHECKING:
    from sprout.config import Settings

DEFAULT_BASE_URL = "https://api.electricitymaps.com/v3"
#: Where to set the key, for error messages (never the key itself).
KEY_SETTING = "electricitymaps_api_key (environment variable SPROUT_ELECTRICITYMAPS_API_KEY)"
_LATLON = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*$")


class ElectricityMapsProvider(CarbonProvider):
    """Carbon intensity from Electricity Maps v3.

    Args:
        api_key: the Electricity Maps API key (sent as the ``auth-token`` header only).
        base_url: the API root (a self-hosted mirror or a test server).
        emission_factor: ``direct`` or ``lifecycle``: asked for and recorded in readings
            (the response's own ``emissionFactorType`` wins when present).
        timeout_s: per-attempt timeout, seconds.
        retries: further attempts after transient failures.
        max_wait_s: longest ``Retry-After`` honoured by waiting.
        session: a ``requests.Session`` to share (default: a new one).
        clock: wall clock (for which history readings to keep).

    Raises:
        ConfigError: no key (naming the setting), a bad base URL or emission factor.
    """

    name = "electricitymaps"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        emission_factor: EmissionFactor = "direct",
        timeout_s: float = 5.0,
        retries: int = 2,
        max_wait_s: float = 10.0,
        session: requests.Session | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if not api_key or not api_key.strip():
            raise ConfigError(f"electricitymaps: no API key; set {KEY_SETTING}")
        if emission_factor not in ("direct", "lifecycle"):
            raise ConfigError(
                "electricitymaps: emission factor must be 'direct' or 'lifecycle', "
                f"got {emission_factor!r}"
            )
        self._key = api_key.strip()
        self.emission_factor: EmissionFactor = emission_factor
        self.http = JsonClient(
            self.name,
            base_url,
            timeout_s=timeout_s,
            retries=retries,
            max_wait_s=max_wait_s,
            secrets=(self._key,),
            session=session,
        )
        self._clock = clock

    def __repr__(self) -> str:
        return f"ElectricityMapsProvider(base_url={self.http.base_url!r})"

    def latest(self, zone: str) -> CarbonReading:
        """The latest reading for ``zone``.

        Raises:
            UnknownZoneError: the API does not know the zone.
            ProviderError: any other failure (auth failures name the key's setting).
        """
        doc = self._get("carbon-intensity/latest", zone)
        return self._reading(doc, zone, self._answered_zone(doc, zone), "latest")

    def history(self, zone: str, start: datetime, end: datetime) -> list[CarbonReading]:
        """Readings in ``[start, end)`` from the API's history (which covers the past 24 h)."""
        doc = self._get("carbon-intensity/history", zone)
        answered = self._answered_zone(doc, zone)
        items = require(doc, "history", self.name, list)
        out = [self._reading(item, zone, answered, "history") for item in items]
        return sorted((r for r in out if start <= r.time < end), key=lambda r: r.time)

    def forecast(self, zone: str, hours: int = 24) -> list[CarbonReading]:
        """The API's forecast for the next ``hours`` hours, marked as forecasts."""
        doc = self._get("carbon-intensity/forecast", zone)
        answered = self._answered_zone(doc, zone)
        items = require(doc, "forecast", self.name, list)
        horizon = self._clock() + timedelta(hours=hours)
        readings = [self._reading(item, zone, answered, "forecast", True) for item in items]
        return sorted((r for r in readings if r.time <= horizon), key=lambda r: r.time)

    def close(self) -> None:
        """Release the HTTP session."""
        self.http.close()

    # ------------------------------------------------------------------ internals

    def _get(self, path: str, zone: str) -> Any:
        params: dict[str, str] = {"emissionFactorType": self.emission_factor}
        match = _LATLON.match(zone)
        if match:
            params["lat"], params["lon"] = match.group(1), match.group(2)
        else:
            params["zone"] = zone
        try:
            return self.http.get_json(path, params=params, headers={"auth-token": self._key})
        except HTTPStatusError as e:
            raise self._convert(e, zone) from e

    def _convert(self, e: HTTPStatusError, zone: str) -> Exception:
        if e.status in (401, 403):
            return ProviderError(
                self.name,
                f"the API refused the key (HTTP {e.status}); check {KEY_SETTING} and that "
                f"your plan covers zone {zone!r}",
            )
        message = self.http.redact(_message(e.body)) or e.text
        if e.status in (400, 404) and "zone" in message.lower():
            return UnknownZoneError(
                f"electricitymaps: unknown zone {zone!r} (HTTP {e.status}: {message})"
            )
        return e

    def _answered_zone(self, doc: Any, zone: str) -> str:
        answered = require(doc, "zone", self.name, str)
        if not _LATLON.match(zone) and answered != zone:
            raise ProviderError(self.name, f"asked for zone {zone!r} but got {answered!r}")
        return answered

    def _reading(
        self, item: Any, zone: str, answered: str, where: str, forecast: bool = False
    ) -> CarbonReading:
        if not isinstance(item, dict):
            raise ProviderError(self.name, f"{where}: expected an object per reading")
        if "zone" in item and item["zone"] != answered:
            raise ProviderError(self.name, f"{where}: a reading is for zone {item['zone']!r}")
        factor = item.get("emissionFactorType", self.emission_factor)
        if factor not in ("direct", "lifecycle"):
            raise ProviderError(self.name, f"{where}: unknown emissionFactorType {factor!r}")
        return CarbonReading(
            zone=answered if _LATLON.match(zone) else zone,
            ci_g_per_kwh=parse_intensity(item.get("carbonIntensity"), self.name, "carbonIntensity"),
            time=parse_time(item.get("datetime"), self.name, "datetime"),
            provider=self.name,
            signal_type="average",
            emission_factor=factor,
            is_forecast=forecast,
            is_estimated=bool(item.get("isEstimated", False)),
        )


def _message(body: Any) -> str:
    """The human message of an Electricity Maps error body, if it has one."""
    if isinstance(body, dict):
        for key in ("message", "error", "detail"):
            if isinstance(body.get(key), str):
                return body[key]
    return ""


def from_settings(
    settings: Settings, clock: Callable[[], datetime] = utcnow, zone: str | None = None
) -> ElectricityMapsProvider:
    """The Electricity Maps provider with the key, base URL and emission factor of ``settings``."""
    return ElectricityMapsProvider(
        settings.electricitymaps_api_key,
        base_url=settings.electricitymaps_base_url,
        emission_factor=settings.electricitymaps_emission_factor,  # type: ignore[arg-type]
        clock=clock,
        **http_options(settings),
    )
