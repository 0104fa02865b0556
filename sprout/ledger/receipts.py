"""Reading the ``receipts`` table (they are written by :mod:`sprout.ledger._insert`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from sprout.ledger._database import LedgerDatabase
from sprout.ledger._rows import RECEIPT_FIELDS
from sprout.ledger.schema import receipts_table
from sprout.receipt import Receipt


def receipts(
    db: LedgerDatabase,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> list[Receipt]:
    """Stored receipts with ``since <= created_at < until``, in insertion order.

    Raises:
        LedgerError: the database cannot be read.
    """
    t = receipts_table
    stmt = select(*(t.c[name] for name in RECEIPT_FIELDS)).order_by(t.c.id)
    if since is not None:
        stmt = stmt.where(t.c.created_at >= since)
    if until is not None:
        stmt = stmt.where(t.c.created_at < until)
    if limit is not None:
        stmt = stmt.limit(limit)
    with db.errors("reading receipts"), db.begin() as conn:
        return [Receipt(**row) for row in conn.execute(stmt).mappings()]


def count_receipts(db: LedgerDatabase) -> int:
    """Number of stored receipts.

    Raises:
        LedgerError: the database cannot be read.
    """
    with db.errors("counting receipts"), db.begin() as conn:
        return int(conn.scalar(select(func.count()).select_from(receipts_table)) or 0)


def find_receipt(db: LedgerDatabase, request_id: str, created_at: datetime) -> Receipt | None:
    """The stored receipt with this id and time (its unique key), or None.

    Raises:
        LedgerError: the database cannot be read.
    """
    t = receipts_table
    stmt = select(*(t.c[name] for name in RECEIPT_FIELDS)).where(
        t.c.created_at == created_at, t.c.request_id == request_id
    )
    with db.errors("reading a receipt"), db.begin() as conn:
        row = conn.execute(stmt).mappings().first()
    return None if row is None else Receipt(**row)


__all__ = ["count_receipts", "find_receipt", "receipts"]
