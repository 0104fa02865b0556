"""Fake Electricity Maps v3, WattTime v3 and GB Carbon Intensity API servers on 127.0.0.1.

Each answers with the response shapes the real APIs document (see the provider modules'
docstrings), computed from its ``value`` and the current time, and can be told to misbehave
for its next requests: time out, drop the connection, answer 5xx or 429 with Retry-After,
malformed or truncated JSON, a body missing a field or naming another zone. Servers run
``http.server`` in a daemon thread, bind an ephemeral port, and stop (waking any request
that is stalling on purpose) when their context exits.

    with ElectricityMapsFake(api_key="k") as em:
        em.fail(Fault.http(503), times=2)
        provider = ElectricityMapsProvider("k", base_url=em.url + "/v3")
"""

from __future__ import annotations

import base64
import json
import math
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

Doc = Any
#: Longest a stalling handler waits (bounded even if a test forgets to stop the server).
MAX_STALL_S = 5.0


@dataclass
class Fault:
    """One misbehaviour for one request.

    Attributes:
        kind: ``stall`` (answer after ``delay_s``), ``reset`` (close without answering),
            ``http`` (``status`` with ``body`` and ``headers``), ``malformed`` (200 with
            broken JSON), ``truncated`` (a body shorter than its Content-Length) or
            ``transform`` (the normal answer passed through ``transform``).
        path: only requests whose path starts with this are affected ("" for any).
    """

    kind: str
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    transform: Callable[[Doc], Doc] | None = None
    path: str = ""

    @classmethod
    def stall(cls, delay_s: float = 1.0, path: str = "") -> Fault:
        return cls("stall", delay_s=delay_s, path=path)

    @classmethod
    def reset(cls, path: str = "") -> Fault:
        return cls("reset", path=path)

    @classmethod
    def http(
        cls, status: int, body: Any = None, headers: dict[str, str] | None = None, path: str = ""
    ) -> Fault:
        return cls("http", status=status, body=body, headers=headers or {}, path=path)

    @classmethod
    def malformed(cls, path: str = "") -> Fault:
        return cls("malformed", path=path)

    @classmethod
    def truncated(cls, path: str = "") -> Fault:
        return cls("truncated", path=path)

    @classmethod
    def edit(cls, transform: Callable[[Doc], Doc], path: str = "") -> Fault:
        return cls("transform", transform=transform, path=path)


@dataclass(frozen=True)
class Seen:
    """A request the server received."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        fake._record(Seen(path, query, {k.lower(): v for k, v in self.headers.items()}))
        fault = fake._next_fault(path)
        if fault is not None and fault.kind == "reset":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.kind == "stall":
            fake._stop.wait(min(fault.delay_s, MAX_STALL_S))
        if fault is not None and fault.kind == "http":
            self._send(fault.status, fault.body, fault.headers)
            return
        if fault is not None and fault.kind == "malformed":
            self._send_raw(200, b'{"zone": "DE", "carbonIntensity": 31', {})
            return
        status, doc = fake.route(path, query, self.headers)
        if fault is not None and fault.kind == "transform" and fault.transform is not None:
            doc = fault.transform(doc)
        if fault is not None and fault.kind == "truncated":
            raw = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw[: len(raw) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(status, doc, {})

    def _send(self, status: int, doc: Any, headers: dict[str, str]) -> None:
        raw = b"" if doc is None else json.dumps(doc).encode()
        self._send_raw(status, raw, headers)

    def _send_raw(self, status: int, raw: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeServer


class FakeServer:
    """Base of the fakes: a threaded HTTP server with scripted faults and a request log."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self.clock = clock or (lambda: datetime.now(UTC))
        self.seen: list[Seen] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- scripting

    def fail(self, fault: Fault, times: int = 1) -> None:
        """Misbehave with ``fault`` for the next ``times`` matching requests."""
        with self._lock:
            self._faults.extend([fault] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def hits(self, prefix: str = "") -> int:
        """Requests received whose path starts with ``prefix``."""
        with self._lock:
            return sum(1 for s in self.seen if s.path.startswith(prefix))

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def _next_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if path.startswith(fault.path):
                    del self._faults[i]
                    return fault
        return None

    def route(self, path: str, query: dict[str, str], headers: Any) -> tuple[int, Doc]:
        raise NotImplementedError


def _iso_z(t: datetime, millis: bool = True) -> str:
    """``2024-05-01T12:00:00.000Z`` (Electricity Maps style)."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (".000Z" if millis else "Z")


def _wave(t: datetime, base: float, amplitude: float) -> float:
    """A smooth daily curve around ``base``, so series differ hour to hour."""
    return round(base + amplitude * math.sin(2 * math.pi * t.hour / 24), 1)


# ------------------------------------------------------------------ Electricity Maps v3


class ElectricityMapsFake(FakeServer):
    """``/v3/carbon-intensity/{latest,history,forecast}`` behind an ``auth-token`` header.

    Attributes:
        value: ``carbonIntensity`` of the latest reading, g/kWh.
        zones: zones it knows (others: 404).
        api_key: the accepted ``auth-token``.
    """

    def __init__(self, api_key: str = "em-test-key", value: float = 250.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.api_key = api_key
        self.value = value
        self.zones = {"DE", "FR", "GB", "US-CAL-CISO"}
        self.latlon_zone = "FR"

    def _hour(self) -> datetime:
        return self.clock().astimezone(UTC).replace(minute=0, second=0, microsecond=0)

    def _entry(self, zone: str, t: datetime, value: float, factor: str) -> dict[str, Any]:
        return {
            "zone": zone,
            "carbonIntensity": value,
            "datetime": _iso_z(t),
            "updatedAt": _iso_z(t + timedelta(minutes=7)),
            "createdAt": _iso_z(t - timedelta(days=2)),
            "emissionFactorType": factor,
            "isEstimated": False,
            "estimationMethod": None,
        }

    def route(self, path: str, query: dict[str, str], headers: Any) -> tuple[int, Doc]:
        if headers.get("auth-token") != self.api_key:
            return 401, {"status": "error", "message": "Invalid authentication token"}
        if "zone" in query:
            zone = query["zone"]
        elif "lat" in query and "lon" in query:
            zone = self.latlon_zone
        else:
            return 400, {"status": "error", "message": "Provide a zone or lat/lon"}
        if zone not in self.zones:
            return 404, {"status": "error", "message": f"Zone '{zone}' does not exist."}
        factor = query.get("emissionFactorType", "lifecycle")
        hour = self._hour()
        if path == "/v3/carbon-intensity/latest":
            entry = self._entry(zone, hour, self.value, factor)
            entry["isEstimated"] = True
            entry["estimationMethod"] = "TIME_SLICER_AVERAGE"
            return 200, entry
        if path == "/v3/carbon-intensity/history":
            history = [
                self._entry(
                    zone,
                    hour - timedelta(hours=h),
                    _wave(hour - timedelta(hours=h), self.value, 40),
                    factor,
                )
                for h in range(24, 0, -1)
            ]
            return 200, {"zone": zone, "history": history}
        if path == "/v3/carbon-intensity/forecast":
            forecast = [
                {
                    "carbonIntensity": _wave(hour + timedelta(hours=h), self.value, 40),
                    "datetime": _iso_z(hour + timedelta(hours=h)),
                }
                for h in range(1, 25)
            ]
            return 200, {"zone": zone, "forecast": forecast, "updatedAt": _iso_z(hour)}
        return 404, {"status": "error", "message": f"Not found: {path}"}


# ------------------------------------------------------------------ WattTime v3


class WattTimeFake(FakeServer):
    """``/login`` (basic auth -> token) and ``/v3/{forecast,historical,signal-index}``.

    Attributes:
        value_lbs_per_mwh: the current MOER (the forecast's first point), lbs/MWh.
        regions: regions it knows (others: 400).
        forbidden: regions the account's plan does not cover (403).
        logins: successful logins.
    """

    def __init__(
        self,
        username: str = "wt-user",
        password: str = "wt-secret-password",
        value_lbs_per_mwh: float = 1000.0,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.username = username
        self.password = password
        self.value_lbs_per_mwh = value_lbs_per_mwh
        self.regions = {"CAISO_NORTH", "PJM_DC"}
        self.forbidden: set[str] = set()
        self.logins = 0
        self._tokens: set[str] = set()
        self.signal_index = 37.0

    def expire_tokens(self) -> None:
        """Invalidate every issued token (as if 30 minutes had passed)."""
        with self._lock:
            self._tokens.clear()

    def _slot(self) -> datetime:
        now = self.clock().astimezone(UTC)
        return now.replace(minute=now.minute - now.minute % 5, second=0, microsecond=0)

    def _meta(self, region: str, units: str) -> dict[str, Any]:
        return {
            "data_point_period_seconds": 300,
            "region": region,
            "warnings": [],
            "signal_type": "co2_moer",
            "model": {"date": "2023-03-01", "type": "binned_regression"},
            "units": units,
        }

    def route(self, path: str, query: dict[str, str], headers: Any) -> tuple[int, Doc]:
        if path == "/login":
            expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            if headers.get("Authorization") != f"Basic {expected}":
                return 401, {"error": "INVALID_CREDENTIALS", "message": "Bad username or password"}
            with self._lock:
                self.logins += 1
                token = f"wt-token-{self.logins}-abcdef"
                self._tokens.add(token)
            return 200, {"token": token}
        auth = headers.get("Authorization", "")
        with self._lock:
            valid = auth.startswith("Bearer ") and auth[7:] in self._tokens
        if not valid:
            return 401, {"error": "UNAUTHORIZED", "message": "Token expired or invalid"}
        region = query.get("region", "")
        if region not in self.regions:
            return 400, {
                "error": "INVALID_REGION",
                "message": f"Invalid region: '{region}'",
                "docs": "https://docs.watttime.org/",
            }
        if region in self.forbidden:
            return 403, {
                "error": "FORBIDDEN",
                "message": "Your account does not have access to this region",
                "docs": "https://docs.watttime.org/",
            }
        slot = self._slot()
        if path == "/v3/forecast":
            points = [
                {
                    "point_time": (slot + timedelta(minutes=5 * i)).isoformat(),
                    "value": self.value_lbs_per_mwh if i == 0 else self.value_lbs_per_mwh + i % 7,
                }
                for i in range(288)
            ]
            meta = self._meta(region, "lbs_co2_per_mwh")
            meta["generated_at_period_seconds"] = 300
            meta["generated_at"] = slot.isoformat()
            return 200, {"data": points, "meta": meta}
        if path == "/v3/historical":
            start = datetime.fromisoformat(query["start"])
            end = datetime.fromisoformat(query["end"])
            points = []
            t = start.replace(minute=start.minute - start.minute % 5, second=0, microsecond=0)
            while t <= end and len(points) < 20_000:
                points.append({"point_time": t.isoformat(), "value": 900.0 + t.minute})
                t += timedelta(minutes=5)
            return 200, {"data": points, "meta": self._meta(region, "lbs_co2_per_mwh")}
        if path == "/v3/signal-index":
            point = {"point_time": slot.isoformat(), "value": self.signal_index}
            return 200, {"data": [point], "meta": self._meta(region, "percentile")}
        return 404, {"error": "NOT_FOUND", "message": path, "docs": ""}


# ------------------------------------------------------------------ GB Carbon Intensity API

REGIONS = {
    3: ("Electricity North West", "North West England"),
    12: ("SSE South", "South England"),
    13: ("UKPN London", "London"),
}
POSTCODES = {"RG10": 12, "SW1A": 13, "M1": 3}


class UKCarbonIntensityFake(FakeServer):
    """``/intensity``, ``/intensity/{from}/fw24h``, ``/intensity/{from}/{to}`` and the
    ``/regional/...`` endpoints by region id and postcode; no key.

    Attributes:
        value: the national ``actual`` of the current half hour (``forecast`` is value + 5).
        regional_value: the regional ``forecast`` of the current half hour.
    """

    def __init__(self, value: float = 180.0, regional_value: float = 120.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.value = value
        self.regional_value = regional_value

    def _half_hour(self, t: datetime) -> datetime:
        t = t.astimezone(UTC)
        return t.replace(minute=0 if t.minute < 30 else 30, second=0, microsecond=0)

    @staticmethod
    def _stamp(t: datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%MZ")

    def _period(self, start: datetime, value: float, actual: float | None, regional: bool) -> dict:
        intensity: dict[str, Any] = {"forecast": value, "index": "moderate"}
        if not regional:
            intensity["actual"] = actual
        period = {
            "from": self._stamp(start),
            "to": self._stamp(start + timedelta(minutes=30)),
            "intensity": intensity,
        }
        if regional:
            period["generationmix"] = [
                {"fuel": "biomass", "perc": 5.1},
                {"fuel": "gas", "perc": 31.4},
                {"fuel": "nuclear", "perc": 15.0},
                {"fuel": "wind", "perc": 38.2},
                {"fuel": "solar", "perc": 10.3},
            ]
        return period

    def _series(self, start: datetime, end: datetime, regional: bool) -> list[dict]:
        now = self._half_hour(self.clock())
        t, out = self._half_hour(start), []
        base = self.regional_value if regional else self.value
        while t < end and len(out) < 2000:
            value = base if t == now else _wave(t, base, 30)
            actual = (value if t == now else value - 2) if t <= now else None
            out.append(self._period(t, value + (0 if regional else 5), actual, regional))
            t += timedelta(minutes=30)
        return out

    @staticmethod
    def _error(message: str) -> tuple[int, Doc]:
        return 400, {"error": {"code": "400 Bad Request", "message": message}}

    def _region(self, kind: str, key: str) -> dict[str, Any] | None:
        if kind == "regionid":
            if not key.isdigit() or int(key) not in REGIONS:
                return None
            rid = int(key)
            extra: dict[str, Any] = {}
        else:
            if key.upper() not in POSTCODES:
                return None
            rid = POSTCODES[key.upper()]
            extra = {"postcode": key.upper()}
        dno, short = REGIONS[rid]
        return {"regionid": rid, "dnoregion": dno, "shortname": short, **extra}

    def route(self, path: str, query: dict[str, str], headers: Any) -> tuple[int, Doc]:
        parts = [p for p in path.split("/") if p]
        now = self._half_hour(self.clock())
        if parts == ["intensity"]:
            return 200, {"data": self._series(now, now + timedelta(minutes=1), False)}
        if len(parts) == 3 and parts[0] == "intensity":
            start = self._parse(parts[1])
            if start is None:
                return self._error("Please enter a valid ISO 8601 datetime")
            if parts[2] in ("fw24h", "fw48h"):
                hours = 24 if parts[2] == "fw24h" else 48
                return 200, {"data": self._series(start, start + timedelta(hours=hours), False)}
            end = self._parse(parts[2])
            if end is None or end - start > timedelta(days=14):
                return self._error("Please enter a valid date range (max 14 days)")
            return 200, {"data": self._series(start, end, False)}
        if len(parts) == 3 and parts[0] == "regional" and parts[1] in ("regionid", "postcode"):
            region = self._region(parts[1], parts[2])
            if region is None:
                return self._error(f"Please enter a valid {parts[1]}")
            region["data"] = self._series(now, now + timedelta(minutes=1), True)
            return 200, {"data": [region]}
        if len(parts) == 6 and parts[:2] == ["regional", "intensity"]:
            start = self._parse(parts[2])
            region = self._region(parts[4], parts[5])
            if start is None or region is None:
                return self._error("Please enter a valid datetime, region id or postcode")
            if parts[3] in ("fw24h", "fw48h"):
                end = start + timedelta(hours=24 if parts[3] == "fw24h" else 48)
            else:
                end = self._parse(parts[3])
                if end is None:
                    return self._error("Please enter a valid datetime")
            region["data"] = self._series(start, end, True)
            return 200, {"data": region}
        return 404, {"error": {"code": "404 Not Found", "message": f"No route {path}"}}

    @staticmethod
    def _parse(text: str) -> datetime | None:
        try:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
