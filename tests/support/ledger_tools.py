"""Looking into a ledger's database directly, and the forger's tools: rewrite a chain with the
published algorithm, as someone who owns the database and knows the algorithm would."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import create_engine, delete, select, text, update

from sprout.ledger.chain import GENESIS_HASH, encoding
from sprout.ledger.rollup import ROLLUP_KEYS, SUM_NAMES, aggregate_sql
from sprout.ledger.schema import (
    ledger_chains_table,
    receipt_rollups_table,
    receipts_table,
)


def stored_ids(db: Path) -> list[str]:
    """The request ids in the receipts table of the SQLite ledger file ``db``."""
    with sqlite3.connect(db) as conn:
        return [rid for (rid,) in conn.execute("SELECT request_id FROM receipts")]


def rechain(url: str, chain_id: str, ids: list[int]) -> None:
    """Renumber the rows ``ids`` (in this order) as seq 1..n of ``chain_id``, recompute every
    hash with the published algorithm, set the head, and rebuild every rollup from the
    receipts: what a forger who owns the database and knows the algorithm does."""
    t, heads = receipts_table, ledger_chains_table
    eng = create_engine(url)
    with eng.begin() as conn:
        conn.execute(update(t).where(t.c.chain_id == chain_id).values(seq=-t.c.id))
        prev = GENESIS_HASH
        for seq, row_id in enumerate(ids, start=1):
            row = conn.execute(select(t).where(t.c.id == row_id)).mappings().one()
            enc = encoding(row["hash_version"])
            values = [row[name] for name in enc.fields]
            digest = enc.row_hash(chain_id, seq, prev, enc.canonical_content(values))
            conn.execute(
                update(t)
                .where(t.c.id == row_id)
                .values(chain_id=chain_id, seq=seq, prev_hash=prev, hash=digest)
            )
            prev = digest
        conn.execute(
            update(heads)
            .where(heads.c.chain_id == chain_id)
            .values(receipt_count=len(ids), last_hash=prev)
        )
    rebuild_rollups(url)
    eng.dispose()


def rebuild_rollups(url: str) -> None:
    """Rebuild every rollup from the receipts."""
    eng = create_engine(url)
    with eng.begin() as conn:
        conn.execute(delete(receipt_rollups_table))
        columns = ", ".join([*ROLLUP_KEYS, *SUM_NAMES])
        select_sql = aggregate_sql(eng.dialect.name, "1 = 1")
        conn.execute(text(f"INSERT INTO receipt_rollups ({columns}) {select_sql}"))
    eng.dispose()


def chain_ids(url: str, chain_id: str) -> list[int]:
    """The row ids of ``chain_id``, in chain order."""
    t = receipts_table
    eng = create_engine(url)
    with eng.connect() as conn:
        ids = list(conn.scalars(select(t.c.id).where(t.c.chain_id == chain_id).order_by(t.c.seq)))
    eng.dispose()
    return ids
