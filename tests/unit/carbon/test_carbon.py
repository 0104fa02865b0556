"""Carbon readings, the trace and static providers, and the cached carbon signal."""

from __future__ import annotations

import csv
import gzip
import logging
import math
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sprout.carbon.base import CarbonProvider, CarbonReading
from sprout.carbon.signal import CarbonSignal, SignalReading
from sprout.carbon.static import StaticProvider
from sprout.carbon.trace import TraceProvider, load_trace
from sprout.data import carbon_trace_path
from sprout.errors import (
    ConfigError,
    ProviderError,
    TraceError,
    UnknownZoneError,
)
from tests.support.clock import FakeClock

UTC = UTC
ZONES = ("GB", "US-CAL-CISO", "US-TEX-ERCO")
HEADER = "datetime_utc,zone,ci_direct,ci_lca\n"


def _rows(zone: str) -> list[dict[str, str]]:
    with gzip.open(carbon_trace_path(zone), "rt", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def gb_rows() -> list[dict[str, str]]:
    return _rows("GB")


@pytest.fixture(scope="module")
def gb_trace():
    return load_trace("GB")


def _csv(tmp_path, body: str, name: str = "trace.csv"):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


GOOD = (
    HEADER + "2023-01-01 00:00:00,XX,100,150\n"
    "2023-01-01 01:00:00,XX,110.5,160\n"
    "2023-01-01 02:00:00,XX,0,10\n"
)


# --- traces -------------------------------------------------------------------------------


@pytest.mark.parametrize("zone", ZONES)
def test_bundled_zones_load_a_full_year(zone):
    trace = load_trace(zone)
    rows = _rows(zone)
    assert trace.zone == zone
    assert len(trace) == 8760
    assert trace.start == datetime(2023, 1, 1, tzinfo=UTC)
    assert trace.time_of(8759) == datetime(2023, 12, 31, 23, tzinfo=UTC)
    assert trace.column == "ci_direct"
    assert trace.ci_g_per_kwh[0] == float(rows[0]["ci_direct"])
    assert trace.ci_g_per_kwh[-1] == float(rows[-1]["ci_direct"])


def test_lca_column(gb_rows):
    trace = load_trace("GB", column="ci_lca")
    assert trace.column == "ci_lca"
    assert trace.ci_g_per_kwh[1] == float(gb_rows[1]["ci_lca"])
    assert trace.ci_g_per_kwh[1] != float(gb_rows[1]["ci_direct"])
    provider = TraceProvider(trace, clock=lambda: datetime(2023, 1, 1, 1, tzinfo=UTC))
    assert provider.latest("GB").emission_factor == "lifecycle"


def test_unknown_column_rejected():
    with pytest.raises(TraceError, match="column must be one of"):
        load_trace("GB", column="ci_marginal")


def test_csv_path_and_gz(tmp_path):
    plain = _csv(tmp_path, GOOD)
    gz = tmp_path / "trace.csv.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.write(GOOD)
    for path in (plain, str(gz)):
        trace = load_trace(path)
        assert trace.zone == "XX"
        assert list(trace.ci_g_per_kwh) == [100.0, 110.5, 0.0]
        assert trace.source == str(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        load_trace(tmp_path / "absent.csv")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (
            "datetime_utc,zone,ci_direct\n2023-01-01 00:00:00,XX,1\n",
            r"missing column\(s\) ci_lca",
        ),
        (
            HEADER + "2023-01-01 00:00:00,XX,1,1\n2023-01-01 02:00:00,XX,1,1\n",
            r"trace\.csv:3: a gap in datetime_utc",
        ),
        (
            HEADER + "2023-01-01 00:00:00,XX,1,1\n2023-01-01 00:00:00,XX,1,1\n",
            r"trace\.csv:3: a repeated or out-of-order hour",
        ),
        (
            HEADER + "2023-01-01 00:00:00,XX,1,1\n2023-01-01 01:00:00,XX,n/a,1\n",
            r"trace\.csv:3: ci_direct is not a number: 'n/a'",
        ),
        (
            HEADER + "2023-01-01 00:00:00,XX,-5,1\n",
            r"trace\.csv:2: ci_direct must be a finite number >= 0, got '-5'",
        ),
        (HEADER + "2023-01-01 00:00:00,XX,nan,1\n", r"trace\.csv:2: .*finite"),
        (HEADER + "yesterday,XX,1,1\n", r"trace\.csv:2: datetime_utc is not a date-time"),
        ("", r"trace\.csv: empty file"),
        (HEADER, r"trace\.csv: no data rows"),
        (
            HEADER + "2023-01-01 00:00:00,XX,1,1\n2023-01-01 01:00:00,YY,1,1\n",
            r"expected one zone, found \['XX', 'YY'\]",
        ),
    ],
    ids=[
        "missing-column",
        "gap",
        "repeated-hour",
        "non-numeric",
        "negative",
        "nan",
        "bad-time",
        "empty-file",
        "header-only",
        "two-zones",
    ],
)
def test_bad_csv_names_the_problem(tmp_path, body, match):
    path = _csv(tmp_path, body)
    with pytest.raises(TraceError, match=match):
        load_trace(path)


def test_not_gzip_raises_trace_error(tmp_path):
    path = _csv(tmp_path, GOOD, name="trace.csv.gz")
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(path)


def test_window(gb_trace):
    assert list(gb_trace.window(8758, 2)) == list(gb_trace.ci_g_per_kwh[8758:])
    with pytest.raises(TraceError, match="does not fit a trace of 8760 h"):
        gb_trace.window(8000, 761)
    with pytest.raises(TraceError):
        gb_trace.window(-1, 5)
    with pytest.raises(TraceError):
        gb_trace.window(0, 0)


# --- trace provider -------------------------------------------------------------------------


def test_trace_latest_is_the_clock_hours_row(gb_trace, gb_rows):
    row = gb_rows[5000]
    hour = datetime.fromisoformat(row["datetime_utc"]).replace(tzinfo=UTC)
    provider = TraceProvider(gb_trace, clock=lambda: hour + timedelta(minutes=37, seconds=5))
    reading = provider.latest("GB")
    assert reading.ci_g_per_kwh == float(row["ci_direct"])
    assert reading.time == hour
    assert reading.zone == "GB"
    assert reading.provider == "trace"
    assert reading.emission_factor == "direct"
    assert not reading.is_forecast
    assert not reading.is_estimated


def test_trace_wraps_for_a_later_year(gb_trace, gb_rows):
    # 2023-01-01 to 2026-01-01 is 1096 days; 1096 * 24 = 26304 h = 3 * 8760 + 24, so the
    # trace length wraps 2026-01-01 00:00 onto trace hour 24 (2023-01-02 00:00).
    when = datetime(2026, 1, 1, 0, 20, tzinfo=UTC)
    reading = TraceProvider(gb_trace, clock=lambda: when).latest("GB")
    assert gb_rows[24]["datetime_utc"] == "2023-01-02 00:00:00"
    assert reading.ci_g_per_kwh == float(gb_rows[24]["ci_direct"])
    assert reading.time == datetime(2026, 1, 1, tzinfo=UTC)
    # and before the trace starts
    before = TraceProvider(gb_trace).at("GB", datetime(2022, 12, 31, 23, 59, tzinfo=UTC))
    assert before.ci_g_per_kwh == float(gb_rows[-1]["ci_direct"])


def test_trace_non_utc_clock_gives_the_utc_hour(gb_trace, gb_rows):
    india = timezone(timedelta(hours=5, minutes=30))
    when = datetime(2023, 1, 1, 12, 45, tzinfo=india)  # 07:15 UTC
    reading = TraceProvider(gb_trace).at("GB", when)
    assert reading.ci_g_per_kwh == float(gb_rows[7]["ci_direct"])
    assert reading.time == datetime(2023, 1, 1, 7, tzinfo=UTC)
    # history in a half-hour zone starts at the next whole UTC hour: 07:00 UTC
    history = TraceProvider(gb_trace).history("GB", when, when + timedelta(hours=2))
    assert [r.time.hour for r in history] == [8, 9]
    assert history[0].ci_g_per_kwh == float(gb_rows[8]["ci_direct"])


def test_trace_history_length_and_order(gb_trace, gb_rows):
    provider = TraceProvider(gb_trace)
    start = datetime(2023, 3, 1, 10, 30, tzinfo=UTC)  # first whole hour inside: 11:00
    readings = provider.history("GB", start, datetime(2023, 3, 1, 16, tzinfo=UTC))
    times = [r.time for r in readings]
    assert times == [datetime(2023, 3, 1, h, tzinfo=UTC) for h in range(11, 16)]
    first = (59 + 0) * 24 + 11  # Jan + Feb = 59 days
    assert [r.ci_g_per_kwh for r in readings] == [
        float(gb_rows[first + i]["ci_direct"]) for i in range(5)
    ]
    assert provider.history("GB", start, start) == []


def test_trace_forecast_is_flagged(gb_trace, gb_rows):
    now = datetime(2023, 6, 10, 8, 15, tzinfo=UTC)
    provider = TraceProvider(gb_trace, clock=lambda: now)
    forecast = provider.forecast("GB", hours=3)
    assert [r.time.hour for r in forecast] == [9, 10, 11]
    assert all(r.is_forecast for r in forecast)
    base = (datetime(2023, 6, 10, 9, tzinfo=UTC) - gb_trace.start) // timedelta(hours=1)
    assert [r.ci_g_per_kwh for r in forecast] == [
        float(gb_rows[base + i]["ci_direct"]) for i in range(3)
    ]
    assert not provider.latest("GB").is_forecast


def test_trace_unknown_zone(gb_trace):
    provider = TraceProvider(gb_trace)
    for call in (
        lambda: provider.latest("FR"),
        lambda: provider.history("FR", gb_trace.start, gb_trace.time_of(3)),
        lambda: provider.forecast("FR"),
    ):
        with pytest.raises(UnknownZoneError, match="'FR'"):
            call()


def test_trace_from_source_bundled_zone():
    provider = TraceProvider.from_source(
        "US-TEX-ERCO", clock=lambda: datetime(2023, 1, 1, tzinfo=UTC)
    )
    assert provider.latest("US-TEX-ERCO").ci_g_per_kwh == 269.82


# --- readings -------------------------------------------------------------------------------

NOON = datetime(2023, 5, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ci_g_per_kwh": -1.0}, ">= 0"),
        ({"ci_g_per_kwh": math.nan}, "finite"),
        ({"ci_g_per_kwh": math.inf}, "finite"),
        ({"time": datetime(2023, 5, 1, 12)}, "timezone-aware"),
        ({"signal_type": "mean"}, "signal_type"),
        ({"emission_factor": "scope3"}, "emission_factor"),
    ],
)
def test_reading_validation(kwargs, match):
    fields = {"zone": "GB", "ci_g_per_kwh": 100.0, "time": NOON, "provider": "x", **kwargs}
    with pytest.raises(ValueError, match=match):
        CarbonReading(**fields)


def test_reading_age():
    reading = CarbonReading("GB", 100.0, NOON, "x")
    assert reading.age_s(NOON + timedelta(minutes=2)) == 120.0
    assert reading.age_s(NOON - timedelta(minutes=2)) == 0.0


# --- static provider ------------------------------------------------------------------------


def test_static_any_zone_current_hour():
    provider = StaticProvider(250, clock=lambda: datetime(2024, 2, 3, 4, 55, 6, tzinfo=UTC))
    reading = provider.latest("FR")
    assert reading == CarbonReading(
        zone="FR",
        ci_g_per_kwh=250.0,
        time=datetime(2024, 2, 3, 4, tzinfo=UTC),
        provider="static",
        is_estimated=True,
    )
    assert provider.latest("GB").zone == "GB"
    assert provider.history("GB", NOON, NOON + timedelta(hours=3)) == []


def test_static_single_zone_and_options():
    provider = StaticProvider(
        0,
        zone="GB",
        signal_type="marginal",
        emission_factor="lifecycle",
        clock=lambda: NOON,
    )
    reading = provider.latest("GB")
    assert (reading.ci_g_per_kwh, reading.signal_type, reading.emission_factor) == (
        0.0,
        "marginal",
        "lifecycle",
    )
    with pytest.raises(UnknownZoneError, match=r"'FR'.*'GB'"):
        provider.latest("FR")


def test_static_default_clock_is_now():
    reading = StaticProvider(100).latest("GB")
    now = datetime.now(UTC)
    assert timedelta(0) <= now - reading.time < timedelta(hours=1, seconds=5)
    assert reading.time.minute == reading.time.second == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((-1,), {}, "ci_g_per_kwh must be a finite number >= 0"),
        ((math.nan,), {}, "ci_g_per_kwh must be a finite number >= 0"),
        ((math.inf,), {}, "ci_g_per_kwh must be a finite number >= 0"),
        (("400",), {}, "ci_g_per_kwh must be a number"),
        ((True,), {}, "ci_g_per_kwh must be a number"),
        ((100,), {"zone": ""}, "zone"),
        ((100,), {"signal_type": "avg"}, "signal_type"),
        ((100,), {"emission_factor": "x"}, "emission_factor"),
    ],
)
def test_static_validation(args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        StaticProvider(*args, **kwargs)


# --- carbon signal --------------------------------------------------------------------------


class FakeProvider(CarbonProvider):
    """Counts calls; returns ``value`` stamped at ``when``, or raises ``error`` if set."""

    name = "fake"

    def __init__(self, value: float = 123.0, when: datetime = NOON) -> None:
        self.value = value
        self.when = when
        self.calls = 0
        self.error: Exception | None = None

    def latest(self, zone: str) -> CarbonReading:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return CarbonReading(zone, self.value, self.when, self.name)


def _clock(start: datetime = NOON) -> FakeClock:
    """Wall time from ``start``, monotonic time from 1000 s, moved together by the test."""
    return FakeClock(start, monotonic_start=1000.0)


def _signal(provider, clock, **kwargs) -> CarbonSignal:
    kwargs.setdefault("refresh_s", 300)
    return CarbonSignal(provider, "GB", clock=clock.now, monotonic=clock.monotonic, **kwargs)


def test_signal_caches_within_refresh_and_refreshes_after():
    provider, clock = FakeProvider(), _clock()
    signal = _signal(provider, clock)
    first = signal.read()
    assert first == SignalReading(CarbonReading("GB", 123.0, NOON, "fake"), 0.0, "provider")
    provider.value = 200.0
    for _ in range(50):
        clock.advance(6)  # 300 s in all: not yet *more* than refresh_s
        got = signal.read()
        assert got.fallback == "provider" and got.reading.ci_g_per_kwh == 123.0
    assert provider.calls == 1
    assert got.age_s == 300.0
    clock.advance(1)
    got = signal.read()
    assert provider.calls == 2
    assert got.reading.ci_g_per_kwh == 200.0
    assert got.fallback == "provider" and got.error is None
    assert signal.last_good is got.reading


@pytest.mark.parametrize(
    "error", [ProviderError("fake", "HTTP 503 from upstream"), RuntimeError("socket closed")]
)
def test_signal_falls_back_to_cache(error, caplog):
    provider, clock = FakeProvider(), _clock()
    signal = _signal(provider, clock)
    good = signal.read().reading
    clock.advance(301)
    provider.error = error
    with caplog.at_level(logging.WARNING, logger="sprout.carbon"):
        got = signal.read()
    assert got.fallback == "cache"
    assert got.reading is good
    assert got.age_s == 301.0
    assert got.error == str(error)
    warnings = [r for r in caplog.records if r.name == "sprout.carbon"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert str(error) in warnings[0].getMessage()
    # the provider recovers: the next due read is fresh again, with no error
    provider.error = None
    provider.value = 50.0
    clock.advance(30)
    got = signal.read()
    assert (got.fallback, got.error, got.reading.ci_g_per_kwh) == ("provider", None, 50.0)


def test_signal_default_when_no_good_reading():
    provider, clock = FakeProvider(), _clock()
    provider.error = ProviderError("fake", "connection refused")
    signal = _signal(provider, clock, default_ci_g_per_kwh=321.0)
    got = signal.read()
    assert got.fallback == "default"
    assert got.error == "fake: connection refused"
    assert got.age_s == 0.0
    assert got.reading == CarbonReading("GB", 321.0, NOON, "default", is_estimated=True)
    assert signal.last_good is None


def test_signal_default_when_last_good_is_too_old():
    provider, clock = FakeProvider(), _clock()
    signal = _signal(provider, clock, max_age_s=3600)
    signal.read()
    provider.error = ProviderError("fake", "down")
    clock.advance(3600)  # exactly max_age_s old: still served
    assert signal.read().fallback == "cache"
    clock.advance(31)
    got = signal.read()
    assert got.fallback == "default"
    assert got.reading.ci_g_per_kwh == 400.0
    assert got.reading.time == clock.t
    assert got.error == "fake: down"


def test_signal_age_is_measured_from_the_readings_time():
    # the provider's reading is 40 minutes old when fetched: age counts from its timestamp
    provider, clock = FakeProvider(when=NOON), _clock(NOON + timedelta(minutes=40))
    signal = _signal(provider, clock, max_age_s=3000)
    assert signal.read().age_s == 2400.0
    provider.error = RuntimeError("x")
    clock.advance(601)  # 3001 s old now
    assert signal.read().fallback == "default"


def test_signal_backs_off_after_failure():
    provider, clock = FakeProvider(), _clock()
    provider.error = RuntimeError("down")
    signal = _signal(provider, clock)  # back-off min(300, 30) = 30 s
    for _ in range(10):
        signal.read()
        clock.advance(2.9)
    assert provider.calls == 1  # 29 s after the failure
    clock.advance(1)
    signal.read()
    assert provider.calls == 2
    # a short refresh interval shortens the back-off too
    fast_provider = FakeProvider()
    fast_provider.error = RuntimeError("down")
    fast = _signal(fast_provider, clock, refresh_s=5)
    fast.read()
    clock.advance(4.9)
    fast.read()
    assert fast_provider.calls == 1
    clock.advance(0.1)
    fast.read()
    assert fast_provider.calls == 2


def test_signal_failure_after_success_retries_after_backoff_not_refresh():
    provider, clock = FakeProvider(), _clock()
    signal = _signal(provider, clock, refresh_s=600)
    signal.read()
    clock.advance(601)
    provider.error = RuntimeError("down")
    assert signal.read().fallback == "cache"
    provider.error = None
    clock.advance(30)
    assert signal.read().fallback == "provider"
    assert provider.calls == 3


def test_signal_prime_seeds_the_fallback():
    provider, clock = FakeProvider(), _clock()
    provider.error = RuntimeError("down")
    signal = _signal(provider, clock)
    older = CarbonReading("GB", 90.0, NOON - timedelta(hours=2), "trace")
    newer = CarbonReading("GB", 80.0, NOON - timedelta(hours=1), "trace")
    signal.prime([newer, older])
    assert signal.last_good is newer
    signal.prime([older])  # older than what is held: ignored
    assert signal.last_good is newer
    signal.prime([])
    got = signal.read()
    assert provider.calls == 1  # priming does not stand in for asking the provider
    assert (got.fallback, got.reading, got.age_s) == ("cache", newer, 3600.0)
    with pytest.raises(ValueError, match="'FR'"):
        signal.prime([CarbonReading("FR", 1.0, NOON, "trace")])


def test_signal_rejects_a_provider_returning_garbage():
    class Broken(FakeProvider):
        def latest(self, zone):
            self.calls += 1
            return 42.0

    signal = _signal(Broken(), _clock())
    got = signal.read()
    assert got.fallback == "default"
    assert "not a CarbonReading" in (got.error or "")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"refresh_s": -1}, "refresh_s"),
        ({"refresh_s": math.nan}, "refresh_s"),
        ({"max_age_s": -1}, "max_age_s"),
        ({"default_ci_g_per_kwh": -1}, "default_ci_g_per_kwh"),
        ({"default_ci_g_per_kwh": math.inf}, "default_ci_g_per_kwh"),
    ],
)
def test_signal_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CarbonSignal(FakeProvider(), "GB", **kwargs)
    with pytest.raises(ConfigError, match="zone"):
        CarbonSignal(FakeProvider(), "")


def test_signal_one_refresh_for_concurrent_readers():
    class Slow(FakeProvider):
        def latest(self, zone):
            time.sleep(0.05)
            return super().latest(zone)

    provider = Slow()
    signal = CarbonSignal(provider, "GB", clock=lambda: NOON)
    results: list[SignalReading] = []
    barrier = threading.Barrier(16)

    def reader():
        barrier.wait()
        results.append(signal.read())

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert provider.calls == 1
    assert len(results) == 16
    assert all(r.fallback == "provider" and r.reading.ci_g_per_kwh == 123.0 for r in results)


def test_signal_over_a_real_trace_provider(gb_trace, gb_rows):
    clock = _clock(datetime(2023, 1, 1, 0, 50, tzinfo=UTC))
    signal = _signal(TraceProvider(gb_trace, clock=clock.now), clock)
    assert signal.read().reading.ci_g_per_kwh == float(gb_rows[0]["ci_direct"])
    clock.advance(600)  # 01:00 passed and refresh is due
    assert signal.read().reading.ci_g_per_kwh == float(gb_rows[1]["ci_direct"])
