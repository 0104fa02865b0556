"""Hash chains: the encoding, the writer's fast path, and tampering caught by verify."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Column, DateTime, MetaData, Table, create_engine, insert, update
from sqlalchemy.dialects import postgresql, sqlite

from sprout.cli import main
from sprout.ledger._rows import make_preparer as _make_preparer
from sprout.ledger._rows import prepared_record as _prepared_record
from sprout.ledger.chain import (
    CURRENT,
    ENCODING_V1,
    ENCODING_V2,
    ENCODING_V3,
    FIELD_KINDS_V1,
    GENESIS_HASH,
    HASH_VERSION,
    HASHED_FIELDS,
    ChainHasher,
    canonical_content,
    receipt_row_hash,
    row_hash,
)
from sprout.ledger.migrate import downgrade, upgrade
from sprout.ledger.schema import ledger_chains_table, receipts_table
from sprout.ledger.store import Ledger
from sprout.ledger.verify import verify
from sprout.receipt import Receipt
from tests.support.receipts import edge_receipts, make_receipt


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def fill(url: str, n: int, start: int = 0, **kw: object) -> str:
    """Write receipts ``start..start+n-1`` through one Ledger; returns its chain id."""
    with Ledger(url, flush_interval_s=0.05, **kw) as led:  # type: ignore[arg-type]
        for i in range(start, start + n):
            led.append(make_receipt(i))
        assert led.flush()
        return led.chain_id


def db(url: str) -> sqlite3.Connection:
    return sqlite3.connect(url.removeprefix("sqlite:///"))


#: Receipt columns that encoding v1's writers never name.
V2_COLUMNS = ("prefill_kwh", "decode_kwh", "hash_version")


def write_v1_rows(
    url: str, chain_id: str, receipts: list[Receipt], after: tuple[int, str] = (0, GENESIS_HASH)
) -> tuple[int, str]:
    """Store ``receipts`` as a writer from before encoding v2 did: v1 hashes, inserted
    without naming the v2 columns, continuing the chain after ``(seq, hash)``; returns the
    new head. (Rollups are not maintained: verify those rows with ``check_rollups=False``.)"""
    table = Table(
        "receipts",
        MetaData(),
        *(Column(c.name, c.type) for c in receipts_table.columns if c.name not in V2_COLUMNS),
    )
    seq, prev = after
    rows = []
    for r in receipts:
        seq += 1
        values = {name: getattr(r, name) for name, _ in FIELD_KINDS_V1}
        digest = receipt_row_hash(chain_id, seq, prev, list(values.values()), version=1)
        rows.append({**values, "chain_id": chain_id, "seq": seq, "prev_hash": prev, "hash": digest})
        prev = digest
    heads, now = ledger_chains_table, datetime.now(UTC)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
        if after[0] == 0:
            conn.execute(
                insert(heads).values(
                    chain_id=chain_id,
                    created_at=now,
                    updated_at=now,
                    host="old",
                    pid=1,
                    receipt_count=seq,
                    last_hash=prev,
                )
            )
        else:
            conn.execute(
                update(heads)
                .where(heads.c.chain_id == chain_id)
                .values(receipt_count=seq, last_hash=prev, updated_at=now)
            )
    engine.dispose()
    return seq, prev


# ------------------------------------------------------------------- encoding


def test_every_receipt_field_is_hashed() -> None:
    # A new Receipt field must be added to the chain encoding (with a new encoding version,
    # so that stored rows still verify with the old one).
    assert set(HASHED_FIELDS) == {f.name for f in fields(Receipt)}


def test_encodings_are_frozen() -> None:
    # Stored hashes must verify forever. The v1 digests were computed by the code that wrote
    # v1 rows (before v2 existed); v2's and v3's pin them from their introduction on.
    assert (ENCODING_V1.tag, ENCODING_V2.tag) == ("sprout-receipt-v1", "sprout-receipt-v2")
    assert ENCODING_V2.fields == (*ENCODING_V1.fields, "prefill_kwh", "decode_kwh")
    assert ENCODING_V3.tag == "sprout-receipt-v3"
    assert ENCODING_V3.fields == (*ENCODING_V2.fields, "outcome")
    assert len(FIELD_KINDS_V1) == 30 and FIELD_KINDS_V1[-1] == ("purpose", "str")
    assert CURRENT is ENCODING_V3 and HASH_VERSION == 3
    pinned = {
        1: (
            "a9ae9de06b0a18fb70391c47921b62181dd00034040aa3592768d8c0cd9cbda1",
            "811b4cc8debc318fdd4abb35c204e3d448a04bb3ebf91b23b9fecf117fe3af89",
        ),
        2: (
            "bc2bf1ff960c0f4f4f7c2fd0267ac4d275fc3d5045806a65b53969d5a37aaa4a",
            "5332eee5611f426f2706a8fad3dfae16097c3cf7fea00c9bb46dd8b7fab4a171",
        ),
        3: (
            "93b649f3699fa1756cf38f28a66f6edddc32ae66bca2b598c312760c8da34144",
            "2e1b0f1cbce2874e041de24fb326d63bf052e68cfc812439514851a1097c6699",
        ),
    }
    for version, digests in pinned.items():
        fields_ = {1: ENCODING_V1, 2: ENCODING_V2, 3: ENCODING_V3}[version].fields
        prev = GENESIS_HASH
        for i, digest in zip((3, 4), digests, strict=True):
            values = [getattr(make_receipt(i), n) for n in fields_]
            prev = receipt_row_hash("golden:1:x", i, prev, values, version=version)
            assert prev == digest, (version, i)


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.psycopg.dialect()])
def test_writer_fast_path_equals_reference_encoding(dialect: object) -> None:
    prepare = _make_preparer(dialect)
    hasher = ChainHasher("host:1:abc")
    assert hasher.version == CURRENT.number == 3  # the writer hashes with v3, and says so
    prev = GENESIS_HASH
    for seq, receipt in enumerate(edge_receipts() * 2, start=1):  # twice: the datetime cache
        _, _, others, floats_hex = prepare(receipt)
        values = [getattr(receipt, name) for name in ENCODING_V3.fields]
        content = ENCODING_V3.canonical_content(values)
        expected = ENCODING_V3.row_hash("host:1:abc", seq, prev, content)
        assert hasher.hash(seq, prev, others, floats_hex) == expected
        assert row_hash("host:1:abc", seq, prev, canonical_content(values)) == expected
        prev = expected


def test_hash_depends_on_every_field_position_and_chain() -> None:
    values = [getattr(make_receipt(3), n) for n in HASHED_FIELDS]
    content = canonical_content(values)
    digest = row_hash("c", 1, GENESIS_HASH, content)
    assert len(digest) == 64
    assert row_hash("c2", 1, GENESIS_HASH, content) != digest
    assert row_hash("c", 2, GENESIS_HASH, content) != digest
    assert row_hash("c", 1, "1" * 64, content) != digest
    for i, name in enumerate(HASHED_FIELDS):
        changed = list(values)
        value = changed[i]
        if isinstance(value, str):
            changed[i] = value + "x"
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, datetime):
            changed[i] = value + timedelta(microseconds=1)
        else:
            changed[i] = value + 1
        assert row_hash("c", 1, GENESIS_HASH, canonical_content(changed)) != digest, name


def test_edge_values_round_trip_and_verify(url: str) -> None:
    receipts = edge_receipts()
    with Ledger(url, flush_interval_s=0.05) as led:
        for r in receipts:
            led.append(r)
        assert led.flush()
        assert led.count_receipts() == len(receipts)
        back = {r.request_id: r for r in led.receipts()}
    assert back["naïve-€-✓"].tenant == "Zürich-租户"
    assert back["int-floats"].latency_s == 3.0
    assert back["tz"].created_at == receipts[6].created_at
    result = verify(url)
    assert result.ok, result.summary()
    assert (result.chains, result.receipts) == (1, len(receipts))


# ------------------------------------------------------------------- chains in the database


def test_each_ledger_writes_its_own_contiguous_chain(url: str) -> None:
    first = fill(url, 30)
    second = fill(url, 20, start=30)
    assert first != second
    with db(url) as conn:
        rows = conn.execute("SELECT chain_id, seq, prev_hash, hash FROM receipts ORDER BY id")
        by_chain: dict[str, list[tuple[int, str, str]]] = {}
        for chain_id, seq, prev, digest in rows:
            by_chain.setdefault(chain_id, []).append((seq, prev, digest))
        heads = dict(conn.execute("SELECT chain_id, receipt_count FROM ledger_chains"))
    assert heads == {first: 30, second: 20}
    for chain in by_chain.values():
        assert [seq for seq, _, _ in chain] == list(range(1, len(chain) + 1))
        assert chain[0][1] == GENESIS_HASH
        assert all(chain[i][1] == chain[i - 1][2] for i in range(1, len(chain)))
    assert verify(url).ok


def test_invalid_receipts_are_set_aside_without_taking_a_position(url: str) -> None:
    good = [make_receipt(i) for i in range(6)]
    bad = [
        replace(make_receipt(100), energy_kwh=float("nan")),
        replace(make_receipt(101), directive="x" * 65),
        replace(make_receipt(102), input_tokens=2**40),
        replace(make_receipt(103), tenant="nul\x00byte"),
        replace(make_receipt(104), ci_age_s="3"),  # type: ignore[arg-type]
        replace(make_receipt(105), ci_time=None),  # type: ignore[arg-type]
    ]
    with Ledger(url, flush_interval_s=0.05) as led:
        for r in [good[0], *bad[:3], *good[1:4], *bad[3:], *good[4:]]:
            led.append(r)
        assert led.flush()
        assert led.count_receipts() == 6
        rejected = [json.loads(x) for x in led.rejected_path.read_text().splitlines()]
    assert sorted(r["request_id"] for r in rejected) == [f"req-{i:06d}" for i in range(100, 106)]
    assert all(r["_error"].startswith("invalid receipt") for r in rejected)
    assert any("finite" in r["_error"] for r in rejected)
    assert any("longer than 64" in r["_error"] for r in rejected)
    result = verify(url)
    assert result.ok, result.summary()


def test_replayed_and_duplicate_receipts_chain_without_gaps(url: str, tmp_path: Path) -> None:
    fill(url, 10)  # chain A stores 0..9
    with Ledger(url, flush_interval_s=0.05) as led:  # chain B
        for i in range(5, 15):  # 5..9 are stored already: skipped, no position taken
            led.append(make_receipt(i))
        assert led.flush()
        # an outage: the batch is spooled, then replayed with copies of stored receipts
        with db(url) as conn:
            conn.execute("ALTER TABLE receipts RENAME TO hidden")
        for i in range(15, 25):
            led.append(make_receipt(i))
        assert led.flush()
        assert led.spooled() == 10
        with led.spool_path.open("a") as fh:
            for i in (0, 16, 24):
                fh.write(json.dumps(make_receipt(i).to_json_dict()) + "\n")
        with db(url) as conn:
            conn.execute("ALTER TABLE hidden RENAME TO receipts")
        assert led.flush()
        assert led.spooled() == 0
        assert led.count_receipts() == 25
        chain_b = led.chain_id
    with db(url) as conn:
        seqs = [
            s for (s,) in conn.execute("SELECT seq FROM receipts WHERE chain_id = ?", (chain_b,))
        ]
    assert sorted(seqs) == list(range(1, 16))  # 10..14 then the 10 replayed ones
    result = verify(url)
    assert result.ok, result.summary()


def test_migration_from_0001_chains_existing_receipts(url: str) -> None:
    upgrade(url, "0001")
    old_columns = {c.name for c in receipts_table.columns} - {
        "purpose",
        "chain_id",
        "seq",
        "prev_hash",
        "hash",
        "prefill_kwh",
        "decode_kwh",
        "hash_version",
        "outcome",
    }
    legacy = Table(
        "receipts",
        MetaData(),
        *(
            Column(c.name, c.type, primary_key=c.primary_key)
            for c in receipts_table.columns
            if c.name in old_columns
        ),
    )
    engine = create_engine(url)
    with engine.begin() as conn:
        rows = []
        for i in range(40):
            r = make_receipt(i)
            rows.append({n: getattr(r, n) for n in old_columns if n != "id"})
        conn.execute(insert(legacy), rows)
    engine.dispose()
    upgrade(url)
    result = verify(url)
    assert result.ok, result.summary()
    assert (result.chains, result.receipts) == (1, 40)
    with db(url) as conn:
        assert conn.execute("SELECT DISTINCT purpose FROM receipts").fetchall() == [("serve",)]
        assert conn.execute("SELECT sum(requests) FROM receipt_rollups").fetchone() == (40,)
    fill(url, 5, start=40)  # the migrated ledger takes new writers
    assert verify(url).ok
    downgrade(url, "0001")  # and the way back keeps the receipts
    with db(url) as conn:
        assert conn.execute("SELECT count(*) FROM receipts").fetchone() == (45,)
    upgrade(url)
    result = verify(url)
    assert result.ok and result.receipts == 45


def test_v1_rows_still_verify_after_upgrade_to_head(url: str) -> None:
    upgrade(url, "0002")
    old = [make_receipt(i) for i in range(12)]  # some carry a split, which v1 writers drop
    head = write_v1_rows(url, "old:1:a", old[:8])
    upgrade(url)
    assert verify(url, check_rollups=False).ok
    # A writer from before v2, still running after the upgrade, names no v2 column: its rows
    # take the column default, v1, and verify as such.
    write_v1_rows(url, "old:1:a", old[8:], after=head)
    new_chain = fill(url, 9, start=100)
    result = verify(url, check_rollups=False)
    assert result.ok, result.summary()
    assert (result.chains, result.receipts) == (2, 21)
    with db(url) as conn:
        versions = set(conn.execute("SELECT DISTINCT chain_id, hash_version FROM receipts"))
    assert versions == {("old:1:a", 1), (new_chain, 3)}
    with Ledger(url) as led:
        back = {r.request_id: r for r in led.receipts()}
    assert back["req-000003"].prefill_kwh is None and back["req-000009"].decode_kwh is None
    assert back["req-000102"] == make_receipt(102) and back["req-000102"].prefill_kwh
    # Down to 0002 and back: the v1 rows still verify.
    with db(url) as conn:
        conn.execute("DELETE FROM receipts WHERE chain_id = ?", (new_chain,))
        conn.execute("DELETE FROM ledger_chains WHERE chain_id = ?", (new_chain,))
    downgrade(url, "0002")
    upgrade(url)
    result = verify(url, check_rollups=False)
    assert result.ok and result.receipts == 12, result.summary()


def test_encoding_of_each_row_is_checked(url: str) -> None:
    upgrade(url, "0002")
    write_v1_rows(url, "old:1:a", [make_receipt(i) for i in range(4)])
    upgrade(url)
    fill(url, 4, start=10)
    with db(url) as conn:
        # A split put on a v1 row: v1's hash does not cover it, so nothing else would catch it.
        conn.execute(
            "UPDATE receipts SET prefill_kwh = 1e-6, decode_kwh = 2e-6 WHERE request_id = ?",
            ("req-000001",),
        )
        # An outcome put on a v1 row (v1 rows are of completed generations).
        conn.execute("UPDATE receipts SET outcome = 'guard_cut' WHERE request_id = 'req-000002'")
        # A v3 row relabelled v1, and one labelled with an encoding that does not exist.
        conn.execute("UPDATE receipts SET hash_version = 1 WHERE request_id = 'req-000011'")
        conn.execute("UPDATE receipts SET hash_version = 9 WHERE request_id = 'req-000012'")
    result = verify(url, check_rollups=False)
    problems = {p.request_id: p for p in result.problems}
    assert set(problems) == {"req-000001", "req-000002", "req-000011", "req-000012"}
    assert {p.kind for p in result.problems} == {"altered"}
    assert "does not cover prefill_kwh, decode_kwh" in problems["req-000001"].message
    assert "does not cover outcome" in problems["req-000002"].message
    assert "does not match its hash" in problems["req-000011"].message
    assert "hash_version 9 names no known encoding" in problems["req-000012"].message


# ------------------------------------------------------------------- tampering


def verify_cli(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["ledger", "verify", "--db", url])
    return code, capsys.readouterr().out


def test_intact_ledger_verifies_with_exit_0(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    fill(url, 25)
    fill(url, 5, start=25)
    code, out = verify_cli(url, capsys)
    assert code == 0, out
    assert "OK: intact" in out and "2 chains, 30 receipts" in out


def test_altered_row_is_named(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    fill(url, 20)
    with db(url) as conn:
        conn.execute(
            "UPDATE receipts SET energy_kwh = energy_kwh / 2 WHERE request_id = ?", ("req-000007",)
        )
        row_id = conn.execute("SELECT id FROM receipts WHERE request_id = 'req-000007'").fetchone()[
            0
        ]
    code, out = verify_cli(url, capsys)
    assert code == 1
    result = verify(url, check_rollups=False)
    first = result.problems[0]
    assert (first.kind, first.row_id, first.request_id, first.seq) == (
        "altered",
        row_id,
        "req-000007",
        8,
    )
    assert f"row id {row_id} (request req-000007" in out
    assert result.problem_count == 1  # the next row still links to the stored hash


def test_altered_split_is_named(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    fill(url, 12)  # every third receipt carries a split, hashed with v2
    with db(url) as conn:
        conn.execute(
            "UPDATE receipts SET prefill_kwh = prefill_kwh * 2 WHERE request_id = 'req-000006'"
        )
        # Moving energy from decode to prefill keeps the receipt's energy as it was.
        conn.execute(
            "UPDATE receipts SET prefill_kwh = energy_kwh, decode_kwh = 0 "
            "WHERE request_id = 'req-000009'"
        )
        # A split made up for a receipt that had none.
        conn.execute("UPDATE receipts SET decode_kwh = energy_kwh WHERE request_id = 'req-000007'")
    code, out = verify_cli(url, capsys)
    assert code == 1
    for request_id in ("req-000006", "req-000007", "req-000009"):
        assert f"(request {request_id}, chain" in out and "does not match its hash" in out
    assert "prefill_kwh is" in out  # the rollups (which sum the split) disagree too
    result = verify(url, check_rollups=False)
    assert result.problem_count == 3 and {p.kind for p in result.problems} == {"altered"}


def test_altered_and_rehashed_row_breaks_the_link(url: str) -> None:
    chain = fill(url, 10)
    with db(url) as conn:
        row = conn.execute("SELECT * FROM receipts WHERE seq = 4").fetchone()
        names = [d[0] for d in conn.execute("SELECT * FROM receipts LIMIT 0").description]
    rec = dict(zip(names, row, strict=True))
    # The forger changes the carbon and recomputes this row's hash, but not the next row's.
    rec["operational_g"] = 0.0
    values = [rec[n] for n in HASHED_FIELDS]
    values[HASHED_FIELDS.index("created_at")] = datetime.fromisoformat(rec["created_at"])
    values[HASHED_FIELDS.index("ci_time")] = datetime.fromisoformat(rec["ci_time"])
    forged = row_hash(chain, 4, rec["prev_hash"], canonical_content(values))
    with db(url) as conn:
        conn.execute("UPDATE receipts SET operational_g = 0, hash = ? WHERE seq = 4", (forged,))
    result = verify(url, check_rollups=False)
    assert not result.ok
    assert result.problems[0].kind == "altered" and result.problems[0].seq == 5
    assert "does not link" in result.problems[0].message


def test_deleted_row_is_named(url: str) -> None:
    chain = fill(url, 20)
    with db(url) as conn:
        conn.execute("DELETE FROM receipts WHERE seq IN (11, 12)")
    result = verify(url, check_rollups=False)
    assert [p.kind for p in result.problems] == ["deleted"]
    assert "seq 11..12 were deleted" in result.problems[0].message
    assert result.problems[0].chain_id == chain


def test_inserted_rows_are_named(url: str) -> None:
    chain = fill(url, 10)
    with db(url) as conn:
        cols = [d[0] for d in conn.execute("SELECT * FROM receipts LIMIT 0").description]
        last = dict(
            zip(cols, conn.execute("SELECT * FROM receipts WHERE seq = 10").fetchone(), strict=True)
        )
        # 1) A forged receipt appended to the chain with a correct hash, but past its head.
        forged = {
            **last,
            "id": None,
            "request_id": "forged-1",
            "seq": 11,
            "prev_hash": last["hash"],
        }
        values = [forged[n] for n in HASHED_FIELDS]
        for name in ("created_at", "ci_time"):
            values[HASHED_FIELDS.index(name)] = datetime.fromisoformat(forged[name])
        forged["hash"] = row_hash(chain, 11, last["hash"], canonical_content(values))
        # 2) A receipt in a chain that was never recorded.
        stray = {**last, "id": None, "request_id": "forged-2", "chain_id": "nowhere:1:x", "seq": 1}
        for row in (forged, stray):
            conn.execute(
                f"INSERT INTO receipts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [row[c] for c in cols],
            )
    result = verify(url, check_rollups=False)
    kinds = {(p.kind, p.request_id) for p in result.problems}
    assert ("inserted", "forged-1") in kinds
    assert ("inserted", "forged-2") in kinds
    assert "past its chain's recorded head" in " ".join(p.message for p in result.problems)
    assert verify(url).problem_count > result.problem_count  # the rollups disagree too


def test_truncated_tail_and_deleted_chain_are_caught(url: str) -> None:
    chain_a = fill(url, 10)
    chain_b = fill(url, 4, start=10)
    with db(url) as conn:
        conn.execute("DELETE FROM receipts WHERE chain_id = ? AND seq > 7", (chain_a,))
        conn.execute("DELETE FROM receipts WHERE chain_id = ?", (chain_b,))
    result = verify(url, check_rollups=False)
    messages = {p.chain_id: p for p in result.problems}
    assert messages[chain_a].kind == "truncated"
    assert "seq 8..10 were deleted" in messages[chain_a].message
    assert messages[chain_b].kind == "truncated" and "none are stored" in messages[chain_b].message


def test_rollups_and_policy_versions_are_checked(url: str) -> None:
    fill(url, 10)
    with Ledger(url) as led:
        led.save_policy_version("sprout-lp", {"xi": 0.1}, {})
    assert verify(url).ok
    with db(url) as conn:
        conn.execute("UPDATE receipt_rollups SET operational_g = operational_g * 0.5")
        conn.execute("UPDATE policy_versions SET params = '{\"xi\": 0.9}'")
    result = verify(url)
    assert {p.kind for p in result.problems} == {"rollup", "policy"}
    assert verify(url, check_rollups=False).problem_count == 1


def test_verify_json_output(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    fill(url, 3)
    assert main(["ledger", "verify", "--db", url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["receipts"] == 3 and len(doc["heads_digest"]) == 64


def test_verify_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["ledger", "verify", "--db", f"sqlite:///{tmp_path / 'nope.db'}"]) == 2
    assert not (tmp_path / "nope.db").exists()


def test_time_zone_of_the_writer_does_not_matter(url: str) -> None:
    receipts = [
        replace(
            make_receipt(i),
            created_at=make_receipt(i).created_at.astimezone(timezone(timedelta(hours=-7))),
        )
        for i in range(5)
    ]
    with Ledger(url, flush_interval_s=0.05) as led:
        for r in receipts:
            led.append(r)
        assert led.flush()
    assert verify(url).ok
    assert datetime(2024, 3, 1, tzinfo=UTC) < receipts[0].created_at


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.psycopg.dialect()])
def test_prepared_rows_store_and_spool_like_the_receipt(dialect: object) -> None:
    prepare = _make_preparer(dialect)
    to_db = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    created = HASHED_FIELDS.index("created_at")
    for receipt in edge_receipts():
        row = prepare(receipt)
        utc = receipt.created_at.replace(tzinfo=receipt.created_at.tzinfo or UTC)
        if to_db is not None:  # SQLite: the text SQLAlchemy itself would store
            assert row[1][created] == to_db(utc.astimezone(UTC))
        # A spooled batch is written from prepared rows: they read back as the receipt.
        back = Receipt.from_json_dict(json.loads(json.dumps(_prepared_record(row))))
        assert back.created_at == utc
        assert back.total_g == receipt.total_g + 0.0
        assert replace(back, created_at=receipt.created_at, ci_time=receipt.ci_time) == receipt


def test_ledger_verify_method(url: str) -> None:
    with Ledger(url, flush_interval_s=0.05) as led:
        led.append(make_receipt(1))
        assert led.flush()
        result = led.verify()
    assert result.ok and result.receipts == 1
