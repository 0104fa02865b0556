"""Recompute a hash chain row by row from a known position, as checkpoints need it.

:class:`ChainWalk` starts from the genesis or from a checkpoint's
:class:`~sprout.ledger.checkpoint.ChainMark`, checks each row it is given (position, link,
hash, fields its encoding does not cover) with the row readers of
:mod:`sprout.ledger.verify`, keeps the running hash and sums, and notes the first row that
breaks the chain. Taking a checkpoint and checking one (:mod:`sprout.ledger.attest`) both
walk the chains this way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import and_, func, select

from sprout.ledger.chain import GENESIS_HASH, canonical_datetime
from sprout.ledger.checkpoint import ROLLUP_FIELDS, SUM_FIELDS, ChainMark
from sprout.ledger.schema import receipt_rollups_table, receipts_table
from sprout.ledger.verify import _READERS, _describe, _stream


class ChainWalk:
    """Recomputes one chain row by row from a known position, noting the first break."""

    def __init__(self, chain_id: str, start: ChainMark | None = None) -> None:
        self.chain_id = chain_id
        self.start = start
        self.seq = 0 if start is None else start.seq
        self.hash = GENESIS_HASH if start is None else start.head_hash
        self.sums = [0.0] * len(SUM_FIELDS) if start is None else list(start.sums)
        self.row: Any = None  # the last row walked
        #: (kind, message) of the first row that breaks the chain, if any.
        self.broken: tuple[str, str] | None = None

    def step(self, row: Any) -> None:
        """Walk ``row`` (the next one by seq); after a break, only the position moves."""
        if self.broken is None:
            self.broken = self._check(row)
            if self.broken is None:
                self.hash = row.hash
                for i, name in enumerate(SUM_FIELDS):
                    self.sums[i] += float(getattr(row, name))
        self.seq, self.row = max(self.seq, row.seq), row

    def _check(self, row: Any) -> tuple[str, str] | None:
        expected = self.seq + 1
        if row.seq < expected:
            return "inserted", f"{_describe(row)} repeats a position already taken: inserted"
        if row.seq > expected:
            last = row.seq - 1
            span = f"seq {expected}" if last == expected else f"seq {expected}..{last}"
            return "deleted", f"chain {self.chain_id}: {span} missing (before {_describe(row)})"
        if row.prev_hash != self.hash:
            return "altered", f"{_describe(row)} does not link to the row before it"
        reader = _READERS.get(row.hash_version)
        if reader is None:
            return "altered", f"{_describe(row)}: hash_version {row.hash_version!r} is unknown"
        try:
            computed = reader.hash(row)
        except (TypeError, ValueError) as e:
            computed = f"unhashable: {e}"
        if computed != row.hash:
            return "altered", f"{_describe(row)}: its content does not match its hash"
        uncovered = reader.uncovered(row)
        if uncovered:
            return "altered", f"{_describe(row)}: {', '.join(uncovered)} set after it was hashed"
        return None

    def mark(self) -> ChainMark:
        """The checkpoint mark of the position reached (assumes no break)."""
        row = self.row
        if row is None and self.start is not None:
            return self.start  # no row since the start
        return ChainMark(
            chain_id=self.chain_id,
            seq=self.seq,
            head_hash=self.hash,
            request_id="" if row is None else row.request_id,
            created_at="" if row is None else canonical_datetime(row.created_at),
            sums=tuple(self.sums),
        )


def chain_rows(conn: Any, chain_id: str, after: int, upto: int) -> Iterator[Any]:
    """Rows ``after < seq <= upto`` of a chain, laid out as :mod:`sprout.ledger.verify`
    streams them (so that its row readers apply)."""
    t = receipts_table
    yield from _stream(conn, and_(t.c.chain_id == chain_id, t.c.seq > after, t.c.seq <= upto))


def rollup_totals(conn: Any) -> tuple[float, ...]:
    """:data:`~sprout.ledger.checkpoint.ROLLUP_FIELDS` summed over every rollup row (the
    request count as an int)."""
    t = receipt_rollups_table
    row = conn.execute(select(*(func.coalesce(func.sum(t.c[n]), 0) for n in ROLLUP_FIELDS))).one()
    return (int(row[0]), *(float(v) for v in row[1:]))


__all__ = ["ChainWalk", "chain_rows", "rollup_totals"]
