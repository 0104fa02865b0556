"""``sprout ledger verify``: check every hash chain, its recorded head, and the rollups.

Each row's hash is recomputed from its stored content with the reference encoding of
:mod:`sprout.ledger.chain` (independently of the writer's fast path) that the row names in
``hash_version``: rows written before a newer encoding keep verifying with theirs, and a field
their encoding does not cover must be empty. Each row must link to the one before it in its
chain, sequence numbers must run 1, 2, ... without gaps, and the last row must match the
chain's recorded head (count and hash). So an altered row, a deleted row, a truncated tail,
a row inserted into a chain or a chain with no head are each named, with the row's id,
request id, chain and seq. The hourly rollups (derived data that reports read) are checked
against the receipts, and stored policy versions against their SHA-256.

What this cannot catch by itself is a wholesale rewrite by someone who recomputes every hash
and head: signed checkpoints kept outside the database catch that
(:mod:`sprout.ledger.attest`, ``sprout ledger verify --checkpoint``).
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, column, select, text

from sprout.ledger._rows import params_sha256
from sprout.ledger.chain import ENCODINGS, GENESIS_HASH, ChainEncoding
from sprout.ledger.migrate import create_ledger_engine, ledger_errors, mask_url
from sprout.ledger.rollup import ROLLUP_KEYS, SUM_NAMES, aggregate_sql
from sprout.ledger.schema import (
    UTCDateTime,
    ledger_chains_table,
    policy_versions_table,
    receipt_rollups_table,
    receipts_table,
)

#: Rows fetched per round trip while streaming the chains.
_FETCH_ROWS = 5000
#: Relative tolerance of rollup float sums (summed in another order than the receipts).
_SUM_RTOL = 1e-9


@dataclass(frozen=True)
class Problem:
    """One integrity problem.

    Attributes:
        kind: ``altered``, ``deleted``, ``inserted``, ``truncated``, ``rollup`` or
            ``policy``; checkpoints (:mod:`sprout.ledger.attest`) add ``head`` (a recorded
            head rewritten) and ``signature`` (a checkpoint file forged or modified).
        message: what is wrong, naming the row (id, request id, chain, seq).
        chain_id, seq, row_id, request_id: the row or chain concerned, where there is one.
        checkpoint: the checkpoint file that caught it (None: the in-database checks).
    """

    kind: str
    message: str
    chain_id: str | None = None
    seq: int | None = None
    row_id: int | None = None
    request_id: str | None = None
    checkpoint: str | None = None


@dataclass
class VerifyResult:
    """What :func:`verify` found."""

    url: str
    chains: int = 0
    receipts: int = 0
    rollups_checked: bool = False
    problems: list[Problem] = field(default_factory=list)
    #: Problems found in all (``problems`` keeps the first ``max_problems``).
    problem_count: int = 0
    #: SHA-256 over every chain head (id, count, last hash): keep it outside the database
    #: to detect a rewrite that recomputed every hash.
    heads_digest: str = ""
    #: Signed checkpoints checked (:func:`sprout.ledger.attest.check_checkpoints`), one
    #: dict each (source, taken_at, key_id, chains, receipts, signature_ok, ok).
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    #: Receipts waiting outside the database (a spool, journals of stopped processes), what
    #: to say about them, and the details (:mod:`sprout.ledger.pending`).
    pending_receipts: int = 0
    pending_note: str = ""
    pending: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no problem was found (pending receipts are no problem of integrity)."""
        return self.problem_count == 0

    def summary(self) -> str:
        """A few lines for a person."""
        checked = "hashes, links, heads" + (", rollups" if self.rollups_checked else "")
        if self.checkpoints:
            checked += f", {len(self.checkpoints)} signed checkpoint(s)"
        lines = [f"ledger {self.url}: {self.chains} chains, {self.receipts} receipts"]
        if not self.ok:
            lines.append(f"FAILED: {self.problem_count} problem(s) ({checked} checked)")
            lines += [f"  {p.kind}: {p.message}" for p in self.problems]
            if self.problem_count > len(self.problems):
                lines.append(f"  ... and {self.problem_count - len(self.problems)} more")
        elif self.pending_receipts:
            lines.append(f"chains intact ({checked} checked); {self.pending_note}")
        else:
            lines.append(f"OK: intact ({checked} checked)")
        for cp in self.checkpoints:
            verdict = "matches" if cp["ok"] else "DOES NOT MATCH"
            of = f"of {cp['database']}, " if cp.get("database", self.url) != self.url else ""
            lines.append(
                f"checkpoint {cp['source']} ({of}taken {cp['taken_at']}, key {cp['key_id']}): "
                f"{cp['chains']} chains, {cp['receipts']} receipts: {verdict}"
            )
        if self.pending_note and (not self.ok or not self.pending_receipts):
            lines.append(("also: " if self.pending_receipts else "note: ") + self.pending_note)
        if self.ok:
            lines.append(f"heads digest {self.heads_digest}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "url": self.url,
            "ok": self.ok,
            "chains": self.chains,
            "receipts": self.receipts,
            "rollups_checked": self.rollups_checked,
            "problem_count": self.problem_count,
            "problems": [p.__dict__ for p in self.problems],
            "heads_digest": self.heads_digest,
            "checkpoints": self.checkpoints,
            "pending_receipts": self.pending_receipts,
            "pending": self.pending,
        }


class _Collector:
    def __init__(self, result: VerifyResult, limit: int) -> None:
        self.result = result
        self.limit = limit

    def add(self, kind: str, message: str, **where: Any) -> None:
        self.result.problem_count += 1
        if len(self.result.problems) < self.limit:
            self.result.problems.append(Problem(kind, message, **where))


def _span(first: int, last: int) -> str:
    return f"seq {first} was" if first == last else f"seq {first}..{last} were"


def _describe(row: Any) -> str:
    return f"row id {row.id} (request {row.request_id}, chain {row.chain_id} seq {row.seq})"


def verify(
    db_url: str,
    *,
    engine: Engine | None = None,
    check_rollups: bool = True,
    max_problems: int = 100,
) -> VerifyResult:
    """Check the ledger at ``db_url``.

    Args:
        db_url: SQLAlchemy URL of the ledger.
        engine: an existing engine for it (else one is made and disposed).
        check_rollups: also compare the hourly rollups with the receipts.
        max_problems: problems kept in the result (all are counted).

    Raises:
        LedgerError: the database cannot be read.
    """
    own = engine is None
    eng = engine if engine is not None else create_ledger_engine(db_url)
    result = VerifyResult(url=mask_url(db_url))
    problems = _Collector(result, max_problems)
    try:
        with ledger_errors(db_url, "verifying"), eng.connect() as conn:
            heads = _heads(conn)
            result.heads_digest = _heads_digest(heads)
            _check_chains(conn, heads, result, problems)
            _check_policies(conn, problems)
            if check_rollups:
                _check_rollups(conn, problems)
                result.rollups_checked = True
    finally:
        if own:
            eng.dispose()
    return result


def _heads(conn: Any) -> dict[str, tuple[int, str]]:
    t = ledger_chains_table
    rows = conn.execute(select(t.c.chain_id, t.c.receipt_count, t.c.last_hash))
    return {chain_id: (int(count), last_hash) for chain_id, count, last_hash in rows}


def _heads_digest(heads: dict[str, tuple[int, str]]) -> str:
    digest = hashlib.sha256()
    for chain_id in sorted(heads):
        count, last_hash = heads[chain_id]
        digest.update(f"{chain_id}\t{count}\t{last_hash}\n".encode())
    return digest.hexdigest()


#: Every receipt field some encoding covers, in the order :func:`_stream` selects them.
_CONTENT_FIELDS: tuple[str, ...] = tuple(
    dict.fromkeys(name for enc in ENCODINGS.values() for name in enc.fields)
)
#: Where :func:`_stream`'s rows hold the content fields.
_CONTENT_START = 6


#: What a field holds in rows hashed before an encoding covered it (None unless named here).
_BEFORE_ENCODED: dict[str, Any] = {"outcome": "completed"}


class _RowReader:
    """Reads one encoding's content out of a streamed row.

    Also names the stored fields that encoding does not cover: they must hold what the
    migration that added them gave older rows (None, or ``completed`` for the outcome: every
    receipt before v3 was of a completed generation), since nothing would catch their
    alteration (a v1 row has no prefill/decode split).
    """

    def __init__(self, enc: ChainEncoding) -> None:
        pos = {name: _CONTENT_START + i for i, name in enumerate(_CONTENT_FIELDS)}
        self.encoding = enc
        self._values = operator.itemgetter(*(pos[name] for name in enc.fields))
        self._uncovered = [
            (name, pos[name], _BEFORE_ENCODED.get(name))
            for name in _CONTENT_FIELDS
            if name not in enc.fields
        ]

    def hash(self, row: Any) -> str:
        """The hash ``row`` should have."""
        enc = self.encoding
        content = enc.canonical_content(self._values(row))
        return enc.row_hash(row.chain_id, row.seq, row.prev_hash, content)

    def uncovered(self, row: Any) -> list[str]:
        """The fields of ``row`` that hold a value its encoding does not cover."""
        return [name for name, i, empty in self._uncovered if row[i] != empty]


_READERS: dict[int, _RowReader] = {n: _RowReader(enc) for n, enc in ENCODINGS.items()}


def _row_select() -> Any:
    """The SELECT of receipt rows laid out as :class:`_RowReader` reads them."""
    t = receipts_table
    return select(
        t.c.id,
        t.c.chain_id,
        t.c.seq,
        t.c.prev_hash,
        t.c.hash,
        t.c.hash_version,
        *(t.c[n] for n in _CONTENT_FIELDS),
    )


def _stream(conn: Any, where: Any = None) -> Iterator[Any]:
    """Receipt rows (all, or those matching ``where``) by chain and position, streamed."""
    t = receipts_table
    stmt = _row_select()
    if where is not None:
        stmt = stmt.where(where)
    stmt = stmt.order_by(t.c.chain_id, t.c.seq, t.c.id)
    yield from conn.execution_options(yield_per=_FETCH_ROWS).execute(stmt)


def _check_chains(
    conn: Any, heads: dict[str, tuple[int, str]], result: VerifyResult, problems: _Collector
) -> None:
    unseen = dict(heads)
    current: str | None = None
    expected, prev_hash = 1, GENESIS_HASH
    last: Any = None
    past_head_reported = False

    def finish() -> None:
        if current is None:
            return
        result.chains += 1
        head = unseen.pop(current, None)
        if head is None:
            problems.add(
                "inserted",
                f"chain {current} has no recorded head: its rows (the first at "
                f"{_describe(first)}) were inserted, or its head was deleted",
                chain_id=current,
                seq=first.seq,
                row_id=first.id,
                request_id=first.request_id,
            )
            return
        count, head_hash = head
        if last.seq < count:
            problems.add(
                "truncated",
                f"chain {current}: its head records {count} receipts but the rows end at "
                f"{_describe(last)}: {_span(last.seq + 1, count)} deleted",
                chain_id=current,
                seq=last.seq + 1,
            )
        elif last.seq == count and last.hash != head_hash:
            problems.add(
                "altered",
                f"chain {current}: the last row, {_describe(last)}, does not match the "
                "recorded head's hash (the row was altered and rehashed, or replaced)",
                chain_id=current,
                seq=last.seq,
                row_id=last.id,
                request_id=last.request_id,
            )

    first: Any = None
    for row in _stream(conn):
        result.receipts += 1
        if row.chain_id != current:
            finish()
            current, expected, prev_hash = row.chain_id, 1, GENESIS_HASH
            first, past_head_reported = row, False
        where = {
            "chain_id": row.chain_id,
            "seq": row.seq,
            "row_id": row.id,
            "request_id": row.request_id,
        }
        head = heads.get(row.chain_id)
        if row.seq < expected:
            problems.add(
                "inserted",
                f"{_describe(row)} repeats a position already taken in its chain: inserted",
                **where,
            )
            continue
        if head is not None and row.seq > head[0] and not past_head_reported:
            past_head_reported = True
            problems.add(
                "inserted",
                f"{_describe(row)} lies past its chain's recorded head ({head[0]} "
                "receipts): inserted",
                **where,
            )
        gap = row.seq > expected
        if gap:
            problems.add(
                "deleted",
                f"chain {row.chain_id}: {_span(expected, row.seq - 1)} deleted (the gap is "
                f"before {_describe(row)})",
                chain_id=row.chain_id,
                seq=expected,
            )
        # Each row verifies with the encoding it names; the name itself is covered, since
        # each encoding hashes its own version tag.
        reader = _READERS.get(row.hash_version)
        computed, uncovered = "", []
        if reader is not None:
            try:
                computed = reader.hash(row)
            except (TypeError, ValueError) as e:
                computed = f"unhashable: {e}"
            uncovered = reader.uncovered(row)
        if reader is None:
            problems.add(
                "altered",
                f"{_describe(row)}: its hash_version {row.hash_version!r} names no known encoding",
                **where,
            )
        elif computed != row.hash:
            problems.add(
                "altered", f"{_describe(row)}: its content does not match its hash", **where
            )
        elif uncovered:
            problems.add(
                "altered",
                f"{_describe(row)}: hashed with encoding v{row.hash_version}, which does not "
                f"cover {', '.join(uncovered)}, yet they hold values (set after it was written)",
                **where,
            )
        elif not gap and row.prev_hash != prev_hash:
            problems.add(
                "altered",
                f"{_describe(row)} does not link to the row before it in its chain: that "
                "row was altered and rehashed, or this one was inserted in its place",
                **where,
            )
        expected, prev_hash, last = row.seq + 1, row.hash, row
    finish()
    for chain_id, (count, _) in sorted(unseen.items()):
        if count > 0:
            result.chains += 1
            problems.add(
                "truncated",
                f"chain {chain_id}: its head records {count} receipts but none are stored: deleted",
                chain_id=chain_id,
                seq=1,
            )


def _check_policies(conn: Any, problems: _Collector) -> None:
    t = policy_versions_table
    for row in conn.execute(select(t.c.id, t.c.kind, t.c.params, t.c.sha256)):
        try:
            actual = params_sha256(row.params)
        except (TypeError, ValueError):
            actual = ""
        if actual != row.sha256:
            problems.add(
                "policy",
                f"policy version {row.id} ({row.kind}): params do not match their sha256",
                row_id=row.id,
            )


def _check_rollups(conn: Any, problems: _Collector) -> None:
    dialect = conn.dialect.name
    # Typed by position, so that bucket_start compares with the rollups' datetimes.
    typed = text(aggregate_sql(dialect, "1 = 1")).columns(
        column("bucket_start", UTCDateTime()),
        *(column(f"c{i}") for i in range(1, len(ROLLUP_KEYS) + len(SUM_NAMES))),
    )
    expected = {tuple(row[: len(ROLLUP_KEYS)]): row for row in conn.execute(typed)}
    t = receipt_rollups_table
    stored = {
        tuple(row[: len(ROLLUP_KEYS)]): row
        for row in conn.execute(select(*(t.c[k] for k in (*ROLLUP_KEYS, *SUM_NAMES))))
    }
    for key in sorted(set(expected) | set(stored), key=repr):
        want, have = expected.get(key), stored.get(key)
        label = f"rollup {key[0]:%Y-%m-%d %H:00} " + "/".join(str(k) for k in key[1:])
        if want is None or have is None:
            problems.add(
                "rollup",
                f"{label}: "
                + ("no receipts have this key" if want is None else "missing from the rollups"),
            )
            continue
        for i, name in enumerate(SUM_NAMES, start=len(ROLLUP_KEYS)):
            a, b = float(want[i] or 0), float(have[i] or 0)
            if not math.isclose(a, b, rel_tol=_SUM_RTOL, abs_tol=1e-12):
                problems.add("rollup", f"{label}: {name} is {b:g}, the receipts give {a:g}")
                break


__all__ = ["Problem", "VerifyResult", "verify"]
