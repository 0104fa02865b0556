"""The carbon poller and the scheduler helpers: readings and forecasts land in the ledger,
reads never touch the network once a poller runs, and ``sprout poll`` runs it standalone."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, select

import sprout.cli.app
from sprout.carbon.base import CarbonProvider, CarbonReading
from sprout.carbon.poller import CarbonPoller
from sprout.carbon.signal import CarbonSignal
from sprout.carbon.static import StaticProvider
from sprout.carbon.uk import UKCarbonIntensityProvider
from sprout.config import load_settings
from sprout.errors import LedgerError, ProviderError
from sprout.factory import build_controller
from sprout.ledger.schema import carbon_readings_table
from sprout.ledger.store import Ledger
from sprout.scheduler import (
    add_cron_job,
    add_interval_job,
    create_scheduler,
    remove_job,
    start_scheduler,
    stop_scheduler,
)
from tests.support.fake_carbon_servers import ElectricityMapsFake, Fault, UKCarbonIntensityFake
from tests.support.servers import free_port
from tests.support.settings import make_settings

EM_KEY = "em-SECRET-key-4242"
WAIT_S = 5.0  # upper bound of every wait below (they normally end in milliseconds)


#: Requests to 127.0.0.1 must not be sent to a proxy named in the environment.
pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
def uk():
    with UKCarbonIntensityFake() as server:
        yield server


@pytest.fixture
def ledger(sqlite_url):
    with Ledger(sqlite_url) as store:
        yield store


def _rows(url: str) -> list[dict]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            t = carbon_readings_table
            return [dict(r) for r in conn.execute(select(t).order_by(t.c.time)).mappings()]
    finally:
        engine.dispose()


def _wait_until(predicate, timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class Mono:
    def __init__(self) -> None:
        self.m = 0.0

    def __call__(self) -> float:
        return self.m


# --- one poll -------------------------------------------------------------------------------


def test_poll_stores_the_reading_and_the_forecast(uk, ledger, sqlite_url):
    mono = Mono()
    provider = UKCarbonIntensityProvider(base_url=uk.url)
    signal = CarbonSignal(provider, "GB", refresh_s=300, monotonic=mono)
    poller = CarbonPoller(signal, ledger=ledger, forecast_interval_s=3600, monotonic=mono)
    result = poller.poll_once()
    assert result.refreshed and result.error is None
    assert result.signal.fallback == "provider" and result.signal.reading.ci_g_per_kwh == 180.0
    assert 48 <= result.forecasts <= 49
    assert result.stored == 1 + result.forecasts
    rows = _rows(sqlite_url)
    observed = [r for r in rows if not r["is_forecast"]]
    assert [(r["zone"], r["ci_g_per_kwh"], r["provider"]) for r in observed] == [
        ("GB", 180.0, "uk")
    ]
    assert sum(r["is_forecast"] for r in rows) == result.forecasts
    assert {r["signal_type"] for r in rows} == {"average"}

    # not due yet: nothing asked, nothing stored
    hits = uk.hits()
    again = poller.poll_once()
    assert not again.refreshed and uk.hits() == hits
    # due for the reading, not for the forecast; the same reading is not stored twice
    mono.m += 301
    third = poller.poll_once()
    assert third.refreshed and third.forecasts == 0 and third.stored == 0
    assert not any("/fw24h" in s.path for s in uk.seen[hits:])
    mono.m += 3600
    assert poller.poll_once().forecasts > 0
    assert poller.refreshes == 3 and poller.failures == 0


def test_poll_stores_the_secondarys_reading(uk, ledger, sqlite_url):
    down = UKCarbonIntensityProvider(base_url=f"http://127.0.0.1:{free_port()}", retries=0)
    signal = CarbonSignal(
        down, "GB", secondary=UKCarbonIntensityProvider(base_url=uk.url), secondary_zone="region:13"
    )
    result = CarbonPoller(signal, ledger=ledger, forecast_interval_s=0).poll_once()
    assert result.signal.fallback == "secondary"
    assert "cannot connect" in result.error
    assert [(r["zone"], r["provider"]) for r in _rows(sqlite_url)] == [("region:13", "uk")]


def test_poll_survives_providers_and_ledger_failing(ledger, monkeypatch):
    class Down(CarbonProvider):
        name = "down"

        def latest(self, zone):
            raise ProviderError("down", "HTTP 503")

        def forecast(self, zone, hours=24):
            raise ProviderError("down", "no forecast")

    poller = CarbonPoller(CarbonSignal(Down(), "GB"), ledger=ledger)
    result = poller.poll_once()
    assert result.signal.fallback == "default" and result.stored == 0
    assert "HTTP 503" in result.error and "no forecast" in result.error
    assert poller.failures == 1

    def broken(readings, fetched_at=None):
        raise LedgerError("database is down")

    monkeypatch.setattr(ledger, "add_readings", broken)
    ok = CarbonPoller(CarbonSignal(StaticProvider(100.0), "GB"), ledger=ledger)
    result = ok.poll_once()
    assert result.signal.fallback == "provider" and result.stored == 0
    assert "ledger: database is down" in result.error


# --- polling in the background --------------------------------------------------------------


class ThreadRecorder(CarbonProvider):
    """A local provider that notes which thread asks it."""

    name = "recorder"

    def __init__(self) -> None:
        self.threads: list[int] = []

    def latest(self, zone):
        self.threads.append(threading.get_ident())
        return CarbonReading(zone, 123.0, datetime.now(UTC), self.name)


def test_reads_never_touch_the_provider_once_polling(ledger, sqlite_url):
    provider = ThreadRecorder()
    signal = CarbonSignal(provider, "GB", refresh_s=0.05)
    poller = signal.start_polling(ledger=ledger, tick_s=0.02, forecast_interval_s=0)
    try:
        assert signal.polling
        assert _wait_until(lambda: len(provider.threads) >= 3)  # several background refreshes
        for _ in range(2000):
            got = signal.read()
            assert got.fallback == "provider" and got.reading.provider == "recorder"
        assert threading.get_ident() not in provider.threads
        with pytest.raises(RuntimeError, match="already"):
            signal.start_polling()
    finally:
        signal.stop_polling()
    assert not signal.polling
    calls = len(provider.threads)
    time.sleep(0.1)
    assert len(provider.threads) == calls  # the job is gone
    assert poller.stored >= 1 and len(_rows(sqlite_url)) == poller.stored


def test_a_stalled_poller_serves_the_cache(ledger):
    mono = Mono()
    signal = CarbonSignal(StaticProvider(50.0), "GB", refresh_s=60, monotonic=mono)
    scheduler = create_scheduler()
    poller = signal.start_polling(scheduler=scheduler, tick_s=10)
    try:
        assert _wait_until(lambda: signal.last_good is not None)
        scheduler.pause()  # the poller stops delivering
        assert signal.read().fallback == "provider"
        mono.m += 181  # stale after max(2 x 60, 60 + 120) s: two missed polls and then some
        got = signal.read()
        assert got.fallback == "cache" and "poller stalled" in got.error
        poller.poll_once(force=True)  # a fresh fetch brings it back
        assert signal.read().fallback == "provider"
    finally:
        signal.stop_polling()
        stop_scheduler(scheduler)


def test_controller_polls_live_providers_and_close_stops_it(uk, sqlite_url, judged_records):
    settings = load_settings(
        env={},
        db_url=sqlite_url,
        zone="GB",
        carbon_provider="uk",
        uk_base_url=uk.url,
        carbon_timeout_s=0.5,
    )
    controller = build_controller(settings)
    try:
        signal = controller.signal
        assert signal.polling
        assert signal.last_good is not None  # the start waited for the first poll
        hits = uk.hits("/intensity")
        record = judged_records[0]
        receipt = controller.chat([{"role": "user", "content": record.instruction}]).receipt
        assert (receipt.ci_fallback, receipt.ci_provider, receipt.ci_g_per_kwh) == (
            "provider",
            "uk",
            180.0,
        )
        assert uk.hits("/intensity") == hits  # the request did not call the API
        assert _wait_until(lambda: any(r["is_forecast"] for r in _rows(sqlite_url)))
    finally:
        controller.close()
    assert not controller.signal.polling
    # local providers keep the lazy, inline refresh
    local = build_controller(make_settings(sqlite_url))
    try:
        assert not local.signal.polling
    finally:
        local.close()


# --- sprout poll ----------------------------------------------------------------------------


@pytest.fixture
def run_cli(monkeypatch, capsys):
    monkeypatch.setattr(sprout.cli.app, "SUBCOMMAND_MODULES", ("sprout.cli.poll",))
    for var in [v for v in __import__("os").environ if v.startswith("SPROUT_")]:
        monkeypatch.delenv(var)

    def run(*argv: str) -> tuple[int, str, str]:
        code = sprout.cli.app.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_sprout_poll_once_and_loop(run_cli, sqlite_url, monkeypatch):
    monkeypatch.setenv("SPROUT_ELECTRICITYMAPS_API_KEY", EM_KEY)
    with ElectricityMapsFake(api_key=EM_KEY) as em:
        base = ["--provider", "electricitymaps", "--zone", "DE", "--base-url", em.url + "/v3"]
        code, out, _ = run_cli("poll", *base, "--db", sqlite_url, "--once")
        assert code == 0
        assert "250.0 gCO2e/kWh  electricitymaps (provider)  stored 25" in out
        code, out, _ = run_cli(
            "poll", *base, "--db", sqlite_url, "--interval", "0.05", "--max-polls", "3"
        )
        assert code == 0
        assert out.count("(provider)") == 3
        em.fail(Fault.http(503), times=10)
        monkeypatch.setenv("SPROUT_CARBON_RETRIES", "0")  # no real back-off sleeps
        code, out, err = run_cli(
            "poll",
            *base,
            "--db",
            sqlite_url,
            "--once",
            "--timeout",
            "0.2",
            "--forecast-interval",
            "0",
        )
    assert code == 1 and "(default)" in out
    assert "no provider answered" in err and "HTTP 503" in err and EM_KEY not in err
    rows = _rows(sqlite_url)
    assert sum(not r["is_forecast"] for r in rows) == 1  # same hour: stored once
    assert sum(r["is_forecast"] for r in rows) == 24


def test_sprout_poll_stops_cleanly_on_sigterm(sqlite_url, tmp_path):
    code = (
        "import sys, sprout.cli.app as cli; cli.SUBCOMMAND_MODULES = ('sprout.cli.poll',); "
        "sys.exit(cli.main(sys.argv[1:]))"
    )
    argv = ["poll", "--provider", "static", "--db", sqlite_url, "--interval", "0.1"]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SPROUT_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("polling static for GB every 0.1 s")
        assert "(provider)" in proc.stdout.readline()  # the first poll landed
        proc.terminate()
        _, err = proc.communicate(timeout=20)  # a clean stop takes well under a second
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert len(_rows(sqlite_url)) >= 1


def test_sprout_poll_rejects_bad_options(run_cli, sqlite_url):
    code, _, err = run_cli("poll", "--provider", "static", "--db", sqlite_url, "--interval", "0")
    assert code == 2 and "--interval" in err
    code, _, err = run_cli("poll", "--provider", "static", "--db", sqlite_url, "--max-polls", "0")
    assert code == 2 and "--max-polls" in err


# --- scheduler helpers ----------------------------------------------------------------------


def test_scheduler_helpers():
    scheduler = create_scheduler()
    ran = threading.Event()
    job = add_interval_job(scheduler, ran.set, interval_s=3600, job_id="j")
    assert job.id == "j" and job.next_run_time <= datetime.now(UTC) + timedelta(seconds=1)
    add_interval_job(scheduler, ran.set, interval_s=3600, job_id="j")  # replaces, no error
    cron = add_cron_job(scheduler, ran.set, job_id="nightly", hour=3, minute=0)
    assert cron.id == "nightly"
    with pytest.raises(ValueError, match="interval_s"):
        add_interval_job(scheduler, ran.set, interval_s=0, job_id="bad")
    start_scheduler(scheduler)
    start_scheduler(scheduler)  # idempotent
    try:
        assert ran.wait(WAIT_S)
    finally:
        stop_scheduler(scheduler)
        stop_scheduler(scheduler)  # idempotent
    remove_job(scheduler, "nightly")
    remove_job(scheduler, "nightly")  # idempotent
    assert type(create_scheduler(blocking=True)).__name__ == "BlockingScheduler"


def test_importing_the_modules_starts_nothing():
    code = (
        "import sys, threading, sprout.scheduler, sprout.carbon.poller, sprout.carbon.signal, "
        "sprout.carbon.electricitymaps, sprout.carbon.watttime, sprout.carbon.uk, "
        "sprout.cli.carbon, sprout.cli.poll; "
        "assert 'apscheduler' not in sys.modules, 'apscheduler imported'; "
        "assert threading.active_count() == 1; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_only_the_poll_lock_holder_records_readings(uk, ledger, sqlite_url):
    from sprout.ledger.locks import job_lock

    mono = Mono()
    provider = UKCarbonIntensityProvider(base_url=uk.url)
    signal = CarbonSignal(provider, "GB", refresh_s=300, monotonic=mono)
    poller = CarbonPoller(signal, ledger=ledger, forecast_interval_s=3600, monotonic=mono)
    with job_lock(sqlite_url, "poll") as held_elsewhere:  # another replica's turn
        assert held_elsewhere
        skipped = poller.poll_once()
    assert skipped.refreshed and skipped.signal.fallback == "provider"  # own signal is fresh
    assert skipped.stored == 0 and skipped.forecasts == 0 and _rows(sqlite_url) == []
    mono.m += 301
    ours = poller.poll_once()
    assert ours.stored == 1 + ours.forecasts and ours.forecasts > 0
