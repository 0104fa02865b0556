"""The ``policy_versions`` table: trained policies, their params pinned by a SHA-256."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select

from sprout.errors import LedgerError
from sprout.ledger._database import LedgerDatabase
from sprout.ledger._rows import canonical_json, params_sha256
from sprout.ledger.schema import policy_versions_table


@dataclass(frozen=True)
class PolicyVersionRecord:
    """A stored policy version, its params verified against their SHA-256."""

    id: int
    created_at: datetime
    kind: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    sha256: str
    note: str = ""


def save_policy_version(
    db: LedgerDatabase, kind: str, params: dict[str, Any], metrics: dict[str, Any], note: str = ""
) -> int:
    """Store a trained policy (see :meth:`sprout.ledger.store.Ledger.save_policy_version`).

    Raises:
        LedgerError: params or metrics are not plain JSON data, or the write failed.
    """
    try:
        # Store what canonical JSON makes of the data, so what is read back hashes alike.
        params_json = canonical_json(params)
        metrics_data = json.loads(canonical_json(metrics))
    except (TypeError, ValueError) as e:
        raise LedgerError(f"policy version {kind!r}: params/metrics are not JSON: {e}") from e
    row = {
        "created_at": datetime.now(UTC),
        "kind": kind,
        "params": json.loads(params_json),
        "metrics": metrics_data,
        "sha256": hashlib.sha256(params_json.encode("utf-8")).hexdigest(),
        "note": note,
    }
    with db.errors("saving a policy version"), db.begin() as conn:
        result = conn.execute(insert(policy_versions_table).values(**row))
        return int(result.inserted_primary_key[0])


def latest_policy_version(
    db: LedgerDatabase, kind: str | None = None
) -> PolicyVersionRecord | None:
    """The most recently saved policy version (of ``kind``, if given), or None.

    Raises:
        LedgerError: the database cannot be read, or the stored params do not match their
            SHA-256 (the row was altered).
    """
    t = policy_versions_table
    stmt = select(t).order_by(t.c.id.desc()).limit(1)
    if kind is not None:
        stmt = stmt.where(t.c.kind == kind)
    with db.errors("reading policy versions"), db.begin() as conn:
        row = conn.execute(stmt).mappings().first()
    if row is None:
        return None
    try:
        actual = params_sha256(row["params"])
    except (TypeError, ValueError) as e:
        raise LedgerError(f"policy version {row['id']}: params are not JSON: {e}") from e
    if actual != row["sha256"]:
        raise LedgerError(
            f"policy version {row['id']} ({row['kind']}): params do not match their "
            f"sha256 (stored {row['sha256'][:12]}..., computed {actual[:12]}...); "
            "the row was altered after it was saved"
        )
    return PolicyVersionRecord(
        id=row["id"],
        created_at=row["created_at"],
        kind=row["kind"],
        params=row["params"],
        metrics=row["metrics"],
        sha256=row["sha256"],
        note=row["note"],
    )


__all__ = ["PolicyVersionRecord", "latest_policy_version", "save_policy_version"]
