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

:func:`checkpoint_job` and :func:`schedule_checkpoints` run it on a schedule (setting
``ledger_checkpoint_cron``) into ``ledger_checkpoint_dir``, under the ``checkpoint`` job lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, and_, func, select

from sprout.errors import ConfigError, LedgerError
from sprout.ledger.chain import GENESIS_HASH, canonical_datetime
from sprout.ledger.checkpoint import (
    ROLLUP_FIELDS,
    SUM_FIELDS,
    ChainMark,
    Checkpoint,
    CheckpointFormatError,
    new_checkpoint,
    parse_checkpoint,
    sums_close,
)
from sprout.ledger.migrate import create_ledger_engine, ledger_errors, mask_url
from sprout.ledger.schema import receipt_rollups_table, receipts_table
from sprout.ledger.verify import (
    _READERS,
    Problem,
    VerifyResult,
    _describe,
    _heads,
    _stream,
)

if TYPE_CHECKING:
    from apscheduler.job import Job
    from apscheduler.schedulers.base import BaseScheduler

log = logging.getLogger("sprout.ledger")

#: Rows fetched per round trip.
_FETCH_ROWS = 5000
#: The scheduled job's id and its cluster-wide lock.
JOB_ID, LOCK_NAME = "sprout-ledger-checkpoint", "checkpoint"


# ---------------------------------------------------------------------- walking a chain


class _Walk:
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


def _rows(conn: Any, chain_id: str, after: int, upto: int) -> Iterator[Any]:
    """Rows ``after < seq <= upto`` of a chain, laid out as :mod:`sprout.ledger.verify`
    streams them (so that its row readers apply)."""
    t = receipts_table
    yield from _stream(conn, and_(t.c.chain_id == chain_id, t.c.seq > after, t.c.seq <= upto))


def _rollup_totals(conn: Any) -> tuple[float, ...]:
    t = receipt_rollups_table
    row = conn.execute(select(*(func.coalesce(func.sum(t.c[n]), 0) for n in ROLLUP_FIELDS))).one()
    return (int(row[0]), *(float(v) for v in row[1:]))


@contextlib.contextmanager
def _connect(db_url: str, engine: Engine | None, action: str) -> Iterator[Any]:
    own = engine is None
    eng = engine if engine is not None else create_ledger_engine(db_url)
    try:
        with ledger_errors(db_url, action), eng.connect() as conn:
            yield conn
    finally:
        if own:
            eng.dispose()


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
    with _connect(db_url, engine, "taking a checkpoint") as conn:
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
            walk = _Walk(chain_id, start)
            for row in _rows(conn, chain_id, walk.seq, count):
                walk.step(row)
            if walk.broken is not None:
                raise LedgerError(f"{refuse}{walk.broken[1]} (run `sprout ledger verify`)")
            if walk.seq != count or walk.hash != last_hash:
                raise LedgerError(
                    f"{refuse}chain {chain_id}: its recorded head ({count} receipts) does not "
                    f"match its rows (they end at seq {walk.seq}) (run `sprout ledger verify`)"
                )
            marks.append(walk.mark())
        rollups = _rollup_totals(conn)
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
    with _connect(db_url, engine, "checking checkpoints") as conn:
        heads = _heads(conn)
        for chain_id in sorted(by_chain):
            marks = sorted(by_chain[chain_id], key=lambda ms: ms[0].seq)
            _check_chain(conn, chain_id, marks, heads.get(chain_id), found)
        rollups = _rollup_totals(conn)
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
    walk = _Walk(chain_id)
    todo = [(m, s) for m, s in marks if m.seq > 0]
    last_good = 0
    if todo:
        for row in _rows(conn, chain_id, 0, todo[-1][0].seq):
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


def _moved(conn: Any, walk: _Walk, mark: ChainMark, source: str, found: _Findings) -> bool:
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


def _chain_broken(conn: Any, walk: _Walk, mark: ChainMark, source: str, found: _Findings) -> None:
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
    conn: Any, walk: _Walk, mark: ChainMark, source: str, last_good: int, found: _Findings
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


# ---------------------------------------------------------------------- files


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file (the signature is checked by :func:`check_checkpoints`).

    Raises:
        ConfigError: the file cannot be read, is not JSON or is not a checkpoint.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"checkpoint file {p} does not exist") from None
    except OSError as e:
        raise ConfigError(f"checkpoint file {p}: cannot read ({e.strerror or e})") from e
    try:
        return parse_checkpoint(data, f"checkpoint file {p}")
    except CheckpointFormatError as e:
        raise ConfigError(str(e)) from e


def checkpoint_files(paths: Sequence[str | Path]) -> list[Path]:
    """The checkpoint files ``paths`` name: files as given, directories' ``*.json`` sorted.

    Raises:
        ConfigError: a path that does not exist, or a directory with no checkpoint.
    """
    out: list[Path] = []
    for value in paths:
        p = Path(value)
        if p.is_dir():
            files = sorted(p.glob("*.json"))
            if not files:
                raise ConfigError(f"checkpoint directory {p} holds no *.json checkpoint")
            out += files
        elif p.exists():
            out.append(p)
        else:
            raise ConfigError(f"checkpoint file {p} does not exist")
    return out


def checkpoint_filename(cp: Checkpoint) -> str:
    """``checkpoint-<UTC time>.json``: names sort by time."""
    return f"checkpoint-{cp.taken_at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}.json"


def write_checkpoint(cp: Checkpoint, path: str | Path) -> Path:
    """Write ``cp`` to ``path`` atomically (a reader never sees half a file).

    Raises:
        ConfigError: the file cannot be written.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(cp.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"cannot write checkpoint {p} ({e.strerror or e})") from e
    return p


def latest_checkpoint(directory: str | Path, public_key: Any, database: str) -> Checkpoint | None:
    """The newest checkpoint in ``directory`` of ``database`` (a masked URL) that
    ``public_key`` signed; files that are not such a checkpoint are passed over."""
    d = Path(directory)
    if not d.is_dir():
        return None
    for path in sorted(d.glob("checkpoint-*.json"), reverse=True):
        try:
            cp = read_checkpoint(path)
        except ConfigError as e:
            log.warning("ledger checkpoint: skipping %s: %s", path, e)
            continue
        if cp.database == database and cp.signature_problem(public_key) is None:
            return cp
    return None


# ---------------------------------------------------------------------- the job


def checkpoint_once(
    settings: Any,
    *,
    key: Any,
    directory: str | Path | None = None,
    output: str | Path | None = None,
    full: bool = False,
    engine: Engine | None = None,
) -> tuple[Checkpoint, list[Path]]:
    """Take a checkpoint of ``settings.db_url`` and write it.

    Args:
        settings: the settings (``db_url``).
        key: the ``Ed25519PrivateKey``.
        directory: a directory of checkpoints (written as :func:`checkpoint_filename`);
            the newest one there of this ledger and key is the starting point unless ``full``.
        output: a file to write it to as well.
        full: recompute every chain from its first row.
        engine: an existing engine for the ledger.

    Returns:
        The checkpoint and the files written.
    """
    directory = directory or None  # "" (an unset setting) is no directory
    previous = None
    if directory is not None and not full:
        previous = latest_checkpoint(directory, key.public_key(), mask_url(settings.db_url))
    cp = take_checkpoint(settings.db_url, key, previous=previous, engine=engine)
    written = []
    if directory is not None:
        written.append(write_checkpoint(cp, Path(directory) / checkpoint_filename(cp)))
    if output is not None:
        written.append(write_checkpoint(cp, output))
    return cp, written


def checkpoint_job(settings: Any, *, key: Any | None = None) -> Checkpoint | None:
    """One scheduled run: a checkpoint into ``settings.ledger_checkpoint_dir``, unless
    another replica holds the ``checkpoint`` job lock (then None). Never raises for a
    failed run (it is logged; the next run tries again)."""
    from sprout.ledger.keys import signing_key
    from sprout.ledger.locks import job_lock

    if not settings.ledger_checkpoint_dir:
        log.error("ledger checkpoint: no ledger_checkpoint_dir is set; nothing written")
        return None
    try:
        with job_lock(settings.db_url, LOCK_NAME) as acquired:
            if not acquired:
                log.info("ledger checkpoint: another process holds the job lock; skipped")
                return None
            signer = key if key is not None else signing_key(settings)
            cp, written = checkpoint_once(
                settings, key=signer, directory=settings.ledger_checkpoint_dir
            )
    except (ConfigError, LedgerError) as e:
        log.error("ledger checkpoint failed: %s", e)
        return None
    log.info(
        "ledger checkpoint: %d chains, %d receipts, key %s -> %s",
        len(cp.chains),
        cp.receipts,
        cp.key_id,
        ", ".join(map(str, written)),
    )
    return cp


def schedule_checkpoints(scheduler: BaseScheduler, settings: Any, *, key: Any = None) -> Job:
    """Add :func:`checkpoint_job` to ``scheduler`` on ``settings.ledger_checkpoint_cron``.

    Raises:
        ConfigError: no ``ledger_checkpoint_dir``, no usable signing key (checked now rather
            than at the first run), or a bad cron line.
    """
    from sprout.ledger.keys import signing_key
    from sprout.scheduler import add_cron_job, cron_fields

    if not settings.ledger_checkpoint_dir:
        raise ConfigError(
            "scheduled checkpoints need a directory: set ledger_checkpoint_dir "
            "(SPROUT_LEDGER_CHECKPOINT_DIR) or give --dir"
        )
    signer = key if key is not None else signing_key(settings)
    fields = cron_fields(settings.ledger_checkpoint_cron, setting="ledger_checkpoint_cron")
    return add_cron_job(
        scheduler,
        checkpoint_job,
        job_id=JOB_ID,
        name="ledger checkpoint",
        args=(settings,),
        kwargs={"key": signer},
        **fields,
    )


__all__ = [
    "JOB_ID",
    "LOCK_NAME",
    "check_checkpoints",
    "checkpoint_filename",
    "checkpoint_files",
    "checkpoint_job",
    "checkpoint_once",
    "latest_checkpoint",
    "read_checkpoint",
    "schedule_checkpoints",
    "take_checkpoint",
    "write_checkpoint",
]
