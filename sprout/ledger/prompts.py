"""The ``sampled_prompts`` table: prompts kept for the quality loop until retention prunes
them, apart from the hashed receipts so that pruning leaves every chain verifiable."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from sprout.errors import LedgerError
from sprout.ledger._database import LedgerDatabase, insert_ignoring
from sprout.ledger._rows import canonical_json
from sprout.ledger.schema import sampled_prompts_table, verdicts_table


def add_sampled_prompt(
    db: LedgerDatabase,
    request_id: str,
    prompt: Any,
    *,
    created_at: datetime | None = None,
    tenant: str | None = None,
    purpose: str = "serve",
) -> bool:
    """Keep a prompt (see :meth:`sprout.ledger.store.Ledger.add_sampled_prompt`); False when
    one for ``request_id`` was stored already.

    Raises:
        LedgerError: ``prompt`` is not JSON data, or the write failed.
    """
    try:
        prompt_data = json.loads(canonical_json(prompt))
    except (TypeError, ValueError) as e:
        raise LedgerError(f"sampled prompt {request_id}: not JSON: {e}") from e
    row = {
        "request_id": request_id,
        "created_at": created_at or datetime.now(UTC),
        "tenant": tenant,
        "purpose": purpose,
        "prompt": prompt_data,
    }
    stmt = insert_ignoring(db.engine.dialect.name, sampled_prompts_table, ["request_id"]).values(
        **row
    )
    with db.errors("storing a sampled prompt"), db.begin() as conn:
        return bool(conn.execute(stmt).rowcount)


def sampled_prompts(
    db: LedgerDatabase,
    *,
    pending: bool = False,
    since: datetime | None = None,
    purpose: str = "serve",
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Kept prompts (rows as dicts), oldest first; ``pending``: only those without a verdict.

    Raises:
        LedgerError: the database cannot be read.
    """
    s, v = sampled_prompts_table, verdicts_table
    stmt = select(s).where(s.c.purpose == purpose).order_by(s.c.created_at, s.c.id)
    if pending:
        judged = select(v.c.id).where(
            v.c.receipt_created_at == s.c.created_at, v.c.request_id == s.c.request_id
        )
        stmt = stmt.where(~judged.exists())
    if since is not None:
        stmt = stmt.where(s.c.created_at >= since)
    if limit is not None:
        stmt = stmt.limit(limit)
    with db.errors("reading sampled prompts"), db.begin() as conn:
        return [dict(row) for row in conn.execute(stmt).mappings()]


__all__ = ["add_sampled_prompt", "sampled_prompts"]
