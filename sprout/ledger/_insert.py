"""The chained receipt INSERT: a batch chained, inserted, rolled up and headed in one
transaction.

Chain positions are assigned inside that transaction, from the head stored in the database,
so a batch that fails takes no position and a receipt replayed later (or twice) chains like
any other. Receipts already stored (the key is ``(created_at, request_id)``) are skipped.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert, select, text, update
from sqlalchemy import exc as sa_exc

from sprout.errors import LedgerError
from sprout.ledger._database import LedgerDatabase
from sprout.ledger._rows import Prepared
from sprout.ledger.chain import GENESIS_HASH, HASH_VERSION, HASHED_FIELDS, ChainHasher
from sprout.ledger.rollup import upsert_chain_range_sql
from sprout.ledger.schema import ledger_chains_table, receipts_table

log = logging.getLogger("sprout.ledger")

#: Rows per IN (...) lookup: far below SQLite's and PostgreSQL's bound-parameter limits.
_LOOKUP_CHUNK = 500
_CHAIN_COLUMNS = ("chain_id", "seq", "prev_hash", "hash")
#: The bound columns of a receipt row; ``hash_version`` (every row of this writer is hashed
#: with the current encoding) is a literal in the statement.
_INSERT_COLUMNS = (*HASHED_FIELDS, *_CHAIN_COLUMNS)


def is_row_error(error: BaseException) -> bool:
    """Whether the database refused the data itself rather than being unusable.

    Integrity and data errors, and failures to bind a value (a ``StatementError`` that
    never reached the driver), are about rows; everything else (connection refused, locked,
    missing table, permission) is about the database, and retrying later can succeed.
    """
    if isinstance(error, sa_exc.IntegrityError | sa_exc.DataError):
        return True
    return isinstance(error, sa_exc.StatementError) and not isinstance(error, sa_exc.DBAPIError)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _insert_sql(dialect: Any, rows: int = 1) -> str:
    """The receipt INSERT of ``rows`` rows, skipping those whose (created_at, request_id) is
    stored."""
    if dialect.paramstyle == "qmark":
        mark = "?"
    elif dialect.paramstyle in ("format", "pyformat"):
        mark = "%s"
    else:  # pragma: no cover - sqlite3 and psycopg are the supported drivers
        raise LedgerError(f"ledger: unsupported driver parameter style {dialect.paramstyle}")
    row = f"({', '.join(mark for _ in _INSERT_COLUMNS)}, {int(HASH_VERSION)})"
    columns = ", ".join((*_INSERT_COLUMNS, "hash_version"))
    return (
        f"INSERT INTO receipts ({columns}) VALUES {', '.join([row] * rows)} "
        "ON CONFLICT (created_at, request_id) DO NOTHING"
    )


def _rows_per_insert(dialect: Any) -> int:
    """Rows per multi-row INSERT on SQLite (0: use executemany), within its variable limit."""
    if dialect.name != "sqlite":
        return 0
    import sqlite3

    limit = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
    return max(1, limit // len(_INSERT_COLUMNS))


class _Conflict(Exception):
    """Some row of a batch was stored meanwhile: redo the batch with a lookup."""


class ChainedInsert:
    """Inserts prepared receipts into one hash chain.

    Args:
        db: the ledger's database.
        chain_id: the chain this ledger writes (see :func:`sprout.ledger.chain.new_chain_id`).
    """

    def __init__(self, db: LedgerDatabase, chain_id: str) -> None:
        self._db = db
        self._chain_id = chain_id
        self._hasher = ChainHasher(chain_id, HASH_VERSION)  # as _insert_sql records
        dialect = db.engine.dialect
        self._receipt_sql = _insert_sql(dialect)
        self._rows_per_insert = _rows_per_insert(dialect)
        self._multi_sql: dict[int, str] = {}
        self._rollup_sql = text(upsert_chain_range_sql(dialect.name))

    def insert(self, rows: Sequence[Prepared], *, replay: bool) -> int:
        """Chain and insert ``rows`` in one transaction, with rollups and the chain head.

        Receipts already stored are skipped (idempotent replay): on replay by looking them
        up first; otherwise the insert skips them and a shortfall redoes the batch with the
        lookup, so that no chain position is spent on a skipped row.

        Returns:
            The number of receipts inserted.

        Raises:
            SQLAlchemyError: the database refused the batch or is unusable.
        """
        for attempt in range(3):
            try:
                with self._db.begin_write() as conn:
                    return self._insert_in(conn, rows, lookup=replay or attempt > 0)
            except _Conflict:
                continue  # rolled back; a concurrent writer stored a key after the lookup
        # Treated as an outage: the batch is spooled and replayed later.
        raise sa_exc.OperationalError(
            "INSERT INTO receipts",
            None,
            RuntimeError("receipts kept colliding with another writer"),
        )

    def _read_head(self, conn: Connection) -> tuple[int, str]:
        """This chain's stored (count, last hash); the head row is created when missing."""
        t = ledger_chains_table
        row = conn.execute(
            select(t.c.receipt_count, t.c.last_hash).where(t.c.chain_id == self._chain_id)
        ).first()
        if row is not None:
            return int(row[0]), str(row[1])
        now = datetime.now(UTC)
        conn.execute(
            insert(t).values(
                chain_id=self._chain_id,
                created_at=now,
                updated_at=now,
                host=socket.gethostname()[:255],
                pid=os.getpid(),
                receipt_count=0,
                last_hash=GENESIS_HASH,
            )
        )
        return 0, GENESIS_HASH

    def _stored_keys(
        self, conn: Connection, keys: Sequence[tuple[datetime, str]]
    ) -> set[tuple[datetime, str]]:
        """Which ``(created_at, request_id)`` keys are stored (via their unique index)."""
        t = receipts_table
        found: set[tuple[datetime, str]] = set()
        for chunk in _chunks(sorted(set(keys)), _LOOKUP_CHUNK):
            stmt = select(t.c.created_at, t.c.request_id).where(
                t.c.created_at.in_(sorted({k[0] for k in chunk})),
                t.c.request_id.in_(sorted({k[1] for k in chunk})),
            )
            found.update((created, rid) for created, rid in conn.execute(stmt))
        return found

    def _insert_in(self, conn: Connection, rows: Sequence[Prepared], *, lookup: bool) -> int:
        todo: Sequence[Prepared] = rows
        if lookup:
            stored = self._stored_keys(conn, [row[0] for row in rows])
            todo = []
            for row in rows:
                if row[0] not in stored:
                    stored.add(row[0])  # also drops repeats inside the batch
                    todo.append(row)
            if len(todo) < len(rows):
                log.info(
                    "ledger %s: skipped %d receipts already stored",
                    self._db.label,
                    len(rows) - len(todo),
                )
        # Without the lookup, a stored key (or one repeated in the batch) makes the insert
        # skip a row: the row count tells, and the batch is redone with the lookup.
        if not todo:
            return 0
        count, prev = self._read_head(conn)
        chain_id, seq, hasher = self._chain_id, count, self._hasher.hash
        inserted = 0
        per = self._rows_per_insert or len(todo)
        for start in range(0, len(todo), per):
            # SQLite: multi-row INSERTs, each binding ~960 rows at once: it releases the GIL
            # once per statement, where executemany releases it per row and then waits out
            # the appending threads' switch interval (5 ms) to get it back.
            chunk = todo[start : start + per]
            flat: list[Any] = []
            params: list[tuple[Any, ...]] = []
            for _, values, others, floats_hex in chunk:
                seq += 1
                digest = hasher(seq, prev, others, floats_hex)
                if self._rows_per_insert:
                    flat += values
                    flat += (chain_id, seq, prev, digest)
                else:
                    params.append((*values, chain_id, seq, prev, digest))
                prev = digest
            if self._rows_per_insert:
                sql = self._multi_sql.get(len(chunk))
                if sql is None:
                    sql = self._multi_sql.setdefault(
                        len(chunk), _insert_sql(conn.dialect, len(chunk))
                    )
                inserted += conn.exec_driver_sql(sql, tuple(flat)).rowcount
            else:
                inserted += conn.exec_driver_sql(self._receipt_sql, params).rowcount
        if inserted < 0 and self._rows_per_insert == 0:
            inserted = len(todo)  # the driver does not count executemany rows
        if inserted != len(todo):
            raise _Conflict  # a row was stored already (by another writer, or a replay)
        conn.execute(self._rollup_sql, {"chain_id": chain_id, "lo": count, "hi": seq})
        t = ledger_chains_table
        conn.execute(
            update(t)
            .where(t.c.chain_id == chain_id)
            .values(receipt_count=seq, last_hash=prev, updated_at=datetime.now(UTC))
        )
        return len(todo)


__all__ = ["ChainedInsert", "is_row_error"]
