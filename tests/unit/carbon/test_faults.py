"""Every fault a carbon API can produce, through the real controller: the request still
completes, its receipt records which layer served the carbon intensity, and none is lost.

The controller is built by ``build_controller`` over the bundled replay engine, with
Electricity Maps (or WattTime) as the provider and the GB Carbon Intensity API as the
fallback, both fake servers on 127.0.0.1 sharing the test's clock. Polling is off here so
that each request refreshes the signal and meets the fault itself (the poller has its own
tests); back-off sleeps are recorded, not slept.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sprout.carbon.base import CarbonProvider, CarbonReading
from sprout.carbon.http import RateLimitedError
from sprout.carbon.signal import CarbonSignal
from sprout.config import load_settings
from sprout.errors import ProviderError
from sprout.factory import build_controller
from tests.support.clock import FakeClock
from tests.support.fake_carbon_servers import (
    ElectricityMapsFake,
    Fault,
    UKCarbonIntensityFake,
    WattTimeFake,
)
from tests.support.servers import free_port

EM_KEY = "em-SECRET-key-4242"
WT_USER, WT_PASSWORD = "wt-user", "wt-SECRET-password-77"
LATEST = "/v3/carbon-intensity/latest"
STEP_S = 61.0  # past the 60 s refresh interval and the 30 s retry interval


#: Requests to 127.0.0.1 must not be sent to a proxy named in the environment.
pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
def clock() -> FakeClock:
    # A fixed start a few minutes past the hour: ages measured from the hour's reading
    # must not depend on when the suite happens to run.
    return FakeClock(datetime(2026, 3, 10, 12, 5, tzinfo=UTC), monotonic_start=1000.0)


@pytest.fixture
def em(clock):
    with ElectricityMapsFake(api_key=EM_KEY, clock=clock.now) as server:
        yield server


@pytest.fixture
def uk(clock):
    with UKCarbonIntensityFake(clock=clock.now) as server:
        yield server


@pytest.fixture
def wt(clock):
    with WattTimeFake(username=WT_USER, password=WT_PASSWORD, clock=clock.now) as server:
        yield server


class Harness:
    """A controller over fake servers that counts what it sends and what lands."""

    def __init__(self, controller, clock: FakeClock, prompts) -> None:
        self.controller = controller
        self.clock = clock
        self.prompts = prompts
        self.sent = 0
        self.results = []
        self.sleeps: list[float] = []
        for provider in (controller.signal.provider, controller.signal.secondary):
            if provider is not None and hasattr(provider, "http"):
                provider.http.sleep = self.sleeps.append

    def ask(self):
        self.clock.advance(STEP_S)
        record = self.prompts[self.sent % len(self.prompts)]
        self.sent += 1
        result = self.controller.chat(
            [{"role": "user", "content": record.instruction}], prompt_id=record.id
        )
        self.results.append(result)
        return result.receipt

    def stored(self):
        self.controller.ledger.flush()
        return self.controller.ledger.receipts()


@pytest.fixture
def make(sqlite_url, clock, judged_records):
    built = []

    def factory(**overrides) -> Harness:
        values = {
            "zone": "DE",
            "carbon_provider": "electricitymaps",
            "electricitymaps_api_key": EM_KEY,
            "carbon_fallback_provider": "uk",
            "carbon_fallback_zone": "GB",
            "carbon_timeout_s": 0.2,
            "carbon_retries": 1,
            "signal_refresh_s": 60.0,
            "carbon_poll": False,
            **overrides,
        }
        settings = load_settings(env={}, db_url=sqlite_url, **values)
        controller = build_controller(
            settings, clock=clock.now, monotonic=clock.monotonic, rng=random.Random(0)
        )
        built.append(controller)
        return Harness(controller, clock, judged_records)

    yield factory
    for controller in built:
        controller.close()


def _em_uk(make, em, uk, **overrides) -> Harness:
    overrides.setdefault("electricitymaps_base_url", em.url + "/v3")
    return make(uk_base_url=uk.url, **overrides)


def _drop(key):
    return lambda doc: {k: v for k, v in doc.items() if k != key}


FAULTS = {
    "timeout": (Fault.stall(1.0, LATEST), 2),
    "connection-reset": (Fault.reset(LATEST), 2),
    "http-500": (Fault.http(500, {"message": "Internal error"}, path=LATEST), 2),
    "http-503": (Fault.http(503, None, path=LATEST), 2),
    "malformed-json": (Fault.malformed(LATEST), 1),
    "truncated-json": (Fault.truncated(LATEST), 2),
    "missing-field": (Fault.edit(_drop("carbonIntensity"), LATEST), 1),
    "missing-time": (Fault.edit(_drop("datetime"), LATEST), 1),
    "null-value": (Fault.edit(lambda d: {**d, "carbonIntensity": None}, LATEST), 1),
    "negative-value": (Fault.edit(lambda d: {**d, "carbonIntensity": -5}, LATEST), 1),
    "wrong-zone": (Fault.edit(lambda d: {**d, "zone": "FR"}, LATEST), 1),
    "not-an-object": (Fault.edit(lambda d: [d], LATEST), 1),
    "429-too-long": (Fault.http(429, {"message": "quota"}, {"Retry-After": "600"}, LATEST), 1),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_falls_back_to_the_secondary_then_recovers(make, em, uk, name):
    h = _em_uk(make, em, uk)
    fault, times = FAULTS[name]
    before = h.ask()
    assert (before.ci_fallback, before.ci_provider, before.ci_g_per_kwh) == (
        "provider",
        "electricitymaps",
        250.0,
    )
    em.fail(fault, times=times)
    during = h.ask()
    assert during.ci_fallback == "secondary"
    assert (during.ci_provider, during.ci_zone, during.ci_g_per_kwh) == ("uk", "GB", 180.0)
    assert h.controller.signal.read().error.startswith("electricitymaps: ")
    if name == "429-too-long":
        # Retry-After honoured: the provider is not asked again for 600 s.
        hits = em.hits(LATEST)
        for _ in range(3):
            assert h.ask().ci_fallback == "secondary"
        assert em.hits(LATEST) == hits
        h.clock.advance(600)
    after = h.ask()
    assert (after.ci_fallback, after.ci_provider) == ("provider", "electricitymaps")
    stored = h.stored()
    assert len(h.results) == h.sent == len(stored)  # none lost
    assert [r.ci_fallback for r in stored] == [r.receipt.ci_fallback for r in h.results]


def test_short_retry_after_is_waited_out_with_backoff(make, em, uk):
    h = _em_uk(make, em, uk, carbon_retries=3)
    em.fail(Fault.http(503, path=LATEST))
    em.fail(Fault.http(429, {"message": "slow"}, {"Retry-After": "4"}, LATEST))
    receipt = h.ask()
    assert receipt.ci_fallback == "provider"  # the retries got through
    assert h.sleeps == [0.5, 4.0]  # back-off, then the server's Retry-After
    assert len(h.stored()) == 1


def test_connection_refused_from_the_start(make, em, uk):
    h = _em_uk(make, em, uk, electricitymaps_base_url=f"http://127.0.0.1:{free_port()}/v3")
    receipts = [h.ask() for _ in range(3)]
    assert all(r.ci_fallback == "secondary" and r.ci_provider == "uk" for r in receipts)
    assert "cannot connect to 127.0.0.1" in h.controller.signal.read().error
    assert len(h.stored()) == 3


def test_auth_failure_names_the_setting_and_never_leaks_the_key(make, em, uk, caplog, sqlite_url):
    wrong_key = "em-WRONG-SECRET-9999"
    h = _em_uk(make, em, uk, electricitymaps_api_key=wrong_key)
    with caplog.at_level("DEBUG"):
        receipts = [h.ask() for _ in range(3)]
    assert all(r.ci_fallback == "secondary" for r in receipts)
    error = h.controller.signal.read().error
    assert "HTTP 401" in error and "SPROUT_ELECTRICITYMAPS_API_KEY" in error
    assert wrong_key not in error and wrong_key not in caplog.text
    stored = h.stored()
    assert len(stored) == 3
    assert wrong_key not in json.dumps([r.to_json_dict() for r in stored])
    h.controller.close()
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    for path in db.parent.iterdir():
        assert wrong_key.encode() not in path.read_bytes()


def test_both_providers_down_serve_the_cache_then_the_default(make, em, uk):
    h = _em_uk(make, em, uk, signal_max_age_s=3600.0)
    assert h.ask().ci_fallback == "provider"
    em.stop()
    uk.stop()
    cached = h.ask()
    assert (cached.ci_fallback, cached.ci_provider, cached.ci_g_per_kwh) == (
        "cache",
        "electricitymaps",
        250.0,
    )
    h.clock.advance(2 * 3600)
    default = h.ask()
    assert (default.ci_fallback, default.ci_provider, default.ci_g_per_kwh) == (
        "default",
        "default",
        400.0,
    )
    assert default.ci_age_s == 0.0
    assert len(h.stored()) == 3


def test_watttime_expired_token_and_auth_failure(make, wt, uk):
    h = make(
        zone="CAISO_NORTH",
        carbon_provider="watttime",
        watttime_username=WT_USER,
        watttime_password=WT_PASSWORD,
        watttime_base_url=wt.url,
        uk_base_url=uk.url,
    )
    first = h.ask()
    assert (first.ci_fallback, first.ci_provider, first.ci_signal_type) == (
        "provider",
        "watttime",
        "marginal",
    )
    wt.expire_tokens()
    renewed = h.ask()
    assert renewed.ci_fallback == "provider" and wt.logins == 2
    # the password is changed on the server: the next login is refused
    wt.password = "rotated-password"
    wt.expire_tokens()
    refused = h.ask()
    assert refused.ci_fallback == "secondary" and refused.ci_signal_type == "average"
    error = h.controller.signal.read().error
    assert "login refused" in error and "SPROUT_WATTTIME_PASSWORD" in error
    assert WT_PASSWORD not in error
    assert len(h.stored()) == 3


def test_fault_storm_loses_no_request(make, em, uk):
    """Random faults on both servers for 60 requests: every one completes and is stored."""
    h = _em_uk(make, em, uk, signal_max_age_s=600.0)
    rng = random.Random(6)
    kinds = [fault for fault, _ in FAULTS.values()]
    for _ in range(60):
        if rng.random() < 0.5:
            em.fail(rng.choice(kinds), times=2)
        if rng.random() < 0.4:
            uk.fail(Fault.http(503), times=2)
        if rng.random() < 0.05:
            h.clock.advance(900)  # the cache grows too old: the default serves
        h.ask()
        em.clear_faults()
        uk.clear_faults()
        if rng.random() < 0.1:
            h.clock.advance(600)  # let a long Retry-After pass
    stored = h.stored()
    assert h.sent == 60 == len(h.results) == len(stored)
    layers = {r.ci_fallback for r in stored}
    assert {"provider", "secondary"} <= layers <= {"provider", "secondary", "cache", "default"}
    for receipt in stored:
        expected = {"provider": {"electricitymaps"}, "secondary": {"uk"}, "default": {"default"}}
        assert receipt.ci_provider in expected.get(receipt.ci_fallback, {"electricitymaps", "uk"})


# --- the signal's layers, unit by unit ------------------------------------------------------

NOON = datetime(2024, 5, 1, 12, tzinfo=UTC)


class Scripted(CarbonProvider):
    """Returns ``value`` (or raises ``error``) and counts calls."""

    def __init__(self, name: str, value: float) -> None:
        self.name = name
        self.value = value
        self.error: Exception | None = None
        self.calls = 0

    def latest(self, zone: str) -> CarbonReading:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return CarbonReading(zone, self.value, NOON, self.name)


def _signal(primary, secondary, clock, **kw) -> CarbonSignal:
    return CarbonSignal(
        primary,
        "DE",
        secondary=secondary,
        secondary_zone="GB",
        clock=clock.now,
        monotonic=clock.monotonic,
        refresh_s=60,
        **kw,
    )


def test_signal_layers_in_order():
    clock = FakeClock(NOON, monotonic_start=1000.0)
    primary, secondary = Scripted("p", 100.0), Scripted("s", 200.0)
    signal = _signal(primary, secondary, clock, max_age_s=3600)
    assert signal.read().fallback == "provider"
    primary.error = ProviderError("p", "down")
    clock.advance(61)
    got = signal.read()
    assert (got.fallback, got.reading.provider, got.reading.zone) == ("secondary", "s", "GB")
    assert got.error == "p: down"
    secondary.error = ProviderError("s", "down too")
    clock.advance(31)
    got = signal.read()
    assert (got.fallback, got.reading.provider) == ("cache", "s")
    assert got.error == "p: down; s: down too"
    clock.advance(3600)
    got = signal.read()
    assert (got.fallback, got.reading.provider) == ("default", "default")
    primary.error = None
    clock.advance(31)
    assert signal.read().fallback == "provider"


def test_signal_honours_a_rate_limit_before_asking_again(clock):
    primary, secondary = Scripted("p", 100.0), Scripted("s", 200.0)
    primary.error = RateLimitedError("p", "rate limited", 300.0)
    signal = _signal(primary, secondary, clock)
    assert signal.read().fallback == "secondary"
    for _ in range(9):  # 9 x 31 s = 279 s < 300 s: the provider is left alone
        clock.advance(31)
        assert signal.read().fallback == "secondary"
    assert primary.calls == 1 and secondary.calls == 10
    primary.error = None
    clock.advance(31)
    assert signal.read().fallback == "provider" and primary.calls == 2
