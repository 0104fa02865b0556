"""The ledger on a real PostgreSQL server that this suite starts itself (tests/support/postgres.py).

Same schema through Alembic, several processes writing at once, chains that verify, report
totals that match, the server stopped mid-run under a writer that is then killed, and job
locks. The server is started once per session; each test gets a fresh database. If the
server cannot be started the tests fail (with the reason), they never skip.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from sprout.ledger.audit import ledger_report
from sprout.ledger.locks import job_lock
from sprout.ledger.migrate import current_revision, downgrade, head_revisions, upgrade
from sprout.ledger.retention import prune_prompts
from sprout.ledger.schema import metadata
from sprout.ledger.store import Ledger
from sprout.ledger.verify import verify
from tests.support.ledger_writers import SLACK_S, appended, kill, start_writer, wait_for
from tests.support.paths import REPO_ROOT
from tests.support.postgres import PostgresServer
from tests.support.receipts import edge_receipts, make_receipt


@pytest.fixture(autouse=True)
def _spool_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A PostgreSQL ledger spools to the working directory by default: not the repository's.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def pg_url(pg: PostgresServer, request: pytest.FixtureRequest) -> str:
    if not pg.running:  # a test that stopped the server and failed before restarting it
        pg.start()
    name = "t_" + re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:50]
    return pg.create_database(name)


def stored_ids(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(text("SELECT request_id FROM receipts")))
    finally:
        engine.dispose()


def test_schema_through_alembic_matches_the_models(pg_url: str) -> None:
    upgrade(pg_url)
    assert current_revision(pg_url) == head_revisions()[0]
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []
    with Ledger(pg_url, flush_interval_s=0.05) as led:
        led.append(make_receipt(1))
    downgrade(pg_url, "0001")  # and back down, and up again, with a receipt in
    assert current_revision(pg_url) == "0001"
    upgrade(pg_url)
    assert current_revision(pg_url) == head_revisions()[0]
    assert verify(pg_url).ok


def test_round_trip_verify_report_and_retention(pg_url: str) -> None:
    receipts = edge_receipts()
    with Ledger(pg_url, flush_interval_s=0.05) as led:
        for r in receipts:
            led.append(r)
        assert led.flush()
        back = {r.request_id: r for r in led.receipts()}
        led.add_verdict(receipts[0], receipts[0].directive, judge="gpt-4")
        led.add_sampled_prompt(
            "old", {"messages": ["hi"]}, created_at=datetime(2024, 1, 1, tzinfo=UTC)
        )
        led.add_sampled_prompt(
            "new", {"messages": ["hey"]}, created_at=datetime(2024, 3, 1, tzinfo=UTC)
        )
    assert back["naïve-€-✓"].tenant == "Zürich-租户"
    assert back["tz"].created_at == receipts[6].created_at
    assert back["eval"].purpose == "evaluation"
    result = verify(pg_url)
    assert result.ok, result.summary()
    report = ledger_report(pg_url, group_by="hour", filters={"tenant": "x' OR '1'='1"})
    assert report.totals.requests == 0
    report = ledger_report(pg_url, group_by="directive")
    assert report.totals.requests == len(receipts)
    assert report.totals.judged == 1 and report.totals.judge_preferred == 1
    assert prune_prompts(pg_url, 30, now=datetime(2024, 3, 2, tzinfo=UTC)) == 1
    assert verify(pg_url).ok


WRITE_N = r"""
import sys
from dataclasses import replace
sys.path.insert(0, sys.argv[1])
from tests.support.receipts import make_receipt
from sprout.ledger.store import Ledger

url, prefix, n, spool = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
with Ledger(url, flush_interval_s=0.05, batch_size=50, spool_path=spool) as ledger:
    for i in range(n):
        ledger.append(replace(make_receipt(i), request_id=f"{prefix}-{i:05d}"))
    assert ledger.flush(timeout_s=60)
    assert ledger.spooled() == 0
"""


def test_concurrent_writers_verify_and_report_totals_match(pg_url: str, tmp_path: Path) -> None:
    Ledger(pg_url).close()  # migrate once, up front
    n, writers = 400, 3
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITE_N,
                str(REPO_ROOT),
                pg_url,
                f"p{k}",
                str(n),
                str(tmp_path / f"s{k}"),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(writers)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    result = verify(pg_url)
    assert result.ok, result.summary()
    assert (result.chains, result.receipts) == (writers, n * writers)
    one = [make_receipt(i) for i in range(n)]
    report = ledger_report(pg_url, group_by="tenant")
    t = report.totals
    assert t.requests == n * writers == sum(r.requests for r in report.rows)
    assert t.energy_kwh == pytest.approx(writers * sum(r.energy_kwh for r in one), rel=1e-9)
    assert t.operational_g == pytest.approx(writers * sum(r.operational_g for r in one), rel=1e-9)
    with_cf = [r for r in one if r.baseline_g is not None]
    assert t.saved_g == pytest.approx(writers * sum(r.saving_g for r in with_cf), rel=1e-9)  # type: ignore[misc]
    assert t.baseline_n == writers * len(with_cf)


@pytest.mark.parametrize("mode", ["durable", "buffered"])
def test_server_stopped_mid_run_then_writer_killed(
    pg: PostgresServer, pg_url: str, tmp_path: Path, mode: str
) -> None:
    Ledger(pg_url).close()
    spool, progress = tmp_path / "spool.jsonl", tmp_path / "progress.txt"
    proc = start_writer(pg_url, spool, mode, progress, rate=300)
    try:
        wait_for(progress, 150, proc)
        before_stop = len(stored_ids(pg_url))
        pg.stop()  # the database goes away under the writer
        stopped = len(appended(progress))
        wait_for(progress, stopped + 250, proc)  # appends go on, never blocking
    finally:
        killed_at = kill(proc)
        pg.start()
    sent = appended(progress)
    assert before_stop > 0 and len(stored_ids(pg_url)) < len(sent)
    with Ledger(pg_url, spool_path=spool, flush_interval_s=0.05) as led:
        assert led.flush(timeout_s=60)
        assert led.spooled() == 0
    ids = stored_ids(pg_url)
    assert len(ids) == len(set(ids))  # replays added no duplicates
    lost = {rid: t for rid, t in sent.items() if rid not in set(ids)}
    if mode == "durable":
        assert not lost
    else:
        old = [rid for rid, t in lost.items() if t < killed_at - 0.2 - SLACK_S]
        assert not old, f"lost receipts older than the flush interval: {old[:5]}"
    result = verify(pg_url)
    assert result.ok, result.summary()


HOLD = r"""
import sys, time
from sprout.ledger.locks import job_lock
with job_lock(sys.argv[1], "judge") as acquired:
    print("held" if acquired else "busy", flush=True)
    time.sleep(60)
"""


def test_job_locks_are_cluster_wide(pg_url: str) -> None:
    with job_lock(pg_url, "poll") as first:
        assert first
        with job_lock(pg_url, "poll") as second:
            assert not second
        with job_lock(pg_url, "retrain") as other:
            assert other
    with job_lock(pg_url, "poll") as again:
        assert again
    proc = subprocess.Popen([sys.executable, "-c", HOLD, pg_url], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with job_lock(pg_url, "judge") as taken:
            assert not taken  # another process (replica) holds it
    finally:
        proc.kill()
        proc.wait(timeout=10)
    start = time.monotonic()
    with job_lock(pg_url, "judge", wait_s=10) as taken:
        assert taken  # released by the server when the holder died
    assert time.monotonic() - start < 10


def test_tampering_is_caught_on_postgres(pg_url: str) -> None:
    with Ledger(pg_url, flush_interval_s=0.05) as led:
        for i in range(20):
            led.append(replace(make_receipt(i), request_id=f"r{i}"))
        assert led.flush()
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE receipts SET tenant = 'someone-else' WHERE request_id = 'r3'"))
        conn.execute(text("DELETE FROM receipts WHERE request_id = 'r19'"))
    engine.dispose()
    result = verify(pg_url, check_rollups=False)
    assert [(p.kind, p.request_id) for p in result.problems][:1] == [("altered", "r3")]
    assert result.problems[-1].kind == "truncated"


def test_signed_checkpoints_on_postgres(pg_url: str, tmp_path: Path) -> None:
    from sprout.ledger.attest import check_checkpoints, take_checkpoint
    from sprout.ledger.keys import generate_key_files, load_private_key, load_public_key
    from tests.support.ledger_tools import chain_ids, rechain

    chains = []
    for start in (0, 60):
        with Ledger(pg_url, flush_interval_s=0.05, durability="buffered") as led:
            for i in range(start, start + 60):
                led.append(replace(make_receipt(i), request_id=f"r{i}"))
            assert led.flush()
            chains.append(led.chain_id)
    key_path, pub_path, _ = generate_key_files(tmp_path / "k.pem")
    key, pub = load_private_key(str(key_path)), load_public_key(pub_path)
    first = take_checkpoint(pg_url, key)
    with Ledger(pg_url, flush_interval_s=0.05, durability="buffered") as led:
        led.append(replace(make_receipt(500), request_id="r500"))
        assert led.flush()
    second = take_checkpoint(pg_url, key, previous=first)  # only the new rows are read
    assert len(second.chains) == 3 and second.receipts == 121
    assert {m.chain_id: m for m in second.chains if m.chain_id in chains} == {
        m.chain_id: m for m in first.chains
    }

    def checked() -> set[str]:
        result = verify(pg_url, check_rollups=False)
        check_checkpoints(pg_url, [("cp1", first), ("cp2", second)], pub, result)
        return {p.kind for p in result.problems if p.checkpoint}

    assert checked() == set()
    ids = chain_ids(pg_url, chains[0])
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM receipts WHERE id = :id"), {"id": ids[10]})
    engine.dispose()
    rechain(pg_url, chains[0], ids[:10] + ids[11:])  # a forger's consistent rewrite
    assert verify(pg_url).ok
    assert checked() == {"deleted", "head", "rollup"}
