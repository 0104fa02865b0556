"""Take signed checkpoints of a ledger, and check a ledger against them.

:func:`take_checkpoint` recomputes every chain (from the previous checkpoint of the same
ledger and key, when there is one, else from each chain's first row), refuses to sign a
ledger that does not verify, and signs a :class:`~sprout.ledger.checkpoint.Checkpoint` of it.
:func:`check_checkpoints` verifies the signatures with the public key alone, then
recomputes each checkpointed chain from its first row: the hash at the checkpointed ``seq``
must be the checkpointed one, whatever the rows' stored hashes and the recorded heads say.
So a forger who alters, deletes or inserts rows and recomputes every later hash and the
head, truncates a chain and rewrites its head, or deletes rollup rows, is caught for
everything up to the checkpoint; each finding names its kind (``altered``, ``deleted``,
``inserted``, ``truncated``, ``head``, ``rollup``, ``signature``) and the checkpoint that
caught it. Rows after the checkpoint are covered by the in-database chain check only.

Checkpoint files are read and written by :mod:`sprout.ledger.checkpoint_files`; taking them
once or on a schedule is :mod:`sprout.ledger.checkpoint_job`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from sprout.errors import LedgerError
from sprout.ledger.chain import canonical_datetime
from sprout.ledger.chain_walk import ChainWalk, chain_rows, rollup_totals
from sprout.ledger.checkpoint import (
    ROLLUP_FIELDS,
    SUM_FIELDS,
    ChainMark,
    Checkpoint,
    new_checkpoint,
    sums_close,
)
from sprout.ledger.connection import ledger_connection
from sprout.ledger.migrate import mask_url
from sprout.ledger.schema import receipts_table
from sprout.ledger.verify import Problem, VerifyResult, _heads

# ---------------------------------------------------------------------- taking


def take_checkpoint(
    db_url: str,
    private_key: Any,
    *,
    previous: Checkpoint | None = None,
    engine: Engine | None = None,
    now: datetime | None = None,
) -> Checkpoint:
    """Recompute every chain up to its recorded head and sign a checkpoint of them.

    Args:
        db_url: the ledger.
        private_key: an ``Ed25519PrivateKey`` (see :mod:`sprout.ledger.keys`).
        previous: a checkpoint of this ledger whose signature was checked: only the rows
            after it are recomputed, and they must continue from its hashes.
        engine: an existing engine for the ledger.
        now: the time to record (default: now, UTC).

    Raises:
        LedgerError: the database cannot be read, or it does not verify (a broken chain, a
            head that does not match its rows, rollups that count fewer requests than the
            receipts, a chain that no longer continues from ``previous``): nothing is signed.
    """
    taken_at = now or datetime.now(UTC)
    refuse = "refusing to sign a checkpoint: "
    marks: list[ChainMark] = []
    with ledger_connection(db_url, engine, "taking a checkpoint") as conn:
        heads = _heads(conn)
        if previous is not None:
            for mark in previous.chains:
                if mark.chain_id not in heads and mark.seq > 0:
                    raise LedgerError(
                        f"{refuse}chain {mark.chain_id}, covered by the previous checkpoint, "
                        "has no recorded head any more (run `sprout ledger verify --checkpoint`)"
                    )
        for chain_id, (count, last_hash) in sorted(heads.items()):
            start = None if previous is None else previous.mark(chain_id)
            if start is not None and count < start.seq:
                raise LedgerError(
                    f"{refuse}chain {chain_id}: its head records {count} receipts, fewer than "
                    f"the {start.seq} of the previous checkpoint (run `sprout ledger verify "
                    "--checkpoint`)"
                )
            walk = ChainWalk(chain_id, start)
            for row in chain_rows(conn, chain_id, walk.seq, count):
                walk.step(row)
            if walk.broken is not None:
                raise LedgerError(f"{refuse}{walk.broken[1]} (run `sprout ledger verify`)")
            if walk.seq != count or walk.hash != last_hash:
                raise LedgerError(
                    f"{refuse}chain {chain_id}: its recorded head ({count} receipts) does not "
                    f"match its rows (they end at seq {walk.seq}) (run `sprout ledger verify`)"
                )
            marks.append(walk.mark())
        rollups = rollup_totals(conn)
    receipts = sum(m.seq for m in marks)
    if rollups[0] < receipts:
        raise LedgerError(
            f"{refuse}the rollups count {rollups[0]} requests, fewer than the {receipts} "
            "receipts: rollup rows were deleted (run `sprout ledger verify`)"
        )
    checkpoint = new_checkpoint(
        taken_at=taken_at, database=mask_url(db_url), chains=marks, rollups=rollups
    )
    return checkpoint.signed(private_key)


# ---------------------------------------------------------------------- checking


@dataclass
class _Findings:
    result: VerifyResult
    limit: int
    failed: set[str] = field(default_factory=set)

    def add(self, kind: str, message: str, source: str, **where: Any) -> None:
        self.failed.add(source)
        self.result.problem_count += 1
        if len(self.result.problems) < self.limit:
            self.result.problems.append(Problem(kind, message, checkpoint=source, **where))


def check_checkpoints(
    db_url: str,
    checkpoints: Sequence[tuple[str, Checkpoint]],
    public_key: Any,
    result: VerifyResult,
    *,
    engine: Engine | None = None,
    max_problems: int = 100,
) -> None:
    """Check the ledger against signed checkpoints; findings go into ``result``.

    Args:
        db_url: the ledger.
        checkpoints: ``(source, checkpoint)`` pairs (the source names it in messages).
        public_key: the ``Ed25519PublicKey`` they must be signed with.
        result: the in-database verification's result, to add problems and a summary of
            each checkpoint to (:attr:`VerifyResult.checkpoints`).
        engine: an existing engine for the ledger.
        max_problems: problems kept in ``result`` (all are counted).

    Raises:
        LedgerError: the database cannot be read.
    """
    found = _Findings(result, max_problems)
    trusted: list[tuple[str, Checkpoint]] = []
    for source, cp in checkpoints:
        problem = cp.signature_problem(public_key)
        if problem is None:
            trusted.append((source, cp))
        else:
            found.add("signature", f"checkpoint {source}: {problem}; not trusted", source)
    by_chain: dict[str, list[tuple[ChainMark, str]]] = {}
    for source, cp in trusted:
        for mark in cp.chains:
            by_chain.setdefault(mark.chain_id, []).append((mark, source))
    with ledger_connection(db_url, engine, "checking checkpoints") as conn:
        heads = _heads(conn)
        for chain_id in sorted(by_chain):
            marks = sorted(by_chain[chain_id], key=lambda ms: ms[0].seq)
            _check_chain(conn, chain_id, marks, heads.get(chain_id), found)
        rollups = rollup_totals(conn)
    for source, cp in trusted:
        _check_rollups(rollups, cp, source, found)
    for source, cp in checkpoints:
        result.checkpoints.append(
            {
                "source": source,
                "taken_at": cp.taken_at.isoformat(),
                "key_id": cp.key_id,
                "database": cp.database,
                "chains": len(cp.chains),
                "receipts": cp.receipts,
                "signature_ok": any(cp is t for _, t in trusted),
                "ok": source not in found.failed,
            }
        )


def _check_chain(
    conn: Any,
    chain_id: str,
    marks: list[tuple[ChainMark, str]],
    head: tuple[int, str] | None,
    found: _Findings,
) -> None:
    """Walk one chain from its first row past every checkpointed seq."""
    walk = ChainWalk(chain_id)
    todo = [(m, s) for m, s in marks if m.seq > 0]
    last_good = 0
    if todo:
        for row in chain_rows(conn, chain_id, 0, todo[-1][0].seq):
            walk.step(row)
            while todo and todo[0][0].seq <= walk.seq:
                mark, source = todo.pop(0)
                if mark.seq < walk.seq or walk.broken is not None:
                    _chain_broken(conn, walk, mark, source, found)
                elif walk.hash == mark.head_hash:
                    last_good = mark.seq
                else:
                    _rewritten(conn, walk, mark, source, last_good, found)
        for mark, source in todo:  # the rows end before these seqs
            _chain_broken(conn, walk, mark, source, found)
    # The recorded head must not have gone back behind (or away from) any checkpoint.
    mark, source = marks[-1]
    if head is None:
        if mark.seq > 0 or walk.row is not None:
            found.add(
                "head",
                f"chain {chain_id}: checkpoint {source} covers {mark.seq} receipts of it, but "
                "its recorded head is gone (deleted)",
                source,
                chain_id=chain_id,
            )
        return
    for mark, source in marks:
        count, last_hash = head
        if count < mark.seq:
            found.add(
                "head",
                f"chain {chain_id}: its recorded head says {count} receipts, fewer than the "
                f"{mark.seq} checkpoint {source} covered: the head was rewritten",
                source,
                chain_id=chain_id,
                seq=count,
            )
        elif count == mark.seq and last_hash != mark.head_hash:
            found.add(
                "head",
                f"chain {chain_id}: its recorded head hash at seq {count} is not the one "
                f"checkpoint {source} recorded: the head was rewritten",
                source,
                chain_id=chain_id,
                seq=count,
            )


def _where(mark: ChainMark, source: str) -> str:
    return (
        f"the row that checkpoint {source} recorded at seq {mark.seq} (request {mark.request_id})"
    )


def _locate(conn: Any, mark: ChainMark) -> tuple[str, int] | None:
    """Where the row a mark names is stored now: (chain id, seq), or None."""
    if not mark.request_id or not mark.created_at:
        return None
    try:
        created = datetime.strptime(mark.created_at, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    except ValueError:
        return None
    t = receipts_table
    row = conn.execute(
        select(t.c.chain_id, t.c.seq).where(
            t.c.created_at == created, t.c.request_id == mark.request_id
        )
    ).first()
    return None if row is None else (row[0], int(row[1]))


def _moved(conn: Any, walk: ChainWalk, mark: ChainMark, source: str, found: _Findings) -> bool:
    """Report a checkpointed row that now sits at another seq of its chain; False if not."""
    where = _locate(conn, mark)
    if where is None or where[0] != walk.chain_id or where[1] == mark.seq:
        return False
    now_at = where[1]
    n = abs(mark.seq - now_at)
    kind, verb = ("deleted", "deleted") if now_at < mark.seq else ("inserted", "inserted")
    found.add(
        kind,
        f"chain {walk.chain_id}: {n} receipt(s) at or before seq {mark.seq} were {verb} and the "
        f"chain recomputed: {_where(mark, source)} is now at seq {now_at}",
        source,
        chain_id=walk.chain_id,
        seq=mark.seq,
        request_id=mark.request_id,
    )
    return True


def _chain_broken(
    conn: Any, walk: ChainWalk, mark: ChainMark, source: str, found: _Findings
) -> None:
    """A mark not reached: the chain breaks before it, or its rows end before it."""
    if walk.broken is not None:
        kind, why = walk.broken
        found.add(
            kind,
            f"chain {walk.chain_id}: rows 1..{mark.seq} no longer reach the hash checkpoint "
            f"{source} recorded at seq {mark.seq}: {why}",
            source,
            chain_id=walk.chain_id,
            seq=mark.seq,
        )
        return
    if _moved(conn, walk, mark, source, found):
        return
    end = walk.seq
    gone = "none are stored" if end == 0 else f"the rows stop at seq {end}"
    span = f"seq {end + 1}" if end + 1 == mark.seq else f"seq {end + 1}..{mark.seq}"
    found.add(
        "truncated",
        f"chain {walk.chain_id}: checkpoint {source} covers {mark.seq} receipts of it, but "
        f"{gone}: {span} deleted",
        source,
        chain_id=walk.chain_id,
        seq=end + 1,
    )


def _rewritten(
    conn: Any, walk: ChainWalk, mark: ChainMark, source: str, last_good: int, found: _Findings
) -> None:
    """Rows ``1..mark.seq`` are a consistent chain, but not the one checkpointed."""
    row = walk.row
    same_row = (row.request_id, canonical_datetime(row.created_at)) == (
        mark.request_id,
        mark.created_at,
    )
    if not same_row and _moved(conn, walk, mark, source, found):
        return
    diffs = [
        f"{name} over rows 1..{mark.seq} is now {now:.9g}, the checkpoint recorded {then:.9g}"
        for name, now, then in zip(SUM_FIELDS, walk.sums, mark.sums, strict=True)
        if not sums_close(now, then)
    ]
    span = f"seq {last_good + 1}..{mark.seq}"
    if same_row:
        what = f"a receipt in {span} was altered and every later hash and the head recomputed"
    else:
        what = (
            f"{_where(mark, source)} is no longer in the chain (seq {mark.seq} holds request "
            f"{row.request_id}): receipts in {span} were replaced and the chain recomputed"
        )
    found.add(
        "altered",
        f"chain {walk.chain_id}: rows 1..{mark.seq} no longer hash to the head checkpoint "
        f"{source} recorded: {what}" + ("; " + "; ".join(diffs) if diffs else ""),
        source,
        chain_id=walk.chain_id,
        seq=mark.seq,
    )


def _check_rollups(
    rollups: tuple[float, ...], cp: Checkpoint, source: str, found: _Findings
) -> None:
    """Rollups only ever grow: less than at the checkpoint means rows were deleted."""
    shrunk = [
        f"{name} {now:.9g} < {then:.9g}"
        for name, now, then in zip(ROLLUP_FIELDS, rollups, cp.rollups, strict=True)
        if now < then and not sums_close(now, then)
    ]
    if shrunk:
        found.add(
            "rollup",
            f"the rollups now total less than when checkpoint {source} was taken "
            f"({', '.join(shrunk)}): rollup rows were deleted or reduced",
            source,
        )


__all__ = ["check_checkpoints", "take_checkpoint"]
