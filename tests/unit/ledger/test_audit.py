"""Audit reports, plots, retention and job locks over a SQLite ledger."""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sprout.cli import main
from sprout.errors import ConfigError, LedgerError
from sprout.ledger.audit import ledger_report, parse_time
from sprout.ledger.locks import job_lock
from sprout.ledger.retention import prune_prompts
from sprout.ledger.store import Ledger
from sprout.ledger.verify import verify
from sprout.receipt import Receipt
from tests.support.receipts import T0, make_receipt

INJECTIONS = (
    "x' OR '1'='1",
    "GB'; DROP TABLE receipts; --",
    '" OR ""="',
    "%' OR 1=1 --",
    "') UNION SELECT * FROM ledger_chains --",
)


def varied(i: int) -> Receipt:
    """Receipts over 3 hours: two zones, three directives, tenants, two energy sources,
    counterfactuals from two sources or none, and evaluation overhead."""
    base = make_receipt(i)
    has_baseline = i % 5 != 0
    return replace(
        base,
        created_at=T0 + timedelta(seconds=37 * i),
        ci_zone="GB" if i % 4 else "FR",
        energy_source="recorded" if i % 3 else "estimated",
        baseline_g=(0.02 + 0.001 * (i % 7)) if has_baseline else None,
        baseline_energy_kwh=1e-4 if has_baseline else None,
        baseline_source=("recorded" if i % 2 else "estimated") if has_baseline else None,
        purpose="evaluation" if i % 11 == 0 else "serve",
        tenant=f"tenant-{i % 3}" if i % 6 else None,
        operational_g=0.003 * (i % 9),
    )


RECEIPTS = [varied(i) for i in range(300)]


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger(url, flush_interval_s=0.05, batch_size=64) as led:
        for r in RECEIPTS:
            led.append(r)
        assert led.flush()
    return url


def expected_totals(receipts: list[Receipt]) -> dict[str, object]:
    serve = [r for r in receipts if r.purpose == "serve"]
    with_cf = [r for r in serve if r.baseline_g is not None]
    kwh: dict[str, float] = {}
    for r in receipts:
        kwh[r.energy_source] = kwh.get(r.energy_source, 0.0) + r.energy_kwh
    by_source: dict[str, int] = {}
    for r in with_cf:
        by_source[r.baseline_source or "unknown"] = (
            by_source.get(r.baseline_source or "unknown", 0) + 1
        )
    evaluation = [r for r in receipts if r.purpose == "evaluation"]
    return {
        "requests": len(receipts),
        "energy_kwh": sum(r.energy_kwh for r in receipts),
        "kwh_by_source": kwh,
        "operational_g": sum(r.operational_g for r in receipts),
        "embodied_g": sum(r.embodied_g for r in receipts),
        "saved_g": sum(r.baseline_g - r.total_g for r in with_cf),  # type: ignore[operator]
        "baseline_by_source": by_source,
        "no_baseline": len(serve) - len(with_cf),
        "eval_requests": len(evaluation),
        "eval_g": sum(r.total_g for r in evaluation),
        "output_tokens": sum(r.output_tokens for r in receipts),
    }


def close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


# ------------------------------------------------------------------- report


@pytest.mark.parametrize("group_by", ["day", "hour", "zone", "directive", "variant", "tenant"])
def test_report_totals_match_the_receipts(url: str, group_by: str) -> None:
    report = ledger_report(url, group_by=group_by)
    want = expected_totals(RECEIPTS)
    t = report.totals
    assert t.requests == want["requests"] == sum(r.requests for r in report.rows)
    assert close(t.energy_kwh, want["energy_kwh"])  # type: ignore[arg-type]
    assert set(t.kwh_by_source) == {"recorded", "estimated"}
    for source, kwh in want["kwh_by_source"].items():  # type: ignore[attr-defined]
        assert close(t.kwh_by_source[source], kwh)
    assert close(t.operational_g, want["operational_g"])  # type: ignore[arg-type]
    assert close(t.embodied_g, want["embodied_g"])  # type: ignore[arg-type]
    assert close(t.saved_g, want["saved_g"])  # type: ignore[arg-type]
    assert t.baseline_by_source == want["baseline_by_source"]
    assert t.no_baseline == want["no_baseline"] > 0
    assert t.eval_requests == want["eval_requests"] > 0
    assert close(t.eval_g, want["eval_g"])  # type: ignore[arg-type]
    assert close(t.net_saved_g, want["saved_g"] - want["eval_g"])  # type: ignore[operator]
    joules = want["energy_kwh"] * 3_600_000  # type: ignore[operator]
    assert close(t.tokens_per_j, want["output_tokens"] / joules)  # type: ignore[operator]
    if group_by == "hour":
        assert [r.group for r in report.rows] == [
            "2024-03-01T12:00Z",
            "2024-03-01T13:00Z",
            "2024-03-01T14:00Z",
            "2024-03-01T15:00Z",
        ]
    if group_by == "zone":
        assert {r.group for r in report.rows} == {"GB", "FR"}
    if group_by == "tenant":
        assert "(none)" in {r.group for r in report.rows}


@pytest.mark.parametrize(
    ("since", "until"),
    [
        (T0 + timedelta(minutes=17, seconds=3), T0 + timedelta(hours=2, minutes=41)),
        (T0 + timedelta(hours=1), T0 + timedelta(hours=2)),  # whole hours only
        (T0 + timedelta(minutes=5), T0 + timedelta(minutes=50)),  # inside one hour
        (None, T0 + timedelta(hours=1, minutes=30)),
        (T0 + timedelta(hours=1, minutes=30), None),
    ],
)
def test_report_window_edges(url: str, since: datetime | None, until: datetime | None) -> None:
    inside = [
        r
        for r in RECEIPTS
        if (since is None or r.created_at >= since) and (until is None or r.created_at < until)
    ]
    report = ledger_report(url, since=since, until=until, group_by="directive")
    want = expected_totals(inside)
    assert report.totals.requests == len(inside) > 0
    assert close(report.totals.energy_kwh, want["energy_kwh"])  # type: ignore[arg-type]
    assert close(report.totals.saved_g, want["saved_g"])  # type: ignore[arg-type]


def test_report_filters(url: str) -> None:
    report = ledger_report(url, group_by="day", filters={"zone": "FR", "purpose": "serve"})
    inside = [r for r in RECEIPTS if r.ci_zone == "FR" and r.purpose == "serve"]
    assert report.totals.requests == len(inside)
    none_tenant = ledger_report(url, filters={"tenant": ""}, since=T0 + timedelta(minutes=7))
    assert none_tenant.totals.requests == sum(
        1 for r in RECEIPTS if r.tenant is None and r.created_at >= T0 + timedelta(minutes=7)
    )


def test_report_filters_are_bound_parameters(url: str, tmp_path: Path) -> None:
    for value in INJECTIONS:
        for name in ("tenant", "zone", "directive", "variant", "purpose"):
            report = ledger_report(
                url, group_by="tenant", filters={name: value}, since=T0 + timedelta(seconds=1)
            )
            assert report.totals.requests == 0, (name, value)
    # The tables are all still there, and a value with quotes is matched literally.
    tricky = replace(make_receipt(999), request_id="tricky", tenant=INJECTIONS[1])
    with Ledger(url, flush_interval_s=0.05) as led:
        led.append(tricky)
        assert led.flush()
    report = ledger_report(url, group_by="tenant", filters={"tenant": INJECTIONS[1]})
    assert report.totals.requests == 1 and report.rows[0].group == INJECTIONS[1]
    assert verify(url).ok


def test_cli_report_with_injection_strings(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["ledger", "report", "--db", url, "--format", "csv", "--group-by", "tenant"]
    assert main([*args, "--tenant", INJECTIONS[0], "--zone", INJECTIONS[1]]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[-1]["group"] == "total" and rows[-1]["requests"] == "0"
    assert main(["ledger", "report", "--db", url, "--since", INJECTIONS[1]]) == 2
    assert "--since" in capsys.readouterr().err
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("SELECT count(*) FROM receipts").fetchone()[0] == len(RECEIPTS)


def test_report_formats(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["ledger", "report", "--db", url, "--group-by", "zone"]
    assert main([*base, "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "kWh recorded" in table and "kWh estimated" in table and "saved gCO2e" in table
    assert "judge pref" in table and "n/a" in table
    assert "no counterfactual and are left out of the savings" in table
    assert "judge-preferred share: n/a" in table

    assert main([*base, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["group"] for r in rows] == ["FR", "GB", "total"]
    assert {"kwh_recorded", "kwh_estimated", "cf_recorded", "cf_estimated"} <= set(rows[0])
    assert rows[-1]["judge_preferred_share"] == "n/a"
    assert int(rows[-1]["requests"]) == len(RECEIPTS)

    assert main([*base, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["requests"] == len(RECEIPTS)
    assert doc["totals"]["judge"]["preferred_share"] is None
    assert doc["totals"]["savings"]["counterfactual_by_source"].keys() == {"recorded", "estimated"}
    assert doc["verdicts_recorded"] is False


def test_judge_preferred_share_from_verdicts(url: str) -> None:
    with Ledger(url) as led:
        served = {r.request_id: r for r in RECEIPTS[:40] if r.purpose == "serve"}
        for n, r in enumerate(served.values()):
            preferred = r.directive if n % 4 else "L0-other"  # 3 of 4 prefer the served one
            led.add_verdict(r, preferred, judge="gpt-4", detail={"order": [1, 0]})
        first = next(iter(served.values()))
        led.add_verdict(first, first.directive, judge="gpt-4")  # latest verdict wins
        led.add_verdict(RECEIPTS[41], None, judge="gpt-4")  # no usable verdict: not judged
    report = ledger_report(url, group_by="directive")
    t = report.totals
    assert t.judged == len(served)
    assert t.judge_preferred == sum(1 for n in range(len(served)) if n % 4) + 1
    assert report.verdicts_recorded
    assert sum(r.judged for r in report.rows) == t.judged


def test_no_counterfactual_is_not_zero_savings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with Ledger(url, flush_interval_s=0.05) as led:
        for i in range(0, 10, 2):  # even receipts carry no baseline
            led.append(make_receipt(i))
        assert led.flush()
    report = ledger_report(url)
    assert report.totals.saved_g is None and report.totals.no_baseline == 5
    assert "0 of 5 served requests" in report.notes[0]


def test_report_sums_the_prefill_decode_split(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = [r for r in RECEIPTS if r.prefill_kwh is not None]
    assert 0 < len(split) < len(RECEIPTS)
    # The whole ledger (rollups only), then a window whose edge falls inside an hour.
    for since in (None, T0 + timedelta(minutes=17, seconds=5)):
        t = ledger_report(url, since=since, group_by="directive").totals
        chosen = [r for r in split if since is None or r.created_at >= since]
        assert t.split_n == len(chosen)
        assert close(t.prefill_kwh, sum(r.prefill_kwh or 0.0 for r in chosen))
        assert close(t.decode_kwh, sum(r.decode_kwh or 0.0 for r in chosen))
    assert main(["ledger", "report", "--db", url, "--format", "csv"]) == 0
    total = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))[-1]
    assert close(float(total["prefill_kwh"]), sum(r.prefill_kwh or 0.0 for r in split))
    assert main(["ledger", "report", "--db", url, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["energy_split"]["requests"] == len(split)
    assert f"{len(split)} of {len(RECEIPTS)} requests have one" in " ".join(doc["notes"])
    # Without any split: no such columns, and null (not zero) kWh.
    bare = f"sqlite:///{tmp_path / 'bare.db'}"
    with Ledger(bare, flush_interval_s=0.05) as led:
        led.append(make_receipt(1))
        assert led.flush()
    assert main(["ledger", "report", "--db", bare, "--format", "csv"]) == 0
    assert "prefill_kwh" not in capsys.readouterr().out
    assert main(["ledger", "report", "--db", bare, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["energy_split"] == {"requests": 0, "prefill_kwh": None, "decode_kwh": None}


def test_bad_report_arguments() -> None:
    with pytest.raises(ConfigError, match="group-by"):
        ledger_report("sqlite://", group_by="week")
    with pytest.raises(ConfigError, match="filter"):
        ledger_report("sqlite://", filters={"model": "x"})
    with pytest.raises(ConfigError, match="empty"):
        ledger_report("sqlite://", since=T0, until=T0)
    with pytest.raises(ConfigError, match="--until"):
        parse_time("yesterday", option="--until")
    assert parse_time("2024-03-01") == datetime(2024, 3, 1, tzinfo=UTC)
    assert parse_time("2024-03-01T13:00:00+01:00") == datetime(2024, 3, 1, 12, tzinfo=UTC)


# ------------------------------------------------------------------- plot


def test_plot_draws_a_png(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plots" / "ledger.png"
    assert main(["ledger", "plot", "--db", url, "--out", str(out), "--bucket", "hour"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert str(out) in capsys.readouterr().out


# ------------------------------------------------------------------- retention


def test_prune_deletes_old_prompts_and_keeps_the_chain(url: str) -> None:
    now = T0 + timedelta(days=40)
    with Ledger(url) as led:
        for i, r in enumerate(RECEIPTS[:30]):
            age = timedelta(days=(i % 6) * 10)  # 0, 10, ... 50 days old
            assert led.add_sampled_prompt(
                r.request_id, [{"role": "user", "content": f"prompt {i}"}], created_at=now - age
            )
        assert not led.add_sampled_prompt(RECEIPTS[0].request_id, "again", created_at=now)
    before = verify(url)
    assert prune_prompts(url, 25, now=now, dry_run=True) == 15
    assert prune_prompts(url, 25, now=now) == 15  # 30, 40 and 50 days old
    assert prune_prompts(url, 25, now=now) == 0
    assert prune_prompts(url, 0, now=now) == 0  # 0 days: keep forever
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("SELECT count(*) FROM sampled_prompts").fetchone()[0] == 15
        assert conn.execute("SELECT count(*) FROM receipts").fetchone()[0] == len(RECEIPTS)
    after = verify(url)
    assert after.ok and after.heads_digest == before.heads_digest


def test_cli_prune(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Ledger(url) as led:
        led.add_sampled_prompt("a", "old", created_at=T0)
        led.add_sampled_prompt("b", "new", created_at=T0 + timedelta(days=29))
    args = ["ledger", "prune", "--db", url, "--now", "2024-04-01"]
    assert main([*args, "--dry-run"]) == 0
    assert "would delete 1" in capsys.readouterr().out
    assert main(args) == 0
    assert "deleted 1 sampled prompts" in capsys.readouterr().out
    assert main([*args, "--days", "0"]) == 0
    assert "kept forever" in capsys.readouterr().out
    assert main([*args, "--days", "-1"]) == 2


# ------------------------------------------------------------------- job locks

HOLD_LOCK = """
import sys, time
from sprout.ledger.locks import job_lock
with job_lock(sys.argv[1], "retrain") as acquired:
    print("held" if acquired else "busy", flush=True)
    time.sleep(60)
"""


def hold_lock_in_subprocess(url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, url], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_job_lock_sqlite(url: str) -> None:
    with job_lock(url, "poll") as first:
        assert first
        with job_lock(url, "poll") as second:
            assert not second
        with job_lock(url, "judge") as other_job:
            assert other_job
        start = time.monotonic()
        with job_lock(url, "poll", wait_s=0.2) as waited:
            assert not waited and time.monotonic() - start >= 0.2
    with job_lock(url, "poll") as again:
        assert again
    proc = hold_lock_in_subprocess(url)
    try:
        with job_lock(url, "retrain") as taken:
            assert not taken
    finally:
        proc.kill()  # a dead holder's lock is released by the kernel
        proc.wait(timeout=10)
    with job_lock(url, "retrain", wait_s=5) as taken:
        assert taken


def test_job_lock_in_memory_and_bad_names() -> None:
    with job_lock("sqlite://", "poll") as first, job_lock("sqlite://", "poll") as second:
        assert first and not second
    with pytest.raises(LedgerError, match="name"), job_lock("sqlite://", "../etc/passwd"):
        pass
    with pytest.raises(LedgerError, match="PostgreSQL or SQLite"), job_lock("mysql://h/db", "x"):
        pass
