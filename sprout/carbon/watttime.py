"""WattTime API v3: the marginal operating emissions rate (MOER) by grid region.

WattTime's MOER is a *marginal* signal in lbs CO2/MWh; readings convert it to g/kWh and
are marked ``signal_type="marginal"``.

Endpoints used:

- ``GET /login`` with HTTP basic auth -> ``{"token": "..."}``, a bearer token valid for
  30 minutes; it is renewed before it expires and once on a 401.
- ``GET /v3/forecast?region=R&signal_type=co2_moer`` -> ``{"data": [{"point_time",
  "value"}, ...], "meta": {"region", "signal_type", "units", "generated_at",
  "data_point_period_seconds", "warnings", "model"}}``. Its first point is the current
  MOER (WattTime publishes no observed real-time MOER): :meth:`WattTimeProvider.latest`
  returns it, marked estimated.
- ``GET /v3/historical?region=R&start=..&end=..&signal_type=co2_moer`` -> same shape.
- ``GET /v3/signal-index?region=R&signal_type=co2_moer`` -> same shape with
  ``units="percentile"``: where the current MOER sits in the next 24 hours (0-100).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import requests

from sprout.accounting import lbs_per_mwh_to_g_per_kwh
from sprout.carbon.base import CarbonProvider, CarbonReading, utcnow
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

DEFAULT_BASE_URL = "https://api.watttime.org"
#: Where to set the credentials, for error messages (never the values).
CREDENTIALS_SETTING = (
    "watttime_username and watttime_password (environment variables "
    "SPROUT_WATTTIME_USERNAME, SPROUT_WATTTIME_PASSWORD)"
)
#: WattTime tokens expire 30 minutes after login.
TOKEN_LIFETIME_S = 30 * 60.0
#: Log in again this long before the token would expire.
TOKEN_REFRESH_MARGIN_S = 5 * 60.0
MOER_UNITS = "lbs_co2_per_mwh"
#: Longest span one /v3/historical call is asked for.
_HISTORY_CHUNK = timedelta(days=30)


@dataclass(frozen=True)
class SignalIndex:
    """Where the current MOER sits among the next 24 hours' values.

    Attributes:
        zone: the WattTime region.
        percentile: 0 (cleanest) to 100 (dirtiest).
        time: the instant it applies to (UTC).
    """

    zone: str
    percentile: float
    time: datetime


class WattTimeProvider(CarbonProvider):
    """Marginal carbon intensity (MOER) from WattTime v3.

    Args:
        username: WattTime account name.
        password: WattTime password (sent only to ``/login``, as basic auth).
        base_url: the API root (a mirror or a test server).
        signal_type: the WattTime signal (``co2_moer``).
        timeout_s: per-attempt timeout, seconds.
        retries: further attempts after transient failures.
        max_wait_s: longest ``Retry-After`` honoured by waiting.
        session: a ``requests.Session`` to share (default: a new one).
        clock: wall clock (forecast horizon).
        monotonic: clock for the token's lifetime.
        token_lifetime_s: how long a token lives after login.
        refresh_margin_s: log in again this long before the token expires.

    Raises:
        ConfigError: missing credentials (naming the settings) or a bad base URL.
    """

    name = "watttime"

    def __init__(
        self,
        username: str,
        password: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        signal_type: str = "co2_moer",
        timeout_s: float = 5.0,
        retries: int = 2,
        max_wait_s: float = 10.0,
        session: requests.Session | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        token_lifetime_s: float = TOKEN_LIFETIME_S,
        refresh_margin_s: float = TOKEN_REFRESH_MARGIN_S,
    ) -> None:
        if not username or not password:
            raise ConfigError(f"watttime: no credentials; set {CREDENTIALS_SETTING}")
        self._auth = (username, password)
        self.signal_type = signal_type
        self.http = JsonClient(
            self.name,
            base_url,
            timeout_s=timeout_s,
            retries=retries,
            max_wait_s=max_wait_s,
            secrets=(password,),
            session=session,
        )
        self._clock = clock
        self._monotonic = monotonic
        self.token_lifetime_s = float(token_lifetime_s)
        self.refresh_margin_s = float(refresh_margin_s)
        self._token: str | None = None
        self._token_expires_m = 0.0
        self._token_lock = threading.Lock()
        #: Logins performed (for operators' metrics and tests).
        self.logins = 0

    def __repr__(self) -> str:
        return f"WattTimeProvider(base_url={self.http.base_url!r})"

    def latest(self, zone: str) -> CarbonReading:
        """The current MOER for region ``zone``, in g/kWh (the forecast's first point).

        Raises:
            UnknownZoneError: WattTime does not know the region.
            ProviderError: any other failure (auth failures name the settings to fix).
        """
        points, _ = self._series("v3/forecast", zone, {})
        if not points:
            raise ProviderError(self.name, f"the forecast for {zone!r} holds no points")
        return self._reading(points[0], zone, forecast=False)

    def forecast(self, zone: str, hours: int = 24) -> list[CarbonReading]:
        """The MOER forecast for the next ``hours`` hours (at most 72), marked as forecasts."""
        extra = {"horizon_hours": 72} if hours > 24 else {}
        points, _ = self._series("v3/forecast", zone, extra)
        horizon = self._clock() + timedelta(hours=hours)
        readings = [self._reading(p, zone, forecast=True) for p in points]
        return [r for r in readings if r.time <= horizon]

    def history(self, zone: str, start: datetime, end: datetime) -> list[CarbonReading]:
        """Historical MOER in ``[start, end)``, asked for in spans of at most 30 days."""
        out: list[CarbonReading] = []
        t = start
        while t < end:
            stop = min(end, t + _HISTORY_CHUNK)
            params = {"start": t.isoformat(), "end": stop.isoformat()}
            points, _ = self._series("v3/historical", zone, params)
            out.extend(self._reading(p, zone, forecast=False, estimated=False) for p in points)
            t = stop
        return sorted({r.time: r for r in out if start <= r.time < end}.values(), key=_time)

    def signal_index(self, zone: str) -> SignalIndex:
        """Where the current MOER of ``zone`` sits in the next 24 hours (a percentile)."""
        doc = self._data("v3/signal-index", zone, {})
        points = require(doc, "data", self.name, list)
        if not points or not isinstance(points[0], dict):
            raise ProviderError(self.name, f"the signal index for {zone!r} holds no points")
        value = parse_intensity(points[0].get("value"), self.name, "value")
        if value > 100:
            raise ProviderError(self.name, f"signal index {value:g} is not a percentile")
        return SignalIndex(
            zone, value, parse_time(points[0].get("point_time"), self.name, "point_time")
        )

    def close(self) -> None:
        """Release the HTTP session."""
        self.http.close()

    # ------------------------------------------------------------------ internals

    def _series(
        self, path: str, zone: str, extra: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        doc = self._data(path, zone, extra)
        points = require(doc, "data", self.name, list)
        meta = require(doc, "meta", self.name, dict)
        region = meta.get("region")
        if region is not None and region != zone:
            raise ProviderError(self.name, f"asked for region {zone!r} but got {region!r}")
        units = meta.get("units")
        if units != MOER_UNITS:
            raise ProviderError(
                self.name,
                f"{path}: expected MOER in {MOER_UNITS}, got units {units!r}",
            )
        if not all(isinstance(p, dict) for p in points):
            raise ProviderError(self.name, f"{path}: expected an object per data point")
        return points, meta

    def _reading(
        self, point: dict[str, Any], zone: str, *, forecast: bool, estimated: bool = True
    ) -> CarbonReading:
        lbs = parse_intensity(point.get("value"), self.name, "value")
        return CarbonReading(
            zone=zone,
            ci_g_per_kwh=lbs_per_mwh_to_g_per_kwh(lbs),
            time=parse_time(point.get("point_time"), self.name, "point_time"),
            provider=self.name,
            signal_type="marginal",
            emission_factor="direct",
            is_forecast=forecast,
            is_estimated=estimated,
        )

    def _data(self, path: str, zone: str, extra: dict[str, Any]) -> Any:
        params = {"region": zone, "signal_type": self.signal_type, **extra}
        for attempt in range(2):
            token = self._current_token()
            try:
                return self.http.get_json(
                    path, params=params, headers={"Authorization": f"Bearer {token}"}
                )
            except HTTPStatusError as e:
                if e.status == 401 and attempt == 0:
                    # Expired or revoked early: log in again, once.
                    self._forget(token)
                    continue
                raise self._convert(e, zone) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _current_token(self) -> str:
        with self._token_lock:
            now = self._monotonic()
            if self._token is None or now >= self._token_expires_m - self.refresh_margin_s:
                self._token = self._login()
                self._token_expires_m = now + self.token_lifetime_s
            return self._token

    def _forget(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:
                self._token = None

    def _login(self) -> str:
        try:
            doc = self.http.get_json("login", auth=self._auth)
        except HTTPStatusError as e:
            if e.status in (401, 403):
                raise ProviderError(
                    self.name, f"login refused (HTTP {e.status}); check {CREDENTIALS_SETTING}"
                ) from e
            raise
        token = require(doc, "token", self.name, str)
        if not token:
            raise ProviderError(self.name, "login answered an empty token")
        self.http.add_secret(token)
        self.logins += 1
        return token

    def _convert(self, e: HTTPStatusError, zone: str) -> Exception:
        message = self.http.redact(_message(e.body)) or e.text
        if e.status == 401:
            return ProviderError(
                self.name,
                f"a fresh token was refused (HTTP 401); check {CREDENTIALS_SETTING}",
            )
        if e.status == 403:
            return ProviderError(
                self.name,
                f"access to region {zone!r} denied (HTTP 403): your WattTime plan may not "
                f"cover it ({message})",
            )
        if e.status in (400, 404, 422) and "region" in message.lower():
            return UnknownZoneError(
                f"watttime: unknown region {zone!r} (HTTP {e.status}: {message})"
            )
        return e


def _time(reading: CarbonReading) -> datetime:
    return reading.time


def _message(body: Any) -> str:
    """The human message of a WattTime error body (``{"error", "message", "docs"}``)."""
    if isinstance(body, dict):
        parts = [body[k] for k in ("error", "message", "msg") if isinstance(body.get(k), str)]
        return ": ".join(parts)
    return ""


def from_settings(
    settings: Settings, clock: Callable[[], datetime] = utcnow, zone: str | None = None
) -> WattTimeProvider:
    """The WattTime provider with the account and base URL of ``settings``."""
    return WattTimeProvider(
        settings.watttime_username,
        settings.watttime_password,
        base_url=settings.watttime_base_url,
        clock=clock,
        **http_options(settings),
    )
