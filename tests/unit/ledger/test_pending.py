"""Receipts waiting outside the database are never hidden: ``sprout ledger verify`` counts
the spool and the journals of killed processes, and ``sprout ledger recover`` brings them in
once each."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sprout.cli import main
from sprout.ledger.pending import recover, scan_pending
from sprout.ledger.store import Ledger, default_spool_path
from tests.support.ledger_tools import stored_ids
from tests.support.paths import REPO_ROOT
from tests.support.receipts import make_receipt

#: A durable writer that appends receipts, commits none (long interval, huge batches) and
#: waits to be killed.
WRITER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.support.receipts import make_receipt
from sprout.ledger.store import Ledger

url, first, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ledger = Ledger(url, durability="durable", flush_interval_s=3600, batch_size=1_000_000)
for i in range(first, first + n):
    ledger.append(make_receipt(i))  # returns once the journal line is on disk
print("appended", flush=True)
time.sleep(600)
"""


def kill_durable_writer(url: str, first: int, n: int) -> None:
    """Run a durable writer in a subprocess, and SIGKILL it once ``n`` appends returned."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(REPO_ROOT), url, str(first), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "appended", proc.stderr.read() if proc.stderr else ""
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


@pytest.fixture
def ledger_db(tmp_path: Path) -> tuple[str, Path]:
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    with Ledger(url, flush_interval_s=0.05, durability="buffered") as led:
        for i in range(50):
            led.append(make_receipt(i))
        assert led.flush()
    return url, db


def verify_cli(url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["ledger", "verify", "--db", url, *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_killed_writer_and_spool_are_pending_until_recovered(
    ledger_db: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, db = ledger_db
    spool = default_spool_path(url)
    kill_durable_writer(url, 1000, 40)  # 40 receipts in its journal, none committed
    journals = list(db.parent.glob(f"{spool.name}.journal-*"))
    assert len(journals) == 1 and len(journals[0].read_text().splitlines()) == 40
    # A spool left by an outage: 10 new receipts, a copy of a stored one, a copy of a
    # journal line, and a line torn by a kill.
    lines = [json.dumps(make_receipt(i).to_json_dict()) for i in range(2000, 2010)]
    lines += [json.dumps(make_receipt(7).to_json_dict())]
    lines += [json.dumps(make_receipt(1003).to_json_dict())]
    spool.write_text("\n".join(lines) + '\n{"request_id": "torn')
    in_db = len(stored_ids(db))

    code, out = verify_cli(url, capsys)
    assert code == 3, out
    assert "OK: intact" not in out
    assert "chains intact" in out and "50 pending" not in out
    assert "50 receipt(s) pending in" in out and "run `sprout ledger recover`" in out
    assert str(spool) in out and str(journals[0]) in out and "left by a stopped process" in out
    assert "1 unreadable line(s)" in out
    code, out = verify_cli(url, capsys, "--json")
    doc = json.loads(out)
    assert doc["ok"] is True and doc["exit_code"] == 3 and doc["pending_receipts"] == 50
    assert {f["kind"]: f["pending"] for f in doc["pending"]["files"]} == {
        "spool": 11,  # 10 new + the journal copy (counted once, here); not the stored copy
        "journal": 39,
    }

    assert main(["ledger", "recover", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "recovered 50 of 50 pending receipt(s); 0 remain pending" in out
    assert "1 receipt(s) were refused" in out  # the torn line, kept aside with its reason

    ids = stored_ids(db)
    assert len(ids) == in_db + 50 == len(set(ids))  # each receipt once
    assert {f"req-{i:06d}" for i in (*range(1000, 1040), *range(2000, 2010))} <= set(ids)
    assert not spool.exists() and not list(db.parent.glob(f"{spool.name}.journal-*"))
    code, out = verify_cli(url, capsys)
    assert code == 0 and "OK: intact" in out, out
    assert "note: 1 receipt(s) the database refused are kept in" in out
    # A second recover finds nothing to do.
    assert main(["ledger", "recover", "--db", url]) == 0
    assert "recovered 0 of 0" in capsys.readouterr().out


def test_journal_lines_already_committed_are_not_pending(
    ledger_db: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # A kill between the commit and the journal's truncation leaves stored receipts in it.
    url, _ = ledger_db
    spool = default_spool_path(url)
    journal = spool.with_name(f"{spool.name}.journal-0123456789abcdef")
    journal.write_text("".join(json.dumps(make_receipt(i).to_json_dict()) + "\n" for i in (1, 2)))
    report = scan_pending(url, spool)
    assert report.pending == 0 and report.files[0].lines == 2
    code, out = verify_cli(url, capsys)
    assert code == 0 and "OK: intact" in out
    result = recover(url, spool)
    assert (result.recovered, result.remaining) == (0, 0) and not journal.exists()


def test_live_journals_are_in_flight_not_pending(
    ledger_db: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, db = ledger_db
    with Ledger(url, durability="durable", flush_interval_s=3600, batch_size=10**6) as live:
        for i in range(500, 503):
            live.append(make_receipt(i))
        code, out = verify_cli(url, capsys)
        assert code == 0, out
        assert "note: 3 receipt(s) in flight in journals of running ledgers" in out
        result = recover(url, live.spool_path)  # a live journal is left to its ledger
        assert result.after.in_flight == 3 and result.remaining == 0
    assert {"req-000500", "req-000502"} <= set(stored_ids(db))  # committed on close
    code, out = verify_cli(url, capsys)
    assert code == 0 and "in flight" not in out


def test_recover_reports_what_remains_while_the_database_refuses(
    ledger_db: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, db = ledger_db
    spool = default_spool_path(url)
    spool.write_text(
        "".join(
            json.dumps(replace(make_receipt(i), request_id=f"s-{i}").to_json_dict()) + "\n"
            for i in range(5)
        )
    )
    with sqlite3.connect(db) as conn:  # the table is unusable: replay fails, nothing is lost
        conn.execute("ALTER TABLE receipts RENAME TO hidden")
    result_code = main(["ledger", "recover", "--db", url])
    captured = capsys.readouterr()
    assert result_code == 1, captured.out + captured.err
    assert spool.exists() and len(spool.read_text().splitlines()) == 5
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE hidden RENAME TO receipts")
    assert main(["ledger", "recover", "--db", url]) == 0
    assert "recovered 5 of 5" in capsys.readouterr().out


def test_settings_name_the_spool(
    ledger_db: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = ledger_db
    spool = tmp_path / "elsewhere" / "receipts.spool.jsonl"
    spool.parent.mkdir()
    spool.write_text(json.dumps(make_receipt(900).to_json_dict()) + "\n")
    config = tmp_path / "sprout.toml"
    config.write_text(f'ledger_spool = "{spool}"\n')
    code, out = verify_cli(url, capsys)
    assert code == 0  # not the default spool: nothing pending there
    code, out = verify_cli(url, capsys, "--config", str(config))
    assert code == 3 and f"1 receipt(s) pending in {spool} (1)" in out
    assert main(["ledger", "recover", "--db", url, "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recovered"] == 1
