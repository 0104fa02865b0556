"""Never lose a receipt: SIGKILL in buffered and durable mode, outages, journals, shared spools.

Writers run in subprocesses that are killed with SIGKILL; receipts are counted before and
after, against a progress file the writer extends after each ``append`` returns.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from sprout.ledger.store import Ledger
from sprout.ledger.verify import verify
from tests.support.ledger_tools import stored_ids
from tests.support.ledger_writers import SLACK_S, appended, kill, start_writer, wait_for
from tests.support.receipts import make_receipt

#: Servers, subprocesses or a browser: seconds per test (deselect with -m "not slow").
pytestmark = pytest.mark.slow


def run_and_kill(
    tmp_path: Path, mode: str, *, n: int = 600, during: Callable[[], None] | None = None
) -> tuple[Path, str, dict[str, float], float]:
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    Ledger(url).close()  # migrated up front: the writer starts writing at once
    progress = tmp_path / "progress.txt"
    proc = start_writer(url, tmp_path / "spool.jsonl", mode, progress)
    try:
        wait_for(progress, n // 2, proc)
        if during is not None:
            during()
        wait_for(progress, n, proc)
    finally:
        killed_at = kill(proc)
    return db, url, appended(progress), killed_at


# ------------------------------------------------------------------- SIGKILL


def test_buffered_sigkill_loses_at_most_the_last_flush_interval(tmp_path: Path) -> None:
    db, url, sent, killed_at = run_and_kill(tmp_path, "buffered")
    stored = set(stored_ids(db))
    lost = {rid: t for rid, t in sent.items() if rid not in stored}
    assert len(stored) >= len(sent) - len(lost) > 0
    # Every receipt appended before the last flush interval (plus scheduling slack) is in.
    too_old = {
        rid: round(killed_at - t, 3) for rid, t in lost.items() if t < killed_at - 0.2 - SLACK_S
    }
    assert not too_old, f"lost receipts older than the flush interval: {too_old}"
    assert len(lost) <= 400 * (0.2 + SLACK_S)
    result = verify(url)  # the killed writer's chain and head are consistent
    assert result.ok, result.summary()


def test_durable_sigkill_loses_nothing(tmp_path: Path) -> None:
    db, url, sent, _ = run_and_kill(tmp_path, "durable")
    journals = list(tmp_path.glob("spool.jsonl.journal-*"))
    assert len(journals) == 1  # the dead writer's journal, still there
    before = set(stored_ids(db))
    assert len(before) <= len(sent) + 1
    # The next ledger beside that spool adopts the journal and replays it.
    with Ledger(url, spool_path=tmp_path / "spool.jsonl", flush_interval_s=0.05) as led:
        assert led.flush(timeout_s=30)
        ids = stored_ids(db)
    assert set(sent) <= set(ids), f"missing: {sorted(set(sent) - set(ids))[:5]}"
    assert len(ids) == len(set(ids))  # replay skipped what was committed already
    assert not list(tmp_path.glob("spool.jsonl.journal-*"))
    result = verify(url)
    assert result.ok, result.summary()


def test_outage_then_sigkill_in_durable_mode(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"

    def outage() -> None:
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE receipts RENAME TO receipts_offline")

    _, url, sent, _ = run_and_kill(tmp_path, "durable", during=outage)
    with sqlite3.connect(db) as conn:
        during = conn.execute("SELECT count(*) FROM receipts_offline").fetchone()[0]
        conn.execute("ALTER TABLE receipts_offline RENAME TO receipts")
    assert during < len(sent)  # the rest waited in the spool and the journal
    with Ledger(url, spool_path=tmp_path / "spool.jsonl", flush_interval_s=0.05) as led:
        assert led.flush(timeout_s=30)
        assert led.spooled() == 0
        ids = stored_ids(db)
    assert set(sent) <= set(ids) and len(ids) == len(set(ids))
    assert verify(url).ok


# ------------------------------------------------------------------- durable journal


def test_durable_append_is_on_disk_before_it_returns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with Ledger(url, durability="durable", flush_interval_s=30) as led:
        journal = led.journal_path
        assert journal is not None and journal.exists()
        led.append(make_receipt(1))
        lines = journal.read_text().splitlines()  # before any flush
        assert [json.loads(x)["request_id"] for x in lines] == ["req-000001"]
        assert led.flush()
        assert journal.stat().st_size == 0  # committed: the journal is emptied
        led.append(make_receipt(2))
        assert journal.stat().st_size > 0
    assert not journal.exists()  # closed with everything committed
    assert verify(url).ok


def test_live_journals_are_left_alone_and_orphans_adopted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    spool = tmp_path / "spool.jsonl"
    orphan = tmp_path / "spool.jsonl.journal-deadbeef"
    orphan.write_text(json.dumps(make_receipt(7).to_json_dict()) + "\n" + '{"request_id": "torn')
    with (
        Ledger(url, spool_path=spool, durability="durable", flush_interval_s=30) as first,
        Ledger(url, spool_path=spool, durability="durable", flush_interval_s=30) as second,
    ):
        assert not orphan.exists()  # adopted by the first ledger
        first.append(make_receipt(1))
        second.append(make_receipt(2))
        live = {first.journal_path, second.journal_path}
        assert set(tmp_path.glob("spool.jsonl.journal-*")) == live
        assert first.flush() and second.flush()
        assert sorted(r.request_id for r in first.receipts()) == [
            "req-000001",
            "req-000002",
            "req-000007",
        ]
        rejected = first.rejected_path.read_text()
    assert "unreadable spool line" in rejected  # the torn line is kept aside, not lost
    assert verify(url).ok


def test_durability_setting_is_checked(tmp_path: Path) -> None:
    from sprout.config import load_settings
    from sprout.errors import ConfigError

    with pytest.raises(ConfigError, match="durability"):
        Ledger(f"sqlite:///{tmp_path / 'l.db'}", durability="paranoid")
    with pytest.raises(ConfigError, match="ledger_durability"):
        load_settings(env={"SPROUT_LEDGER_DURABILITY": "sometimes"})
    assert load_settings(env={"SPROUT_LEDGER_DURABILITY": "durable"}).ledger_durability == (
        "durable"
    )


# ------------------------------------------------------------------- shared spool


def test_ledgers_sharing_a_spool_take_turns(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    url = f"sqlite:///{db}"
    spool = tmp_path / "shared.spool.jsonl"
    with (
        Ledger(url, spool_path=spool, flush_interval_s=0.05) as a,
        Ledger(url, spool_path=spool, flush_interval_s=0.05) as b,
    ):
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE receipts RENAME TO offline")
        for i in range(200):
            (a if i % 2 else b).append(make_receipt(i))
        assert a.flush() and b.flush()
        assert len(spool.read_text().splitlines()) == 200
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE offline RENAME TO receipts")
        assert a.flush() and b.flush()
        ids = stored_ids(db)
    assert sorted(ids) == [f"req-{i:06d}" for i in range(200)]
    assert not spool.exists()
    assert verify(url).ok
