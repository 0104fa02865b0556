"""Live carbon providers against fake API servers on 127.0.0.1: response shapes, units,
zones, credentials, settings, the HTTP helper and ``sprout carbon now``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import requests

import sprout.cli.app
from sprout.accounting import lbs_per_mwh_to_g_per_kwh
from sprout.carbon.electricitymaps import ElectricityMapsProvider
from sprout.carbon.http import JsonClient, RateLimitedError, parse_retry_after
from sprout.carbon.signal import CarbonSignal
from sprout.carbon.uk import UKCarbonIntensityProvider, parse_zone
from sprout.carbon.watttime import WattTimeProvider
from sprout.config import load_settings
from sprout.errors import ConfigError, ProviderError, UnknownZoneError
from sprout.factory import build_provider, build_signal
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


#: Requests to 127.0.0.1 must not be sent to a proxy named in the environment.
pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
def em():
    with ElectricityMapsFake(api_key=EM_KEY) as server:
        yield server


@pytest.fixture
def wt():
    with WattTimeFake(username=WT_USER, password=WT_PASSWORD) as server:
        yield server


@pytest.fixture
def uk():
    with UKCarbonIntensityFake() as server:
        yield server


# The fakes answer at once; these tests do not test timeouts (those set their own), so the
# clients' timeout is generous enough that a loaded machine cannot fail them.
_FAKE_TIMEOUT_S = 5.0


def _em(server, **kw) -> ElectricityMapsProvider:
    kw.setdefault("timeout_s", _FAKE_TIMEOUT_S)
    return ElectricityMapsProvider(kw.pop("key", EM_KEY), base_url=server.url + "/v3", **kw)


def _wt(server, **kw) -> WattTimeProvider:
    kw.setdefault("timeout_s", _FAKE_TIMEOUT_S)
    return WattTimeProvider(
        kw.pop("user", WT_USER), kw.pop("password", WT_PASSWORD), base_url=server.url, **kw
    )


# --- Electricity Maps ------------------------------------------------------------------------


def test_em_latest_records_value_time_factor_and_estimation(em):
    reading = _em(em, emission_factor="lifecycle").latest("DE")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    assert reading.zone == "DE" and reading.provider == "electricitymaps"
    assert reading.ci_g_per_kwh == 250.0
    assert abs(reading.time - hour) <= timedelta(hours=1)
    assert reading.signal_type == "average"
    assert reading.emission_factor == "lifecycle"
    assert reading.is_estimated and not reading.is_forecast
    seen = em.seen[-1]
    assert seen.path == "/v3/carbon-intensity/latest"
    assert seen.query == {"zone": "DE", "emissionFactorType": "lifecycle"}
    assert seen.headers["auth-token"] == EM_KEY


def test_em_response_factor_wins(em):
    # The server reports which factor it used; the reading records that, not what we asked.
    em.fail(Fault.edit(lambda d: {**d, "emissionFactorType": "lifecycle"}))
    assert _em(em, emission_factor="direct").latest("DE").emission_factor == "lifecycle"


def test_em_latlon_zone_resolves(em):
    reading = _em(em).latest("48.86,2.35")
    assert reading.zone == "FR"
    assert em.seen[-1].query["lat"] == "48.86" and em.seen[-1].query["lon"] == "2.35"


def test_em_forecast_and_history(em):
    provider = _em(em)
    forecast = provider.forecast("DE", hours=6)
    assert 5 <= len(forecast) <= 6
    assert all(r.is_forecast and r.provider == "electricitymaps" for r in forecast)
    assert [r.time for r in forecast] == sorted(r.time for r in forecast)
    now = datetime.now(UTC)
    history = provider.history("DE", now - timedelta(hours=5), now)
    assert 4 <= len(history) <= 5
    assert all(not r.is_forecast and now - timedelta(hours=5) <= r.time < now for r in history)


def test_em_unknown_zone(em):
    with pytest.raises(UnknownZoneError, match=r"electricitymaps: unknown zone 'XX'.*404"):
        _em(em).latest("XX")


def test_em_wrong_base_url_is_not_an_unknown_zone(em):
    with pytest.raises(
        ProviderError, match=r"HTTP 404 .*is the base URL http://.*/v2 right"
    ) as info:
        ElectricityMapsProvider(EM_KEY, base_url=em.url + "/v2").latest("DE")
    assert not isinstance(info.value, UnknownZoneError)


def test_em_bad_key_names_the_setting_never_the_key(em):
    wrong = "em-WRONG-key-0000"
    with pytest.raises(ProviderError) as info:
        _em(em, key=wrong).latest("DE")
    message = str(info.value)
    assert message.startswith("electricitymaps: ")
    assert "HTTP 401" in message and "SPROUT_ELECTRICITYMAPS_API_KEY" in message
    assert wrong not in message and EM_KEY not in message


def test_em_missing_key_is_a_config_error():
    with pytest.raises(ConfigError, match="SPROUT_ELECTRICITYMAPS_API_KEY"):
        ElectricityMapsProvider("")
    with pytest.raises(ConfigError, match="emission factor"):
        ElectricityMapsProvider("k", emission_factor="scope3")  # type: ignore[arg-type]


def test_em_repr_hides_the_key(em):
    assert EM_KEY not in repr(_em(em))


# --- WattTime -------------------------------------------------------------------------------


def test_wt_moer_is_marginal_and_converted_to_g_per_kwh(wt):
    reading = _wt(wt).latest("CAISO_NORTH")
    assert reading.ci_g_per_kwh == pytest.approx(1000.0 * 453.59237 / 1000.0)
    assert reading.ci_g_per_kwh == lbs_per_mwh_to_g_per_kwh(1000.0)
    assert reading.signal_type == "marginal"
    assert reading.provider == "watttime" and reading.zone == "CAISO_NORTH"
    assert reading.is_estimated and not reading.is_forecast
    data = wt.seen[-1]
    assert data.path == "/v3/forecast"
    assert data.query == {"region": "CAISO_NORTH", "signal_type": "co2_moer"}
    assert data.headers["authorization"].startswith("Bearer wt-token-")


def test_wt_logs_in_once_and_reuses_the_token(wt):
    provider = _wt(wt)
    for _ in range(3):
        provider.latest("CAISO_NORTH")
    assert wt.logins == 1 and provider.logins == 1
    assert wt.hits("/login") == 1


def test_wt_refreshes_the_token_before_it_expires(wt):
    clock = FakeClock(monotonic_start=0.0)
    provider = _wt(wt, monotonic=clock.monotonic)
    provider.latest("CAISO_NORTH")
    clock.advance(24 * 60)  # 24 min: still valid
    provider.latest("CAISO_NORTH")
    assert wt.logins == 1
    clock.advance(2 * 60)  # 26 min: within the 5-min margin of the 30-min lifetime
    provider.latest("CAISO_NORTH")
    assert wt.logins == 2
    # no request was refused on the way
    assert all(s.path != "/v3/forecast" or s.headers.get("authorization") for s in wt.seen)


def test_wt_relogs_in_once_on_401(wt):
    provider = _wt(wt)
    provider.latest("CAISO_NORTH")
    wt.expire_tokens()  # server-side expiry the client could not foresee
    assert provider.latest("CAISO_NORTH").ci_g_per_kwh > 0
    assert wt.logins == 2


def test_wt_login_refused_names_the_settings_never_the_password(wt):
    wrong = "not-the-SECRET-pw"
    with pytest.raises(ProviderError) as info:
        _wt(wt, password=wrong).latest("CAISO_NORTH")
    message = str(info.value)
    assert message.startswith("watttime: login refused (HTTP 401)")
    assert "SPROUT_WATTTIME_USERNAME" in message and "SPROUT_WATTTIME_PASSWORD" in message
    assert wrong not in message and WT_PASSWORD not in message


def test_wt_token_is_redacted_from_errors(wt):
    provider = _wt(wt)
    provider.latest("CAISO_NORTH")
    token = next(iter(wt._tokens))
    wt.fail(Fault.http(418, {"error": "TEAPOT", "message": f"your token {token}"}, path="/v3/"))
    with pytest.raises(ProviderError) as info:
        provider.latest("CAISO_NORTH")
    assert token not in str(info.value) and "***" in str(info.value)


def test_wt_missing_credentials_is_a_config_error():
    with pytest.raises(ConfigError, match="SPROUT_WATTTIME_PASSWORD"):
        WattTimeProvider("user", "")


def test_wt_unknown_and_forbidden_regions(wt):
    provider = _wt(wt)
    with pytest.raises(UnknownZoneError, match="watttime: unknown region 'NOWHERE'"):
        provider.latest("NOWHERE")
    wt.forbidden.add("PJM_DC")
    with pytest.raises(ProviderError, match=r"access to region 'PJM_DC' denied \(HTTP 403\)"):
        provider.latest("PJM_DC")


def test_wt_forecast_history_and_signal_index(wt):
    provider = _wt(wt)
    forecast = provider.forecast("CAISO_NORTH", hours=1)
    assert 12 <= len(forecast) <= 13  # 5-minute points
    assert all(r.is_forecast and r.signal_type == "marginal" for r in forecast)
    full = provider.forecast("CAISO_NORTH")
    assert len(full) == 288
    now = datetime.now(UTC)
    history = provider.history("CAISO_NORTH", now - timedelta(days=61), now)
    assert wt.hits("/v3/historical") == 3  # 61 days in spans of at most 30
    assert history == sorted(history, key=lambda r: r.time)
    assert all(not r.is_estimated for r in history)
    index = provider.signal_index("CAISO_NORTH")
    assert index.percentile == 37.0 and index.zone == "CAISO_NORTH"


def test_wt_wrong_units_are_refused(wt):
    wt.fail(
        Fault.edit(lambda d: {**d, "meta": {**d["meta"], "units": "percentile"}}, "/v3/forecast")
    )
    with pytest.raises(ProviderError, match="expected MOER in lbs_co2_per_mwh"):
        _wt(wt).latest("CAISO_NORTH")


# --- GB Carbon Intensity API ----------------------------------------------------------------


def test_uk_national_uses_the_outturn(uk):
    reading = UKCarbonIntensityProvider(base_url=uk.url).latest("GB")
    assert (reading.zone, reading.ci_g_per_kwh, reading.provider) == ("GB", 180.0, "uk")
    assert not reading.is_estimated and reading.signal_type == "average"
    assert reading.time.minute in (0, 30)
    assert uk.seen[-1].path == "/intensity"


def test_uk_national_without_outturn_uses_the_forecast(uk):
    def no_actual(doc):
        doc["data"][0]["intensity"]["actual"] = None
        return doc

    uk.fail(Fault.edit(no_actual))
    reading = UKCarbonIntensityProvider(base_url=uk.url).latest("national")
    assert reading.ci_g_per_kwh == 185.0 and reading.is_estimated


@pytest.mark.parametrize(
    ("zone", "path"),
    [("region:13", "/regional/regionid/13"), ("postcode:rg10", "/regional/postcode/RG10")],
)
def test_uk_regional(uk, zone, path):
    reading = UKCarbonIntensityProvider(base_url=uk.url).latest(zone)
    assert reading.ci_g_per_kwh == 120.0 and reading.is_estimated and reading.zone == zone
    assert uk.seen[-1].path == path


def test_uk_forecast_fw24h(uk):
    provider = UKCarbonIntensityProvider(base_url=uk.url)
    for zone, prefix in (("GB", "/intensity/"), ("region:3", "/regional/intensity/")):
        forecast = provider.forecast(zone)
        assert 48 <= len(forecast) <= 49
        assert all(r.is_forecast and r.zone == zone for r in forecast)
        seen = uk.seen[-1].path
        assert (
            seen.startswith(prefix)
            and "/fw24h" in seen
            and seen.split("/")[2 if prefix == "/intensity/" else 3].endswith("Z")
        )


def test_uk_history_in_14_day_spans(uk):
    now = datetime.now(UTC)
    history = UKCarbonIntensityProvider(base_url=uk.url).history(
        "GB", now - timedelta(days=20), now
    )
    assert uk.hits("/intensity/") == 2
    assert len(history) >= 20 * 48 - 1
    assert [r.time for r in history] == sorted(r.time for r in history)


def test_uk_zone_forms():
    assert parse_zone("GB").kind == "national"
    assert parse_zone("region:7").key == "7"
    assert parse_zone("postcode:SW1A 1AA").key == "SW1A"
    for bad in ("region:99", "region:x", "postcode:!!", "FR"):
        with pytest.raises(UnknownZoneError, match="use GB"):
            parse_zone(bad)


def test_uk_refused_postcode_and_wrong_region(uk):
    provider = UKCarbonIntensityProvider(base_url=uk.url)
    with pytest.raises(UnknownZoneError, match=r"uk: the API refused zone 'postcode:ZZ9'.*400"):
        provider.latest("postcode:ZZ9")

    def other_region(doc):
        doc["data"][0]["regionid"] = 3
        return doc

    uk.fail(Fault.edit(other_region))
    with pytest.raises(ProviderError, match="asked for region 13 but got 3"):
        provider.latest("region:13")


# --- HTTP helper ----------------------------------------------------------------------------


def test_client_validates_its_arguments():
    for url in ("", "ftp://x", "not a url"):
        with pytest.raises(ConfigError, match="base URL"):
            JsonClient("p", url)
    with pytest.raises(ConfigError, match="timeout"):
        JsonClient("p", "http://x", timeout_s=0)


def test_retry_after_parsing():
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-3") == 0.0


def test_backoff_doubles_and_retry_after_is_honoured(em):
    sleeps: list[float] = []
    provider = _em(em, retries=3)
    provider.http.sleep = sleeps.append
    em.fail(Fault.http(503), times=2)
    em.fail(Fault.http(429, {"message": "slow down"}, {"Retry-After": "3"}))
    assert provider.latest("DE").ci_g_per_kwh == 250.0
    assert sleeps == [0.5, 1.0, 3.0]  # exponential, then the server's Retry-After
    assert em.hits("/v3/carbon-intensity/latest") == 4


def test_long_retry_after_is_not_slept(em):
    sleeps: list[float] = []
    provider = _em(em)
    provider.http.sleep = sleeps.append
    em.fail(Fault.http(429, {"message": "quota"}, {"Retry-After": "600"}))
    with pytest.raises(RateLimitedError) as info:
        provider.latest("DE")
    assert info.value.retry_after_s == 600.0 and sleeps == []
    assert "rate limited (HTTP 429)" in str(info.value)


def test_connection_refused_is_a_provider_error():
    provider = UKCarbonIntensityProvider(
        base_url=f"http://127.0.0.1:{free_port()}", timeout_s=0.2, retries=1
    )
    provider.http.sleep = lambda s: None
    with pytest.raises(ProviderError, match=r"uk: cannot connect to 127\.0\.0\.1:\d+ .*2 attempt"):
        provider.latest("GB")


def test_shared_session_is_used_and_kept_open(uk):
    session = requests.Session()
    provider = UKCarbonIntensityProvider(base_url=uk.url, session=session)
    provider.latest("GB")
    provider.close()
    assert provider.http.session is session
    session.close()


# --- settings and factory -------------------------------------------------------------------


def test_secrets_come_from_env_and_stay_out_of_repr(tmp_path):
    env = {
        "SPROUT_CARBON_PROVIDER": "electricitymaps",
        "SPROUT_ELECTRICITYMAPS_API_KEY": EM_KEY,
        "SPROUT_WATTTIME_USERNAME": WT_USER,
        "SPROUT_WATTTIME_PASSWORD": WT_PASSWORD,
    }
    settings = load_settings(env=env, db_url="sqlite://")
    assert settings.electricitymaps_api_key == EM_KEY
    assert settings.watttime_password == WT_PASSWORD
    for text in (repr(settings), str(settings)):
        assert EM_KEY not in text and WT_PASSWORD not in text and WT_USER not in text
    config = tmp_path / "sprout.toml"
    config.write_text(f'[sprout]\nelectricitymaps_api_key = "{EM_KEY}"\n', encoding="utf-8")
    assert load_settings(config=config, env={}).electricitymaps_api_key == EM_KEY


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"carbon_provider": "carbonfairy"}, "carbon_provider"),
        ({"carbon_fallback_provider": "x"}, "carbon_fallback_provider"),
        ({"carbon_timeout_s": 0}, "carbon_timeout_s"),
        ({"carbon_retries": -1}, "carbon_retries"),
        ({"electricitymaps_emission_factor": "scope3"}, "electricitymaps_emission_factor"),
    ],
)
def test_bad_carbon_settings(changes, match):
    with pytest.raises(ConfigError, match=match):
        load_settings(env={}, db_url="sqlite://", **changes)


def test_factory_builds_each_provider_and_the_fallback_chain(em, uk):
    settings = load_settings(
        env={},
        db_url="sqlite://",
        zone="DE",
        carbon_provider="electricitymaps",
        electricitymaps_api_key=EM_KEY,
        electricitymaps_base_url=em.url + "/v3",
        carbon_fallback_provider="uk",
        carbon_fallback_zone="GB",
        uk_base_url=uk.url,
        carbon_timeout_s=0.3,
        carbon_retries=0,
    )
    signal = build_signal(settings)
    assert isinstance(signal, CarbonSignal)
    assert isinstance(signal.provider, ElectricityMapsProvider)
    assert isinstance(signal.secondary, UKCarbonIntensityProvider)
    assert (signal.zone, signal.secondary_zone) == ("DE", "GB")
    assert signal.provider.http.timeout_s == 0.3 and signal.provider.http.retries == 0
    assert signal.read().reading.provider == "electricitymaps"
    signal.close()
    with pytest.raises(ConfigError, match="SPROUT_WATTTIME_USERNAME"):
        build_provider(settings.replace(carbon_provider="watttime"))


# --- sprout carbon now ----------------------------------------------------------------------


@pytest.fixture
def run_cli(monkeypatch, capsys):
    # Only this module's subcommands: the others are not under test here.
    monkeypatch.setattr(sprout.cli.app, "SUBCOMMAND_MODULES", ("sprout.cli.carbon",))
    for var in [v for v in __import__("os").environ if v.startswith("SPROUT_")]:
        monkeypatch.delenv(var)

    def run(*argv: str) -> tuple[int, str, str]:
        code = sprout.cli.app.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_carbon_now_text_and_json(run_cli, em, wt, uk, monkeypatch):
    monkeypatch.setenv("SPROUT_ELECTRICITYMAPS_API_KEY", EM_KEY)
    code, out, _ = run_cli(
        "carbon",
        "now",
        "--provider",
        "electricitymaps",
        "--zone",
        "DE",
        "--base-url",
        em.url + "/v3",
    )
    assert code == 0
    assert "250.0 gCO2e/kWh" in out and "electricitymaps" in out and "average" in out
    assert "DE" in out and "estimated" in out
    monkeypatch.setenv("SPROUT_WATTTIME_USERNAME", WT_USER)
    monkeypatch.setenv("SPROUT_WATTTIME_PASSWORD", WT_PASSWORD)
    code, out, _ = run_cli(
        "carbon",
        "now",
        "--provider",
        "watttime",
        "--zone",
        "CAISO_NORTH",
        "--base-url",
        wt.url,
        "--json",
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["signal_type"] == "marginal" and doc["provider"] == "watttime"
    assert doc["ci_g_per_kwh"] == pytest.approx(453.59237)
    code, out, _ = run_cli(
        "carbon",
        "now",
        "--provider",
        "uk",
        "--zone",
        "region:13",
        "--base-url",
        uk.url,
        "--json",
        "--forecast",
        "2",
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["zone"] == "region:13" and 4 <= len(doc["forecast"]) <= 5


def test_carbon_now_offline_providers(run_cli):
    code, out, _ = run_cli("carbon", "now", "--provider", "trace", "--zone", "GB")
    assert code == 0 and "trace" in out and "gCO2e/kWh" in out
    code, out, _ = run_cli("carbon", "now", "--provider", "static", "--zone", "FR", "--json")
    assert code == 0 and json.loads(out)["ci_g_per_kwh"] == 400.0


def test_carbon_now_failures_exit_nonzero_with_a_clear_message(run_cli, em, monkeypatch):
    monkeypatch.setenv("SPROUT_ELECTRICITYMAPS_API_KEY", "em-WRONG-SECRET")
    code, out, err = run_cli(
        "carbon",
        "now",
        "--provider",
        "electricitymaps",
        "--zone",
        "DE",
        "--base-url",
        em.url + "/v3",
    )
    assert code == 1 and out == ""
    assert (
        err.startswith("sprout: error: electricitymaps:")
        and "SPROUT_ELECTRICITYMAPS_API_KEY" in err
    )
    assert "em-WRONG-SECRET" not in err
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("SPROUT_CARBON_RETRIES", "0")  # no real back-off sleeps
    code, _, err = run_cli(
        "carbon", "now", "--provider", "uk", "--base-url", dead, "--timeout", "0.2"
    )
    assert code == 1 and "uk: cannot connect" in err
    code, _, err = run_cli(
        "carbon", "now", "--provider", "uk", "--zone", "Atlantis", "--base-url", dead
    )
    assert code == 1 and "unknown zone 'Atlantis'" in err
    code, _, err = run_cli("carbon", "now", "--provider", "static", "--base-url", dead)
    assert code == 2 and "--base-url applies to the live providers" in err
    monkeypatch.delenv("SPROUT_ELECTRICITYMAPS_API_KEY")
    code, _, err = run_cli("carbon", "now", "--provider", "electricitymaps", "--zone", "DE")
    assert code == 2 and "SPROUT_ELECTRICITYMAPS_API_KEY" in err
