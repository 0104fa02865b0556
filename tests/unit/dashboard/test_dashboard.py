"""The ledger dashboard: its JSON equals the report APIs' figures, and it never writes.

The page itself is tested in a real browser in ``tests/integration/test_dashboard_browser.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from sprout.cli import main
from sprout.config import load_settings
from sprout.dashboard.app import STATIC_FILES, create_dashboard_app, static_file
from sprout.dashboard.data import Dashboard
from sprout.dashboard.readonly import open_readonly
from sprout.errors import ConfigError
from sprout.judge.report import verdict_report
from sprout.ledger.audit import ledger_report
from sprout.ledger.migrate import current_revision, head_revisions, upgrade
from sprout.ledger.verify import verify
from tests.support.clock import FakeClock
from tests.support.dashboard_ledger import fill_demo_ledger

FIGURES = (
    "requests",
    "serve_requests",
    "eval_requests",
    "energy_kwh",
    "eval_kwh",
    "total_g",
    "eval_g",
    "saved_g",
    "net_saved_g",
    "ci_g_per_kwh",
    "judged",
    "judge_preferred",
    "judge_share",
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    """(URL, file) of a demo day with the quality loop, plus three tenants' traffic."""
    path = tmp_path_factory.mktemp("dashboard") / "ledger.db"
    return fill_demo_ledger(path, prompts=120, tenant_requests=45), path


@pytest.fixture(scope="module")
def client(ledger):
    url, _ = ledger
    dashboard = Dashboard.from_settings(load_settings(env={}, db_url=url))
    with TestClient(create_dashboard_app(dashboard)) as c:
        yield c


def _get(client, query: str = "") -> dict:
    r = client.get("/dashboard/data.json" + query)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()


def _same(doc_row: dict, row, names=FIGURES) -> None:
    values = {
        "requests": row.requests,
        "serve_requests": row.serve_requests,
        "eval_requests": row.eval_requests,
        "energy_kwh": row.energy_kwh,
        "eval_kwh": row.eval_kwh,
        "total_g": row.total_g,
        "eval_g": row.eval_g,
        "saved_g": row.saved_g,
        "net_saved_g": row.net_saved_g,
        "ci_g_per_kwh": row.ci_g_per_kwh,
        "judged": row.judged,
        "judge_preferred": row.judge_preferred,
        "judge_share": row.judge_share,
    }
    for name in names:
        want = values[name]
        assert doc_row[name] == (want if want is None else pytest.approx(want, rel=1e-12)), name


# ---------------------------------------------------------------------- the numbers


def test_hourly_figures_equal_the_report(client, ledger):
    url, _ = ledger
    doc = _get(client, "?bucket=hour")
    report = ledger_report(url, group_by="hour")
    assert doc["window"]["bucket"] == "hour"
    by_label = {b["label"]: b for b in doc["buckets"]}
    assert [r.group for r in report.rows] == [b["label"] for b in doc["buckets"] if b["requests"]]
    for row in report.rows:
        b = by_label[row.group]
        _same(b, row)
        assert b["counterfactual_g"] == (pytest.approx(row.baseline_g) if row.baseline_n else None)
        assert b["serve_g"] == pytest.approx(row.total_g - row.eval_g)
    # Time runs evenly: empty hours are there, as zeros.
    starts = [datetime.fromisoformat(b["start"]) for b in doc["buckets"]]
    assert all((b - a).total_seconds() == 3600 for a, b in itertools.pairwise(starts))
    _same(doc["totals"], report.totals)
    assert doc["totals"]["counterfactual_g"] == pytest.approx(report.totals.baseline_g)
    assert doc["notes"][: len(report.notes)] == report.notes
    # Running totals end at the report's totals, net of the quality loop's overhead.
    last = doc["buckets"][-1]
    assert last["cumulative_saved_g"] == pytest.approx(report.totals.saved_g)
    assert last["cumulative_eval_g"] == pytest.approx(report.totals.eval_g)
    assert last["cumulative_net_saved_g"] == pytest.approx(report.totals.net_saved_g)
    assert report.totals.eval_requests > 0 and report.totals.net_saved_g < report.totals.saved_g


def test_directive_mix_tenants_and_outcomes_equal_their_reports(client, ledger):
    url, _ = ledger
    doc = _get(client)
    served = ledger_report(url, group_by="directive", filters={"purpose": "serve"})
    per_directive = {name: 0 for name in doc["directives"]["names"]}
    for b in doc["buckets"]:
        assert sum(b["directives"].values()) == b["serve_requests"]
        for name, n in b["directives"].items():
            per_directive[name] += n
    assert per_directive == {r.group: r.serve_requests for r in served.rows}
    assert doc["directives"]["served"] == per_directive
    l1 = ledger_report(url, group_by="hour", filters={"directive": "L1", "purpose": "serve"})
    assert {r.group: r.serve_requests for r in l1.rows} == {
        b["label"]: b["directives"]["L1"] for b in doc["buckets"] if "L1" in b["directives"]
    }

    tenants = ledger_report(url, group_by="tenant")
    assert [t["tenant"] for t in doc["tenants"]] == [r.group for r in tenants.rows]
    assert {"acme-support", "globex-search", "initech-chat", "(none)"} == {
        t["tenant"] for t in doc["tenants"]
    }
    for t, row in zip(doc["tenants"], tenants.rows, strict=True):
        _same(t, row, ("requests", "serve_requests", "eval_requests", "energy_kwh", "total_g"))
        _same(t, row, ("eval_g", "saved_g", "net_saved_g", "judged", "judge_share"))
    # Grouping by outcome works on a ledger with verdicts (the report's verdict query
    # reads the outcome too).
    outcomes = ledger_report(url, group_by="outcome")
    assert [(o["outcome"], o["requests"]) for o in doc["outcomes"]] == [
        (r.group, r.requests) for r in outcomes.rows
    ]
    assert outcomes.totals.judged == doc["totals"]["judged"] > 0


def test_quality_equals_the_verdict_report(client, ledger):
    url, _ = ledger
    doc = _get(client)
    q = doc["quality"]
    verdicts = verdict_report(url)
    assert verdicts.normalized_preference is not None
    assert q["normalized_preference"] == pytest.approx(verdicts.normalized_preference)
    assert q["baseline"] == verdicts.rows[0].directive == "L0"
    assert q["baseline_preferred"] == verdicts.rows[0].preferred
    assert q["verdicts"] == verdicts.total and q["queued"] == verdicts.queued
    assert q["served_preferred"] == sum(r.served_preferred for r in verdicts.rows)
    assert sum(b["baseline_preferred"] for b in doc["buckets"]) == q["baseline_preferred"]
    # The running normalized preference ends at the window's.
    running = [b["cumulative_normalized_preference"] for b in doc["buckets"]]
    assert running[-1] == pytest.approx(verdicts.normalized_preference)
    # The floor is the quality estimate's (the demo's loop stored one), else the settings'.
    assert q["floor_source"] == "estimate"
    assert q["floor"] == pytest.approx(verdicts.estimate["floor"])


def test_integrity_is_verify_of_the_whole_ledger(client, ledger):
    url, _ = ledger
    doc = _get(client, "?since=2023-06-13T10:00Z&until=2023-06-13T11:00Z")
    result = verify(url)
    it = doc["integrity"]
    assert it["status"] == "ok" and it["ok"] is True
    assert (it["chains"], it["receipts"], it["problem_count"]) == (2, result.receipts, 0)
    assert it["heads_digest"] == result.heads_digest
    assert it["rollups_checked"] and it["pending_receipts"] == 0


def test_daily_buckets_and_a_window(client, ledger):
    url, _ = ledger
    daily = _get(client, "?bucket=day")
    report = ledger_report(url, group_by="day")
    assert [b["label"] for b in daily["buckets"]] == [r.group for r in report.rows]
    for b, row in zip(daily["buckets"], report.rows, strict=True):
        _same(b, row)

    since = datetime(2023, 6, 13, 6, 30, tzinfo=UTC)
    until = datetime(2023, 6, 13, 12, tzinfo=UTC)
    doc = _get(client, "?since=2023-06-13T06:30:00Z&until=2023-06-13T12:00Z")
    window = ledger_report(url, group_by="hour", since=since, until=until)
    assert doc["window"]["since"] == since.isoformat()
    assert doc["window"]["bucket"] == "hour" and doc["window"]["requested_bucket"] == "auto"
    assert doc["buckets"][0]["start"] == "2023-06-13T06:00:00+00:00"  # the partial hour
    assert len(doc["buckets"]) == 6
    _same(doc["totals"], window.totals)


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("?since=yesterday", "since"),
        ("?until=13/06/2023", "until"),
        ("?bucket=week", "bucket"),
        ("?since=2023-06-14&until=2023-06-13", "empty"),
    ],
)
def test_a_bad_query_is_a_400_naming_the_problem(client, query, names):
    r = client.get("/dashboard/data.json" + query)
    assert r.status_code == 400
    assert names in r.json()["error"]


def test_an_empty_window_draws_nothing_but_still_answers(client):
    doc = _get(client, "?since=2030-01-01")
    assert doc["buckets"] == [] and doc["totals"]["requests"] == 0
    assert doc["integrity"]["status"] == "ok"


def test_too_many_buckets_are_refused(ledger, monkeypatch):
    import sprout.dashboard.data as data

    monkeypatch.setattr(data, "MAX_BUCKETS", 10)
    url, _ = ledger
    dashboard = Dashboard(url)
    try:
        with pytest.raises(ConfigError, match="bucket=day"):
            dashboard.data(bucket="hour")
    finally:
        dashboard.close()


def test_integrity_is_reused_for_a_while(ledger):
    url, _ = ledger
    clock = FakeClock(monotonic_start=0.0)
    dashboard = Dashboard(url, verify_ttl_s=60, clock=clock.monotonic)
    try:
        first = dashboard.integrity()
        assert dashboard.integrity() is first
        clock.advance(61)
        assert dashboard.integrity() is not first
    finally:
        dashboard.close()


# ---------------------------------------------------------------------- read-only


def test_the_dashboard_only_reads(ledger):
    url, path = ledger
    before = _sha256(path)
    mtime = path.stat().st_mtime_ns
    dashboard = Dashboard.from_settings(load_settings(env={}, db_url=url))
    with TestClient(create_dashboard_app(dashboard)) as c:
        for target in ("/dashboard", "/dashboard/data.json", "/dashboard/static/dashboard.js"):
            assert c.get(target).status_code == 200
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                r = c.request(method, target, json={"receipts": []})
                assert r.status_code == 405, (method, target)
                assert "GET" in r.headers["allow"]
        assert c.get("/dashboard/data.json?bucket=day").status_code == 200
        # Even a write slipped through its engine is refused by SQLite (mode=ro).
        with pytest.raises(OperationalError, match="readonly"), dashboard.engine.begin() as conn:
            conn.execute(text("DELETE FROM receipts"))
    assert _sha256(path) == before and path.stat().st_mtime_ns == mtime
    assert verify(url).ok


def test_a_check_reads_one_snapshot_of_a_ledger_being_written(ledger, tmp_path):
    import sqlite3

    _, path = ledger
    copy = tmp_path / "live.db"
    copy.write_bytes(path.read_bytes())
    engine = open_readonly(f"sqlite:///{copy}")
    count = text("SELECT count(*) FROM receipts")
    try:
        with engine.connect() as conn:
            before = conn.execute(count).scalar()
            writer = sqlite3.connect(copy)  # another process writes meanwhile
            with writer:
                writer.execute("DELETE FROM receipts WHERE id = 1")
            writer.close()
            assert conn.execute(count).scalar() == before  # heads and chains agree
        with engine.connect() as conn:
            assert conn.execute(count).scalar() == before - 1
    finally:
        engine.dispose()


def test_postgresql_sessions_are_read_only(tmp_path, monkeypatch, pg):
    from sqlalchemy.exc import InternalError

    from sprout.ledger.store import Ledger
    from tests.support.receipts import make_receipt

    monkeypatch.chdir(tmp_path)  # the ledger's spool for PostgreSQL: the working directory
    url = pg.create_database("dashboard")
    upgrade(url)
    with Ledger(url) as writer:
        for i in range(5):
            writer.append(make_receipt(i))
    dashboard = Dashboard(url)
    try:
        dashboard.check_schema()
        doc = dashboard.data()
        assert doc["totals"]["requests"] == 5
        assert doc["integrity"]["status"] == "ok" and doc["integrity"]["receipts"] == 5
        with (
            pytest.raises(InternalError, match="read-only transaction"),
            dashboard.engine.begin() as conn,
        ):
            conn.execute(text("DELETE FROM receipts"))
    finally:
        dashboard.close()
    assert verify(url).receipts == 5


def test_open_readonly_refuses_what_it_cannot_read_without_creating_it(tmp_path):
    missing = tmp_path / "nothing.db"
    with pytest.raises(ConfigError, match="no ledger at"):
        open_readonly(f"sqlite:///{missing}")
    assert not missing.exists()
    with pytest.raises(ConfigError, match="in-memory"):
        open_readonly("sqlite://")


def test_a_file_with_spaces_and_hashes_in_its_name_opens(ledger, tmp_path):
    _, path = ledger
    odd = tmp_path / "a b#1%.db"
    odd.write_bytes(path.read_bytes())
    dashboard = Dashboard(f"sqlite:///{odd}")
    try:
        assert dashboard.data(bucket="day")["totals"]["requests"] > 0
    finally:
        dashboard.close()


def test_the_dashboard_never_migrates(tmp_path):
    from alembic.script import ScriptDirectory

    from sprout.ledger.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    head = head_revisions()[0]
    script = ScriptDirectory.from_config(alembic_config(url))
    older = script.get_revision(head).down_revision
    upgrade(url, older)
    before = _sha256(tmp_path / "old.db")
    dashboard = Dashboard(url)
    try:
        with pytest.raises(ConfigError, match="sprout db upgrade"):
            dashboard.check_schema()
    finally:
        dashboard.close()
    assert current_revision(url) == older
    assert _sha256(tmp_path / "old.db") == before

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    dashboard = Dashboard(f"sqlite:///{empty}")
    try:
        with pytest.raises(ConfigError, match="no schema"):
            dashboard.check_schema()
    finally:
        dashboard.close()
    assert empty.read_bytes() == b""


# ---------------------------------------------------------------------- the page, the CLI


def test_the_page_loads_only_its_own_files(client):
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    html = page.text
    assert 'src="dashboard/static/dashboard.js"' in html
    for name, media_type in STATIC_FILES.items():
        r = client.get(f"/dashboard/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == media_type
        assert r.content == static_file(name)
    assert client.get("/dashboard/static/..%2Fdata.py").status_code == 404
    assert client.get("/dashboard/static/index.html").status_code == 404
    # No CDN, no other origin: the only URL in the script is the SVG namespace.
    script = static_file("dashboard.js").decode()
    assert re.findall(r"https?://[^\s\"']+", script) == ["http://www.w3.org/2000/svg"]
    assert not re.findall(r"https?://", html + static_file("dashboard.css").decode())
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "dashboard"


def test_cli_serves_the_ledger_read_only(ledger, monkeypatch, capsys):
    import uvicorn

    url, _ = ledger
    seen = {}

    def fake_run(app, **kwargs):
        seen.update(kwargs)
        with TestClient(app) as c:
            seen["status"] = c.get("/dashboard/data.json").status_code

    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert main(["dashboard", "--db", url, "--port", "8123"]) == 0
    assert seen == {"host": "127.0.0.1", "port": 8123, "log_level": "warning", "status": 200}
    assert "http://127.0.0.1:8123/dashboard" in capsys.readouterr().out


def test_cli_refuses_a_missing_ledger(tmp_path, capsys):
    missing = tmp_path / "missing.db"
    assert main(["dashboard", "--db", f"sqlite:///{missing}"]) == 2
    assert "no ledger at" in capsys.readouterr().err
    assert not missing.exists()


# ---------------------------------------------------------------------- on the proxy


def _chat(app, judged_records) -> None:
    controller = app.state.controller
    for record in judged_records[:3]:
        controller.chat([{"role": "user", "content": record.instruction}], tenant="acme")
    controller.ledger.flush()


@pytest.mark.parametrize("where", ["file", "memory"])
def test_the_proxy_serves_the_dashboard_when_enabled(tmp_path, judged_records, where):
    from sprout.server import create_app

    url = f"sqlite:///{tmp_path / 'proxy.db'}" if where == "file" else "sqlite://"
    settings = load_settings(env={}, db_url=url, server_dashboard=True)
    app = create_app(settings)
    with TestClient(app) as c:
        _chat(app, judged_records)
        assert c.get("/dashboard").status_code == 200
        doc = c.get("/dashboard/data.json").json()
        assert doc["totals"]["requests"] == 3
        assert [t["tenant"] for t in doc["tenants"]] == ["acme"]
        assert doc["integrity"]["status"] == "ok" and doc["integrity"]["receipts"] == 3
        assert c.post("/dashboard/data.json").status_code == 405
        # Not in the proxy's OpenAPI document.
        assert not any(p.startswith("/dashboard") for p in c.get("/openapi.json").json()["paths"])


def test_the_proxy_has_no_dashboard_by_default(tmp_path):
    from sprout.server import create_app

    settings = load_settings(env={}, db_url=f"sqlite:///{tmp_path / 'proxy.db'}")
    with TestClient(create_app(settings)) as c:
        assert c.get("/dashboard").status_code == 404
        assert c.get("/dashboard/data.json").status_code == 404
