"""Signed checkpoints: a forger who owns the database and knows the chain algorithm is
caught for everything up to the checkpoint, where the in-database chain check is not."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, insert, select

from sprout.cli import main
from sprout.config import load_settings
from sprout.errors import ConfigError, LedgerError
from sprout.ledger.attest import check_checkpoints, take_checkpoint
from sprout.ledger.chain import GENESIS_HASH
from sprout.ledger.checkpoint import canonical_bytes, parse_checkpoint
from sprout.ledger.checkpoint_files import read_checkpoint
from sprout.ledger.checkpoint_job import checkpoint_job, schedule_checkpoints
from sprout.ledger.keys import generate_key_files, load_private_key, load_public_key
from sprout.ledger.locks import job_lock
from sprout.ledger.schema import (
    receipts_table,
)
from sprout.ledger.store import Ledger
from sprout.ledger.verify import VerifyResult, verify
from tests.support.ledger_tools import chain_ids, rebuild_rollups, rechain
from tests.support.receipts import make_receipt

#: Receipts per chain of the checkpointed ledger (300 in all).
CHAIN_SIZES = (120, 100, 80)


def _write_chain(url: str, start: int, n: int) -> str:
    with Ledger(url, flush_interval_s=0.05, durability="buffered") as led:
        for i in range(start, start + n):
            led.append(make_receipt(i))
        assert led.flush()
        return led.chain_id


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A ledger of 3 chains, a key pair and a signed checkpoint of it (built once)."""
    d = tmp_path_factory.mktemp("pristine")
    url = f"sqlite:///{d / 'ledger.db'}"
    chains, start = [], 0
    for n in CHAIN_SIZES:
        chains.append(_write_chain(url, start, n))
        start += n
    key_path, pub_path, _ = generate_key_files(d / "ck.pem")
    key = load_private_key(str(key_path))
    cp = take_checkpoint(url, key)
    cp_path = d / "checkpoint.json"
    cp_path.write_text(cp.to_json())
    return {"dir": d, "chains": chains, "key": key_path, "pub": pub_path, "cp": cp_path}


@pytest.fixture
def led(pristine: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A fresh copy of the pristine ledger, key and checkpoint."""
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        src = pristine["dir"] / name
        if src.exists():
            shutil.copy(src, tmp_path / name)
    for name in ("ck.pem", "ck.pem.pub", "checkpoint.json"):
        shutil.copy(pristine["dir"] / name, tmp_path / name)
    return {
        "url": f"sqlite:///{tmp_path / 'ledger.db'}",
        "db": tmp_path / "ledger.db",
        "chains": pristine["chains"],
        "key": tmp_path / "ck.pem",
        "pub": tmp_path / "ck.pem.pub",
        "cp": tmp_path / "checkpoint.json",
        "dir": tmp_path,
    }


def check(url: str, cp_path: Path, pub: Path, *, rollups: bool = True) -> VerifyResult:
    """verify, then the checkpoint check, as ``sprout ledger verify --checkpoint`` does."""
    result = verify(url, check_rollups=rollups)
    check_checkpoints(url, [(str(cp_path), read_checkpoint(cp_path))], load_public_key(pub), result)
    return result


def checkpoint_problems(result: VerifyResult) -> dict[str, str]:
    """kind -> message, of the problems a checkpoint caught."""
    out: dict[str, str] = {}
    for p in result.problems:
        if p.checkpoint is not None:
            out.setdefault(p.kind, p.message)
    return out


def verify_cli(led: dict[str, Any], capsys: pytest.CaptureFixture[str], *extra: str) -> tuple:
    code = main(
        [
            *("ledger", "verify", "--db", led["url"], "--checkpoint", str(led["cp"])),
            *("--public-key", str(led["pub"]), *extra),
        ]
    )
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ------------------------------------------------------------------- the forger's tools


def _engine(url: str) -> Any:
    return create_engine(url)


def forge_alter(led: dict[str, Any]) -> None:
    chain = led["chains"][0]
    ids = chain_ids(led["url"], chain)
    with sqlite3.connect(led["db"]) as conn:
        conn.execute("UPDATE receipts SET operational_g = 0 WHERE id = ?", (ids[49],))
    rechain(led["url"], chain, ids)


def forge_delete(led: dict[str, Any]) -> None:
    chain = led["chains"][0]
    ids = chain_ids(led["url"], chain)
    with sqlite3.connect(led["db"]) as conn:
        conn.execute("DELETE FROM receipts WHERE id = ?", (ids[39],))
    rechain(led["url"], chain, ids[:39] + ids[40:])


def forge_insert(led: dict[str, Any]) -> None:
    chain = led["chains"][1]
    ids = chain_ids(led["url"], chain)
    t = receipts_table
    eng = _engine(led["url"])
    with eng.begin() as conn:
        row = dict(conn.execute(select(t).where(t.c.id == ids[29])).mappings().one())
        row.update(
            id=None,
            request_id="forged-0001",
            created_at=row["created_at"] + timedelta(milliseconds=1),
            seq=-(10**9),
        )
        del row["id"]
        new_id = conn.execute(insert(t).values(**row)).inserted_primary_key[0]
    eng.dispose()
    rechain(led["url"], chain, [*ids[:30], new_id, *ids[30:]])


def forge_replace(led: dict[str, Any]) -> None:
    chain = led["chains"][2]
    ids = chain_ids(led["url"], chain)
    with sqlite3.connect(led["db"]) as conn:
        conn.execute("UPDATE receipts SET request_id = 'forged-0002' WHERE id = ?", (ids[-1],))
    rechain(led["url"], chain, ids)


def forge_truncate(led: dict[str, Any]) -> None:
    chain = led["chains"][0]
    ids = chain_ids(led["url"], chain)
    with sqlite3.connect(led["db"]) as conn:
        conn.execute("DELETE FROM receipts WHERE chain_id = ? AND seq > 90", (chain,))
    rechain(led["url"], chain, ids[:90])


def forge_head(led: dict[str, Any]) -> None:
    chain = led["chains"][1]
    with sqlite3.connect(led["db"]) as conn:
        (last,) = conn.execute(
            "SELECT hash FROM receipts WHERE chain_id = ? AND seq = 60", (chain,)
        ).fetchone()
        conn.execute(
            "UPDATE ledger_chains SET receipt_count = 60, last_hash = ? WHERE chain_id = ?",
            (last, chain),
        )


def forge_rollups(led: dict[str, Any]) -> None:
    with sqlite3.connect(led["db"]) as conn:
        conn.execute("DELETE FROM receipt_rollups WHERE directive = 'L1'")


def forge_drop_chain(led: dict[str, Any]) -> None:
    chain = led["chains"][2]
    with sqlite3.connect(led["db"]) as conn:
        conn.execute("DELETE FROM receipts WHERE chain_id = ?", (chain,))
        conn.execute("DELETE FROM ledger_chains WHERE chain_id = ?", (chain,))
    rebuild_rollups(led["url"])


# ------------------------------------------------------------------- tamper cases

#: (forgery, rollups checked, plain verify passes, kinds the checkpoint reports, words)
CASES = {
    "altered-and-rechained": (
        forge_alter,
        True,
        True,
        {"altered", "head", "rollup"},
        "a receipt in seq 1..120 was altered",
    ),
    "deleted-and-rechained": (
        forge_delete,
        True,
        True,
        {"deleted", "head", "rollup"},
        "1 receipt(s) at or before seq 120 were deleted",
    ),
    "inserted-and-rechained": (
        forge_insert,
        True,
        True,
        {"inserted"},
        "1 receipt(s) at or before seq 100 were inserted",
    ),
    "replaced-and-rechained": (
        forge_replace,
        True,
        True,
        {"altered", "head"},
        "is no longer in the chain (seq 80 holds request forged-0002)",
    ),
    "truncated-head-rewritten": (
        forge_truncate,
        True,
        True,
        {"truncated", "head", "rollup"},
        "the rows stop at seq 90: seq 91..120 deleted",
    ),
    "head-rewritten": (forge_head, True, False, {"head"}, "the head was rewritten"),
    "rollups-deleted": (forge_rollups, True, False, {"rollup"}, "rollup rows were deleted"),
    "rollups-deleted-no-rollups": (
        forge_rollups,
        False,
        True,
        {"rollup"},
        "rollup rows were deleted",
    ),
    "chain-deleted-with-head": (
        forge_drop_chain,
        True,
        True,
        {"truncated", "head", "rollup"},
        "none are stored",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_catches_each_forgery(
    case: str, led: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    forge, rollups, plain_passes, kinds, words = CASES[case]
    assert check(led["url"], led["cp"], led["pub"]).ok  # intact before
    forge(led)
    plain = verify(led["url"], check_rollups=rollups)
    assert plain.ok is plain_passes, plain.summary()
    result = check(led["url"], led["cp"], led["pub"], rollups=rollups)
    caught = checkpoint_problems(result)
    assert set(caught) == kinds, result.summary()
    assert words in " ".join(caught.values()), result.summary()
    extra = () if rollups else ("--no-rollups",)
    code, out = verify_cli(led, capsys, *extra)
    assert code == 1, out
    assert "FAILED" in out and "DOES NOT MATCH" in out and "OK: intact" not in out


def test_altered_row_message_names_the_changed_sum(led: dict[str, Any]) -> None:
    forge_alter(led)
    result = check(led["url"], led["cp"], led["pub"])
    (problem,) = [p for p in result.problems if p.kind == "altered"]
    assert problem.chain_id == led["chains"][0] and problem.seq == 120
    assert "operational_g over rows 1..120 is now" in problem.message
    assert "energy_kwh" not in problem.message  # only what changed is named


def test_intact_ledger_matches_and_growth_after_it_is_fine(
    led: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _write_chain(led["url"], 1000, 25)  # a new chain after the checkpoint
    code, out = verify_cli(led, capsys)
    assert code == 0, out
    assert "OK: intact" in out and "1 signed checkpoint(s) checked" in out
    assert "3 chains, 300 receipts: matches" in out
    code, out = verify_cli(led, capsys, "--json")
    doc = json.loads(out)
    assert doc["ok"] is True and doc["exit_code"] == 0 and doc["receipts"] == 325
    assert doc["checkpoints"][0]["signature_ok"] and doc["checkpoints"][0]["ok"]


def test_rows_after_the_checkpoint_are_left_to_the_chain_check(led: dict[str, Any]) -> None:
    # Rows past the checkpoint are rewritten (and rechained): only the in-database check
    # (and the next checkpoint) can see that; the first 120 rows still match.
    with Ledger(led["url"], flush_interval_s=0.05, durability="buffered") as w:
        for i in range(2000, 2010):
            w.append(make_receipt(i))
        assert w.flush()
        new_chain = w.chain_id
    with sqlite3.connect(led["db"]) as conn:
        conn.execute(
            "UPDATE receipts SET energy_kwh = 0 WHERE chain_id = ? AND seq = 5", (new_chain,)
        )
    result = check(led["url"], led["cp"], led["pub"])
    assert not checkpoint_problems(result)
    assert {p.kind for p in result.problems} == {"altered", "rollup"}


# ------------------------------------------------------------------- signatures and files


def test_wrong_key_is_rejected(led: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    _, other_pub, _ = generate_key_files(led["dir"] / "other.pem")
    led["pub"] = other_pub
    code, out = verify_cli(led, capsys)
    assert code == 1
    assert "signature: checkpoint" in out and "not with the public key given" in out


def test_forged_signature_under_the_right_key_id_is_rejected(led: dict[str, Any]) -> None:
    # A forger signs with their own key but claims the auditor's key id.
    doc = json.loads(led["cp"].read_text())
    forger = Ed25519PrivateKey.generate()
    doc["chains"][0]["seq"] = 1
    import base64

    doc["signature"] = base64.b64encode(forger.sign(canonical_bytes(doc))).decode()
    led["cp"].write_text(json.dumps(doc))
    result = check(led["url"], led["cp"], led["pub"])
    assert [p.kind for p in result.problems] == ["signature"]
    assert "modified after it was signed, or forged" in result.problems[0].message


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["chains"][0].__setitem__("head_hash", "1" * 64),
        lambda d: d["chains"][1].__setitem__("seq", 7),
        lambda d: d["rollups"].__setitem__("requests", 0),
        lambda d: d.__setitem__("taken_at", "2020-01-01T00:00:00Z"),
        lambda d: d.__setitem__("note", "added"),
        lambda d: d["chains"].pop(),
    ],
)
def test_modified_checkpoint_is_rejected(
    edit: Any, led: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(led["cp"].read_text())
    edit(doc)
    led["cp"].write_text(json.dumps(doc, indent=4))
    code, out = verify_cli(led, capsys)
    assert code == 1, out
    assert "signature: checkpoint" in out and "modified after it was signed" in out
    result = check(led["url"], led["cp"], led["pub"])
    assert {p.kind for p in result.problems} == {"signature"}  # nothing trusted from it


def test_reformatted_checkpoint_still_verifies(led: dict[str, Any]) -> None:
    doc = json.loads(led["cp"].read_text())
    led["cp"].write_text(json.dumps(doc, indent=None, sort_keys=False))
    assert check(led["url"], led["cp"], led["pub"]).ok


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("not json {", "not JSON"),
        ("[1, 2]", "a JSON object is expected"),
        ('{"format": "something-else"}', "not a Sprout ledger checkpoint"),
    ],
)
def test_bad_checkpoint_files_are_usage_errors(
    content: str, words: str, led: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    led["cp"].write_text(content)
    code, out = verify_cli(led, capsys)
    assert code == 2 and words in out and str(led["cp"]) in out


def test_unsigned_and_ill_typed_checkpoints_are_named() -> None:
    with pytest.raises(ValueError, match="unsigned"):
        parse_checkpoint(_minimal_doc(signature=None))
    with pytest.raises(ValueError, match=r"chains\[0\]: seq must be an integer"):
        parse_checkpoint(_minimal_doc(seq="3"))


def _minimal_doc(signature: str | None = "x", seq: Any = 0) -> str:
    doc: dict[str, Any] = {
        "format": "sprout-ledger-checkpoint-v1",
        "algorithm": "ed25519",
        "key_id": "k",
        "taken_at": "2024-01-01T00:00:00Z",
        "database": "db",
        "chains": [
            {
                "chain_id": "c",
                "seq": seq,
                "head_hash": GENESIS_HASH,
                "request_id": "",
                "created_at": "",
                "energy_kwh": "0.0",
                "operational_g": "0.0",
                "embodied_g": "0.0",
            }
        ],
        "rollups": {"requests": 0, "energy_kwh": "0", "operational_g": "0", "embodied_g": "0"},
    }
    if signature is not None:
        doc["signature"] = signature
    return json.dumps(doc)


def test_missing_files_and_keys_are_usage_errors(
    led: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("SPROUT_LEDGER_CHECKPOINT_KEY", "SPROUT_LEDGER_CHECKPOINT_PUBLIC_KEY"):
        monkeypatch.delenv(var, raising=False)
    base = ["ledger", "verify", "--db", led["url"]]
    assert main([*base, "--checkpoint", str(led["dir"] / "nope.json")]) == 2
    assert "checkpoint file" in capsys.readouterr().err
    assert main([*base, "--checkpoint", str(led["cp"])]) == 2
    assert "needs the public key" in capsys.readouterr().err
    pub = [*base, "--checkpoint", str(led["cp"]), "--public-key"]
    assert main([*pub, str(led["dir"] / "nope.pub")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*pub, str(led["key"])]) == 2  # the private key is refused for verifying
    assert "holds a private key" in capsys.readouterr().err
    # The configured signing key stands in for the public key (for the operator).
    monkeypatch.setenv("SPROUT_LEDGER_CHECKPOINT_KEY", str(led["key"]))
    assert main([*base, "--checkpoint", str(led["cp"])]) == 0


def test_bad_signing_keys_are_named(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_path = tmp_path / "rsa.pem"
    rsa_path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="RSAPrivateKey key; checkpoints are signed with Ed25519"):
        load_private_key(str(rsa_path))
    enc_path = tmp_path / "enc.pem"
    enc_path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(ConfigError, match="is encrypted"):
        load_private_key(str(enc_path))
    _, pub, _ = generate_key_files(tmp_path / "k.pem")
    with pytest.raises(ConfigError, match="holds a public key"):
        load_private_key(str(pub))
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        load_private_key(str(junk))
    secret_looking = "c2VjcmV0LWtleS1tYXRlcmlhbC1ub3QtYS1wYXRo"
    with pytest.raises(ConfigError, match="names no existing key file") as err:
        load_private_key(secret_looking)
    assert secret_looking not in str(err.value)  # a value that may be key material is not echoed
    with pytest.raises(ConfigError, match="no checkpoint signing key"):
        load_private_key("")


def test_keygen_writes_a_private_key_only_its_owner_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys" / "sign.pem"
    assert main(["ledger", "keygen", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out.stat().st_mode & 0o777) == 0o600
    assert "BEGIN PUBLIC KEY" in printed and "PRIVATE" not in printed
    assert load_public_key(Path(f"{out}.pub"))
    assert main(["ledger", "keygen", "--out", str(out)]) == 2  # never overwritten silently
    assert "exists already" in capsys.readouterr().err
    assert main(["ledger", "keygen", "--out", str(out), "--force"]) == 0


# ------------------------------------------------------------------- taking checkpoints


def test_checkpoint_cli_and_incremental_equals_full(
    led: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cps = led["dir"] / "cps"
    base = ["ledger", "checkpoint", "--db", led["url"], "--key", str(led["key"])]
    assert main([*base, "--dir", str(cps)]) == 0
    assert "3 chains, 300 receipts" in capsys.readouterr().out
    _write_chain(led["url"], 5000, 40)
    with Ledger(led["url"], flush_interval_s=0.05, durability="buffered") as w:
        for i in range(6000, 6005):
            w.append(make_receipt(i))
        assert w.flush()
    assert main([*base, "--dir", str(cps)]) == 0  # from the first one
    assert main([*base, "--output", str(led["dir"] / "full.json"), "--full"]) == 0
    capsys.readouterr()
    files = sorted(cps.glob("checkpoint-*.json"))
    assert len(files) == 2
    incremental, full = read_checkpoint(files[-1]), read_checkpoint(led["dir"] / "full.json")
    assert incremental.chains == full.chains and incremental.receipts == 345
    # Every checkpoint in the directory is checked in one pass.
    code = main(
        [
            *("ledger", "verify", "--db", led["url"], "--checkpoint", str(cps)),
            *("--public-key", str(led["pub"]), "--checkpoint", str(led["cp"])),
        ]
    )
    assert code == 0, capsys.readouterr().out
    capsys.readouterr()
    assert main([*base, "-o", "-"]) == 0
    assert parse_checkpoint(capsys.readouterr().out).receipts == 345


def test_a_tampered_ledger_is_never_signed(led: dict[str, Any]) -> None:
    key = load_private_key(str(led["key"]))
    with sqlite3.connect(led["db"]) as conn:
        conn.execute("UPDATE receipts SET energy_kwh = 0 WHERE id = 10")
    with pytest.raises(LedgerError, match=r"refusing to sign.*does not match its hash"):
        take_checkpoint(led["url"], key)


def test_a_rewrite_before_the_previous_checkpoint_stops_the_next(
    led: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cps = led["dir"] / "cps"
    base = ["ledger", "checkpoint", "--db", led["url"], "--key", str(led["key"])]
    assert main([*base, "--dir", str(cps)]) == 0
    forge_alter(led)  # consistent in the database: a full checkpoint would sign it
    capsys.readouterr()
    assert main([*base, "--dir", str(cps)]) == 1
    assert "refusing to sign" in capsys.readouterr().err


def test_checkpoint_needs_somewhere_to_go(
    led: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["ledger", "checkpoint", "--db", led["url"], "--key", str(led["key"])])
    assert code == 2 and "give --output FILE" in capsys.readouterr().err


def test_scheduled_job_writes_checkpoints_once_per_cluster(
    led: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sprout.scheduler import create_scheduler

    cps = led["dir"] / "scheduled"
    monkeypatch.setenv("SPROUT_LEDGER_CHECKPOINT_KEY", str(led["key"]))
    settings = load_settings(
        env={},
        db_url=led["url"],
        ledger_checkpoint_key=str(led["key"]),
        ledger_checkpoint_dir=str(cps),
        ledger_checkpoint_cron="*/15 * * * *",
    )
    scheduler = create_scheduler()
    job = schedule_checkpoints(scheduler, settings)
    assert job.id == "sprout-ledger-checkpoint" and "*/15" in str(job.trigger)
    assert checkpoint_job(settings) is not None
    with job_lock(led["url"], "checkpoint") as acquired:
        assert acquired
        assert checkpoint_job(settings) is None  # another replica holds the lock
    assert len(list(cps.glob("checkpoint-*.json"))) == 1
    with pytest.raises(ConfigError, match="ledger_checkpoint_dir"):
        schedule_checkpoints(scheduler, settings.replace(ledger_checkpoint_dir=""))
    with pytest.raises(ConfigError, match="ledger_checkpoint_cron"):
        schedule_checkpoints(scheduler, settings.replace(ledger_checkpoint_cron="99 * * * *"))


def test_the_private_key_never_reaches_logs_output_or_the_database(
    led: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pem = led["key"].read_text()
    key = load_private_key(pem)
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    body = "".join(line for line in pem.splitlines() if "-----" not in line)
    monkeypatch.setenv("SPROUT_LEDGER_CHECKPOINT_KEY", pem)  # the PEM text itself
    caplog.set_level(logging.DEBUG)
    cps = led["dir"] / "cps"
    assert main(["-v", "ledger", "checkpoint", "--db", led["url"], "--dir", str(cps)]) == 0
    assert main(["-v", "ledger", "verify", "--db", led["url"], "--checkpoint", str(cps)]) == 0
    settings = load_settings(db_url=led["url"])
    assert checkpoint_job(settings) is None  # no directory: nothing is written anywhere
    assert "no ledger_checkpoint_dir" in caplog.text
    assert checkpoint_job(settings.replace(ledger_checkpoint_dir=str(cps))) is not None
    led["key"].chmod(0o644)  # a loose key file is warned about, without its content
    load_private_key(str(led["key"]))
    assert "readable by other users" in caplog.text
    captured = capsys.readouterr()
    seen = caplog.text + captured.out + captured.err + repr(settings)
    for secret in (body, raw.hex(), raw.decode("latin-1")):
        assert secret not in seen
    stored = b"".join(
        p.read_bytes() for p in led["dir"].glob("ledger.db*") if p.is_file()
    ) + b"".join(p.read_bytes() for p in cps.glob("*.json"))
    assert body.encode() not in stored and raw not in stored


def test_checkpoint_time_and_sums_are_recorded(pristine: dict[str, Any]) -> None:
    cp = read_checkpoint(pristine["cp"])
    assert cp.taken_at <= datetime.now(UTC)
    assert cp.receipts == sum(CHAIN_SIZES) and len(cp.chains) == 3
    assert cp.rollups[0] == sum(CHAIN_SIZES)
    expected_kwh = sum(make_receipt(i).energy_kwh for i in range(sum(CHAIN_SIZES)))
    assert cp.totals[0] == pytest.approx(expected_kwh, rel=1e-12)
    mark = cp.mark(pristine["chains"][0])
    assert mark is not None and mark.seq == 120 and mark.request_id == "req-000119"
    assert replace(mark, seq=1) != mark
