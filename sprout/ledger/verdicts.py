"""The ``verdicts`` table: the judge's verdicts on served requests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select

from sprout.errors import LedgerError
from sprout.ledger._database import LedgerDatabase
from sprout.ledger._rows import canonical_json
from sprout.ledger.schema import verdicts_table
from sprout.receipt import Receipt


def add_verdict(
    db: LedgerDatabase,
    receipt: Receipt,
    preferred_directive: str | None,
    *,
    judge: str,
    protocol: str = "listwise",
    detail: dict[str, Any] | None = None,
    created_at: datetime | None = None,
) -> int:
    """Store a verdict (see :meth:`sprout.ledger.store.Ledger.add_verdict`); its id.

    Raises:
        LedgerError: ``detail`` is not JSON data, or the write failed.
    """
    try:
        detail_data = json.loads(canonical_json(detail or {}))
    except (TypeError, ValueError) as e:
        raise LedgerError(f"verdict for {receipt.request_id}: detail is not JSON: {e}") from e
    row = {
        "created_at": created_at or datetime.now(UTC),
        "request_id": receipt.request_id,
        "receipt_created_at": receipt.created_at,
        "served_directive": receipt.directive,
        "preferred_directive": preferred_directive,
        "judge": judge,
        "protocol": protocol,
        "detail": detail_data,
    }
    with db.errors("storing a verdict"), db.begin() as conn:
        result = conn.execute(insert(verdicts_table).values(**row))
        return int(result.inserted_primary_key[0])


def verdicts(
    db: LedgerDatabase, since: datetime | None = None, until: datetime | None = None
) -> list[dict[str, Any]]:
    """Stored verdicts (rows as dicts) on requests made in ``[since, until)``, in order.

    Raises:
        LedgerError: the database cannot be read.
    """
    v = verdicts_table
    stmt = select(v).order_by(v.c.id)
    if since is not None:
        stmt = stmt.where(v.c.receipt_created_at >= since)
    if until is not None:
        stmt = stmt.where(v.c.receipt_created_at < until)
    with db.errors("reading verdicts"), db.begin() as conn:
        return [dict(row) for row in conn.execute(stmt).mappings()]


__all__ = ["add_verdict", "verdicts"]
