"""The dashboard in a real browser: headless Chromium loads the page from a demo-filled
ledger served on 127.0.0.1, and the test checks that nothing logged an error, that every
chart drew its data, and that the integrity badge says OK; then a tampered copy of the
ledger must turn the badge red. The page's screenshot is saved as a CI artifact
(``artifacts/dashboard.png``; ``$SPROUT_DASHBOARD_SCREENSHOT`` moves it).

Chromium comes from Debian's ``chromium`` package (``.ci/run`` installs it); without it
this test fails rather than skips. ``$SPROUT_CHROMIUM`` names another binary.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sprout.config import load_settings
from sprout.dashboard.app import create_dashboard_app
from sprout.dashboard.data import Dashboard
from tests.support.dashboard_ledger import TENANTS, fill_demo_ledger
from tests.support.headless_chromium import chromium_path, launch
from tests.support.paths import REPO_ROOT

#: Servers, subprocesses or a browser: seconds per test (deselect with -m "not slow").
pytestmark = pytest.mark.slow

SCREENSHOT = Path(
    os.environ.get("SPROUT_DASHBOARD_SCREENSHOT") or REPO_ROOT / "artifacts/dashboard.png"
)
READY = "document.body && document.body.dataset.state !== 'loading' && document.body.dataset.state"
#: What the page shows, read from its DOM.
SUMMARY = """(() => {
  const texts = (root, sel) => [...root.querySelectorAll(sel)].map((n) => n.textContent);
  const charts = {};
  for (const fig of document.querySelectorAll("[data-chart]")) {
    charts[fig.dataset.chart] = {
      title: (fig.querySelector("h2") || {}).textContent,
      svgs: fig.querySelectorAll("svg").length,
      bars: fig.querySelectorAll("rect.mark").length,
      lines: fig.querySelectorAll("path.mark").length,
      points: fig.querySelectorAll("circle.mark").length,
      series: [...fig.querySelectorAll("g[data-series]")].map((g) => g.dataset.series),
      legend: texts(fig, ".legend li"),
      axes: texts(fig, "text.axis-title"),
    };
  }
  const badge = document.getElementById("integrity-badge");
  return {
    state: document.body.dataset.state,
    errors: window.sproutDashboardErrors || null,
    badge: badge.textContent,
    status: badge.dataset.status,
    kpis: Object.fromEntries([...document.querySelectorAll(".kpi")].map(
      (k) => [k.querySelector(".k").textContent, k.querySelector(".v").textContent])),
    tenants: texts(document, "#tenants tbody tr td:first-child"),
    problems: texts(document, "#integrity .problems li"),
    charts: charts,
    overflow: document.documentElement.scrollWidth > window.innerWidth,
  };
})()"""


@contextlib.contextmanager
def serving(db_url: str) -> Iterator[str]:
    """The dashboard of ``db_url`` on a free loopback port; yields its base URL."""
    import uvicorn

    dashboard = Dashboard.from_settings(load_settings(env={}, db_url=db_url))
    dashboard.check_schema()
    config = uvicorn.Config(
        create_dashboard_app(dashboard), host="127.0.0.1", port=0, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.fail(
            "Chromium is missing: install Debian's package (apt-get install -y chromium; "
            ".ci/run does) or set SPROUT_CHROMIUM to a Chromium binary. This test fails, "
            "not skips, without a browser.",
            pytrace=False,
        )
    return path


def test_the_dashboard_renders_in_chromium(tmp_path, monkeypatch, capsys):
    chromium = _chromium()
    monkeypatch.chdir(tmp_path)  # the page names the ledger as `sprout demo` writes it
    url = fill_demo_ledger(Path("sprout-demo.db"))
    assert url == "sqlite:///sprout-demo.db"
    with serving(url) as base, launch(chromium, tmp_path) as browser:
        with urllib.request.urlopen(f"{base}/dashboard/data.json", timeout=30) as r:
            doc = json.load(r)
        browser.open_page(1280, 900)
        state = browser.goto(f"{base}/dashboard", READY, timeout_s=60)
        page = browser.evaluate(SUMMARY)
        shot = browser.screenshot(SCREENSHOT)
        logged = list(browser.errors)
    with capsys.disabled():
        print(f"\ndashboard screenshot: {shot}")

    assert state == "ready", page
    assert logged == [] and page["errors"] == []
    assert page["status"] == "ok" and page["badge"].startswith("Integrity: OK"), page["badge"]
    receipts = doc["integrity"]["receipts"]
    assert receipts == doc["totals"]["requests"] == 450  # 300 served, 60 evaluation, 90 tenants'
    assert f"2 chains, {receipts} receipts verified" in page["badge"]
    charts = page["charts"]
    hours = len(doc["buckets"])
    carbon = charts["carbon"]
    assert carbon["bars"] >= hours - 1 and carbon["lines"] == 1, carbon  # bars + the L0 step
    assert {"served", "evaluation overhead (quality loop)", "always-L0 counterfactual"} <= set(
        carbon["series"]
    )
    assert carbon["axes"] == ["gCO2e per hour", "hour (UTC)"]
    savings = charts["savings"]
    assert savings["lines"] == 3 and savings["points"] == 3 * hours, savings
    assert "saved, net of overhead" in savings["legend"]
    energy = charts["energy"]
    assert energy["bars"] >= hours - 1 and energy["lines"] == 1
    assert energy["axes"] == ["gCO2e/kWh", "Wh per hour", "hour (UTC)"]
    mix = charts["mix"]
    assert {"L0", "L1", "L2"} <= set(mix["series"]) and mix["bars"] > hours, mix
    quality = charts["quality"]
    assert quality["lines"] == 1 and quality["points"] > 0 and quality["bars"] > 0, quality
    assert "floor 90%" in quality["legend"]
    assert charts["tenants"]["bars"] == len(doc["tenants"]) == 4
    assert sorted(page["tenants"]) == sorted(["(none)", *TENANTS])
    assert charts["outcomes"]["bars"] == 1
    # The headline figures are the endpoint's.
    totals = doc["totals"]
    assert page["kpis"]["Requests"] == str(totals["serve_requests"])
    normalized = doc["quality"]["normalized_preference"]
    assert page["kpis"]["Normalized preference"] == f"{100 * normalized:.0f}%"
    assert not page["overflow"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_a_tampered_ledger_turns_the_badge_red(tmp_path):
    chromium = _chromium()
    url = fill_demo_ledger(tmp_path / "ledger.db", prompts=48, tenant_requests=12)
    tampered = tmp_path / "tampered.db"
    shutil.copy(tmp_path / "ledger.db", tampered)
    with contextlib.closing(sqlite3.connect(tampered)) as conn, conn:
        conn.execute("UPDATE receipts SET energy_kwh = energy_kwh / 2 WHERE id = 7")
    assert url.endswith("ledger.db")
    with serving(f"sqlite:///{tampered}") as base, launch(chromium, tmp_path) as browser:
        browser.open_page(1280, 900)
        state = browser.goto(f"{base}/dashboard?bucket=day", READY, timeout_s=60)
        page = browser.evaluate(SUMMARY)
        # A window without receipts draws empty charts, without an error either.
        empty_state = browser.goto(f"{base}/dashboard?since=2030-01-01", READY, timeout_s=60)
        empty = browser.evaluate(SUMMARY)
        logged = list(browser.errors)
    assert state == "ready" and logged == [] and page["errors"] == []
    assert empty_state == "ready" and empty["errors"] == []
    assert empty["charts"]["carbon"]["bars"] == 0 and empty["tenants"] == []
    assert page["status"] == "problems" and "PROBLEMS" in page["badge"]
    assert any("row id 7" in p for p in page["problems"]), page["problems"]
    assert page["charts"]["carbon"]["axes"] == ["gCO2e per day", "day (UTC)"]
    assert page["charts"]["carbon"]["bars"] > 0
