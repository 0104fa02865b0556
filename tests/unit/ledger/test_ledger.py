"""The SQL ledger: migrations, the buffered writer, spooling and replay, helpers."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import replace
from datetime import timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.exc import OperationalError

from sprout.carbon.base import CarbonReading
from sprout.errors import LedgerError
from sprout.ledger import migrate
from sprout.ledger.migrate import (
    current_revision,
    describe_error,
    ensure_schema,
    head_revisions,
    mask_url,
    upgrade,
)
from sprout.ledger.schema import metadata
from sprout.ledger.store import Ledger, params_sha256
from tests.support.receipts import T0, make_receipt


def file_url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "ledger" / "ledger.db"
    return file_url(path), path


@pytest.fixture
def ledger(db: tuple[str, Path]) -> Ledger:
    led = Ledger(db[0], flush_interval_s=0.05)
    yield led  # type: ignore[misc]
    led.close()


def stored_count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM receipts").fetchone()[0]


# ------------------------------------------------------------------- migrations


def test_upgrade_creates_tables_at_head(db: tuple[str, Path]) -> None:
    url, path = db
    assert current_revision(url) is None
    assert not path.exists()  # looking must not create the file
    upgrade(url)
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {
        "receipts",
        "carbon_readings",
        "policy_versions",
        "ledger_chains",
        "receipt_rollups",
        "verdicts",
        "sampled_prompts",
        "alembic_version",
    } <= tables
    # One head (revisions added side by side must be chained), and the database is at it.
    heads = head_revisions()
    assert len(heads) == 1
    assert current_revision(url) == heads[0]


def test_models_match_migrations(db: tuple[str, Path]) -> None:
    url, _ = db
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_ensure_schema_is_idempotent(db: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, path = db
    calls: list[str] = []
    real_upgrade = migrate.upgrade

    def counting_upgrade(db_url: str, revision: str = "head", **kw: object) -> None:
        calls.append(revision)
        real_upgrade(db_url, revision, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(migrate, "upgrade", counting_upgrade)
    ensure_schema(url)
    ensure_schema(url)
    assert path.parent.is_dir()
    assert current_revision(url) == head_revisions()[0]
    assert len(calls) == 1  # the second call found the schema at head


def test_ensure_schema_refuses_unknown_revision(db: tuple[str, Path]) -> None:
    url, path = db
    ensure_schema(url)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00dfeed'")
    with pytest.raises(LedgerError, match=r"f00dfeed.*newer sprout"):
        ensure_schema(url)


# ------------------------------------------------------------------- buffered writer


def test_append_flush_round_trip(ledger: Ledger, db: tuple[str, Path]) -> None:
    originals = [make_receipt(i) for i in range(1000)]
    # One receipt arrives in another timezone: it must come back as the same instant in UTC.
    originals[7] = replace(
        originals[7], created_at=originals[7].created_at.astimezone(timezone(timedelta(hours=2)))
    )
    for r in originals:
        ledger.append(r)
    assert ledger.flush(timeout_s=10)
    assert ledger.pending() == 0
    assert ledger.count_receipts() == 1000 == stored_count(db[1])
    back = ledger.receipts()
    assert back == originals  # every field, in insertion order
    for r in (back[0], back[7], back[999]):
        assert r.created_at.utcoffset() == timedelta(0)
        assert r.ci_time.tzinfo is not None and r.ci_time.utcoffset() == timedelta(0)
    assert back[1].tenant == "tenant-1" and back[0].tenant is None
    # The prefill/decode split round-trips, and so does its absence.
    assert back[3].prefill_kwh == originals[3].prefill_kwh is not None
    assert back[3].prefill_kwh + back[3].decode_kwh == pytest.approx(back[3].energy_kwh)
    assert back[4].prefill_kwh is None and back[4].decode_kwh is None
    # since is inclusive, until exclusive; bounds in another timezone compare as instants.
    plus2 = timezone(timedelta(hours=2))
    since, until = originals[10].created_at.astimezone(plus2), originals[20].created_at
    window = ledger.receipts(since=since, until=until)
    assert [r.request_id for r in window] == [f"req-{i:06d}" for i in range(10, 20)]
    assert len(ledger.receipts(limit=5)) == 5


def test_batches_commit_without_flush(db: tuple[str, Path]) -> None:
    with Ledger(db[0], flush_interval_s=0.02, batch_size=10) as led:
        for i in range(25):
            led.append(make_receipt(i))
        deadline = time.monotonic() + 5
        while led.count_receipts() < 25 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert led.count_receipts() == 25


def test_outage_spools_then_replays_without_duplicates(
    ledger: Ledger, db: tuple[str, Path]
) -> None:
    _, path = db
    for i in range(50):
        ledger.append(make_receipt(i))
    assert ledger.flush()
    assert ledger.count_receipts() == 50

    # The table disappears behind the ledger's back.
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE receipts RENAME TO receipts_hidden")
    for i in range(50, 350):
        # Must not raise; that it never waits on the database is
        # test_append_does_not_block_while_database_hangs's subject.
        ledger.append(make_receipt(i))
    assert ledger.flush()
    assert ledger.pending() == 0
    assert ledger.spooled() == 300
    lines = ledger.spool_path.read_text().splitlines()
    assert sorted(json.loads(line)["request_id"] for line in lines) == [
        f"req-{i:06d}" for i in range(50, 350)
    ]
    # A replay after a partial earlier success must not duplicate: spool copies of stored ones.
    with ledger.spool_path.open("a") as fh:
        for i in range(10):
            fh.write(json.dumps(make_receipt(i).to_json_dict()) + "\n")

    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE receipts_hidden RENAME TO receipts")
    ledger.append(make_receipt(350))
    assert ledger.flush()
    assert ledger.spooled() == 0
    assert not ledger.spool_path.exists()
    assert ledger.count_receipts() == 351
    ids = [r.request_id for r in ledger.receipts()]
    assert len(set(ids)) == len(ids) == 351
    assert not ledger.rejected_path.exists()  # the copies were skipped, not refused


@pytest.mark.parametrize("durability", ["buffered", "durable"])
def test_append_does_not_block_while_database_hangs(
    db: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    ledger = Ledger(db[0], flush_interval_s=0.05, durability=durability)
    hanging, release = threading.Event(), threading.Event()
    inserts: list[int] = []

    def hanging_insert(*args: object, **kwargs: object) -> None:
        inserts.append(1)
        hanging.set()
        release.wait(30)  # the "database" hangs until the test has appended
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(ledger, "_insert_receipts", hanging_insert)
    ledger.append(make_receipt(0))
    assert hanging.wait(5)  # the writer is now stuck in the "database"
    for i in range(1, 400):
        ledger.append(make_receipt(i))
    # Every append returned while the writer was still stuck in its first insert: none
    # waited on the database (a durable one waits only for its journal's disk sync).
    assert len(inserts) == 1
    release.set()
    assert ledger.flush(timeout_s=20)
    assert ledger.spooled() == 400

    monkeypatch.undo()
    assert ledger.flush()
    assert ledger.spooled() == 0
    assert ledger.count_receipts() == 400
    ledger.close()


def test_outage_is_logged_with_its_cause(
    ledger: Ledger, db: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with sqlite3.connect(db[1]) as conn:
        conn.execute("DROP TABLE receipts")
    with caplog.at_level("WARNING", logger="sprout.ledger"):
        ledger.append(make_receipt(1))
        assert ledger.flush()
    assert ledger.spooled() == 1
    assert any("no such table" in rec.getMessage() for rec in caplog.records)


def test_bad_row_is_set_aside_not_blocking_others(ledger: Ledger) -> None:
    receipts = [make_receipt(i) for i in range(5)]
    receipts[2] = replace(receipts[2], created_at="not a datetime")  # type: ignore[arg-type]
    for r in receipts:
        ledger.append(r)
    assert ledger.flush()
    assert ledger.count_receipts() == 4
    assert ledger.spooled() == 0
    rejected = [json.loads(x) for x in ledger.rejected_path.read_text().splitlines()]
    assert [r["request_id"] for r in rejected] == ["req-000002"]
    assert rejected[0]["_error"]


def test_append_never_raises_and_close_is_idempotent(db: tuple[str, Path]) -> None:
    led = Ledger(db[0], flush_interval_s=0.05)
    led.append("not a receipt")  # type: ignore[arg-type]
    led.append(make_receipt(1))
    led.close()
    led.close()
    assert led.count_receipts() == 1
    led.append(make_receipt(2))  # after close: straight to the spool
    assert led.spooled() == 1
    assert led.flush() is True
    # The next ledger on the same file replays what the closed one spooled.
    with Ledger(db[0], flush_interval_s=0.05) as again:
        assert again.spooled() == 1
        assert again.flush()
        assert again.spooled() == 0
        assert [r.request_id for r in again.receipts()] == ["req-000001", "req-000002"]


def test_spool_left_by_a_crash_is_replayed_and_torn_line_kept(db: tuple[str, Path]) -> None:
    url, path = db
    path.parent.mkdir(parents=True)
    spool = path.with_name(path.name + ".spool.jsonl")
    good = json.dumps(make_receipt(1).to_json_dict())
    spool.write_text(good + "\n" + good[:40])  # the process died mid-write
    with Ledger(url, flush_interval_s=0.05) as led:
        assert led.spool_path == spool
        assert led.spooled() == 2
        assert led.flush()
        assert [r.request_id for r in led.receipts()] == ["req-000001"]
        assert led.spooled() == 0
        rejected = [json.loads(x) for x in led.rejected_path.read_text().splitlines()]
    assert [r["_line"].strip() for r in rejected] == [good[:40]]
    assert "unreadable" in rejected[0]["_error"]


def test_in_memory_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Ledger("sqlite://", flush_interval_s=0.05) as led:
        for i in range(20):
            led.append(make_receipt(i))
        assert led.flush()
        assert led.count_receipts() == 20
        assert led.spool_path == tmp_path / "sprout-ledger.spool.jsonl"


# ------------------------------------------------------------------- synchronous helpers


def test_policy_versions_round_trip_and_tamper_check(ledger: Ledger, db: tuple[str, Path]) -> None:
    assert ledger.latest_policy_version() is None
    params = {"mix": {"L0": 0.25, "L1": 0.5, "L2": 0.25}, "xi": 0.1, "levels": ["L0", "L1"]}
    first = ledger.save_policy_version("sprout-lp", params, {"quality": 1.02}, note="nightly")
    second = ledger.save_policy_version("contextual", {"w": [1.5, -2.0]}, {})
    assert second > first

    latest = ledger.latest_policy_version("sprout-lp")
    assert latest is not None
    assert (latest.id, latest.kind, latest.params, latest.metrics) == (
        first,
        "sprout-lp",
        params,
        {"quality": 1.02},
    )
    assert latest.sha256 == params_sha256(params) and len(latest.sha256) == 64
    assert latest.created_at.tzinfo is not None
    newest = ledger.latest_policy_version()
    assert newest is not None and newest.id == second
    assert ledger.latest_policy_version("nope") is None

    with sqlite3.connect(db[1]) as conn:
        conn.execute(
            "UPDATE policy_versions SET params = ? WHERE id = ?",
            (json.dumps({**params, "xi": 0.9}), first),
        )
    with pytest.raises(LedgerError, match="altered"):
        ledger.latest_policy_version("sprout-lp")

    with pytest.raises(LedgerError, match="not JSON"):
        ledger.save_policy_version("sprout-lp", {"xi": float("nan")}, {})


def test_add_readings_ignores_duplicates(ledger: Ledger, db: tuple[str, Path]) -> None:
    hour = timedelta(hours=1)
    readings = [CarbonReading("GB", 100.0 + h, T0 + h * hour, "trace") for h in range(3)]
    twice = readings[0]
    same_instant_other_tz = CarbonReading(
        "GB", 100.0, (T0 + hour).astimezone(timezone(timedelta(hours=-5))), "trace"
    )
    assert ledger.add_readings([*readings, twice]) == 3
    assert ledger.add_readings([*readings, same_instant_other_tz]) == 0
    forecast = replace(readings[0], is_forecast=True)
    other_zone = replace(readings[0], zone="FR")
    assert ledger.add_readings([forecast, other_zone, readings[1]]) == 2
    with sqlite3.connect(db[1]) as conn:
        assert conn.execute("SELECT count(*) FROM carbon_readings").fetchone()[0] == 5
    assert ledger.add_readings([]) == 0


# ------------------------------------------------------------------- errors and masking


def test_mask_url_and_describe_error_hide_password() -> None:
    url = "postgresql+psycopg://u:secret@127.0.0.1:1/x"
    assert mask_url(url) == "postgresql+psycopg://u:***@127.0.0.1:1/x"
    assert "secret" not in mask_url("not a url://u:secret@host")
    described = describe_error(RuntimeError("login u:secret failed"), url)
    assert "secret" not in described and "RuntimeError" in described


def test_ledger_error_masks_password_of_unreachable_database() -> None:
    # Port 1 refuses at once; without psycopg installed the driver import fails instead.
    url = "postgresql+psycopg://u:secret@127.0.0.1:1/x?connect_timeout=2"
    with pytest.raises(LedgerError) as info:
        Ledger(url)
    message = str(info.value)
    assert "secret" not in message
    assert "u:***@127.0.0.1:1/x" in message


def test_bad_settings_are_refused(db: tuple[str, Path]) -> None:
    from sprout.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size"):
        Ledger(db[0], batch_size=0)
    with pytest.raises(ConfigError, match="flush_interval_s"):
        Ledger(db[0], flush_interval_s=0)
