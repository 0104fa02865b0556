"""Receipts waiting outside the database: find them (``verify``) and bring them in (``recover``).

A receipt that is not in the database yet can wait in three places beside the spool path
(setting ``ledger_spool``; default :func:`~sprout.ledger._spool.default_spool_path`):

- the **spool** (``<spool>``), where batches go while the database is unusable; the running
  ledger replays it, and so does the next one to start beside it;
- **journals** (``<spool>.journal-<token>``) of ``durable`` ledgers: a live ledger holds an
  exclusive ``flock`` on its own and empties it as its receipts commit (its lines are *in
  flight*); the journal of a killed process keeps its lines until the next ledger adopts it;
- the **rejected** file (``<spool>.rejected.jsonl``, minus ``.jsonl``), where receipts the
  database refused on their own are set aside with the reason (never replayed by itself).

:func:`scan_pending` counts the receipts of the spool and of orphaned journals that the
database does not hold (a line whose receipt is stored already, say a journal cut short by
a kill between commit and truncation, is not pending), so that ``sprout ledger verify``
never says "intact" over a hidden backlog. :func:`recover` opens a
:class:`~sprout.ledger.store.Ledger` beside them, which adopts the orphaned journals and
replays the spool (stored receipts are skipped, so none is stored twice), and scans again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from sprout.ledger._spool import default_spool_path, rejected_path_for
from sprout.ledger.migrate import create_ledger_engine, ledger_errors
from sprout.ledger.schema import receipts_table

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: journals cannot be told live or orphaned
    fcntl = None  # type: ignore[assignment]

#: Keys looked up per query (far below the databases' bound-parameter limits).
_LOOKUP_CHUNK = 500

_Key = tuple[datetime, str]


def spool_path_for(settings: Any) -> Path:
    """The spool a ledger of ``settings`` uses (as :func:`sprout.factory` builds it)."""
    return (
        Path(settings.ledger_spool)
        if settings.ledger_spool
        else default_spool_path(settings.db_url)
    )


@dataclass
class PendingFile:
    """One file of waiting receipts.

    Attributes:
        path: the file.
        kind: ``spool`` or ``journal``.
        lines: receipt lines in it.
        pending: its receipts the database does not hold (counted once over all files).
        unreadable: lines that are no receipt (a line torn by a kill; replay sets it aside).
        live: a journal whose ledger is running (it commits its lines itself).
    """

    path: Path
    kind: str
    lines: int = 0
    pending: int = 0
    unreadable: int = 0
    live: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**self.__dict__, "path": str(self.path)}


@dataclass
class PendingReport:
    """What waits outside the database (see the module docstring)."""

    spool: Path
    files: list[PendingFile] = field(default_factory=list)
    #: Receipts set aside in the rejected file.
    rejected: int = 0
    #: The keys of the pending receipts.
    keys: set[_Key] = field(default_factory=set, repr=False)

    @property
    def pending(self) -> int:
        """Receipts waiting in the spool or orphaned journals, not in the database."""
        return sum(f.pending for f in self.files if not f.live)

    @property
    def in_flight(self) -> int:
        """Receipts in journals of running ledgers, not yet committed."""
        return sum(f.pending for f in self.files if f.live)

    def note(self) -> str:
        """One line for ``verify`` ("" when nothing waits anywhere)."""
        parts = []
        waiting = [f for f in self.files if f.pending and not f.live]
        if waiting:
            where = ", ".join(
                f"{f.path} ({f.pending}{', left by a stopped process' * (f.kind == 'journal')})"
                for f in waiting
            )
            parts.append(
                f"{self.pending} receipt(s) pending in {where}: run `sprout ledger recover`"
            )
        if self.in_flight:
            parts.append(f"{self.in_flight} receipt(s) in flight in journals of running ledgers")
        unreadable = sum(f.unreadable for f in self.files)
        if unreadable:
            parts.append(f"{unreadable} unreadable line(s) (torn by a kill) in the spool/journals")
        if self.rejected:
            parts.append(
                f"{self.rejected} receipt(s) the database refused are kept in "
                f"{rejected_path_for(self.spool)} (see their _error)"
            )
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "spool": str(self.spool),
            "pending": self.pending,
            "in_flight": self.in_flight,
            "rejected": self.rejected,
            "files": [f.as_dict() for f in self.files],
        }


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0


def _is_live(path: Path) -> bool:
    """Whether a running ledger holds ``path``'s lock (the file is its journal)."""
    if fcntl is None:  # pragma: no cover
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases a lock taken
    return False


def _read_keys(path: Path) -> tuple[list[_Key], int, int]:
    """The receipt keys in a spool/journal file, its lines and its unreadable lines."""
    keys: list[_Key] = []
    lines = unreadable = 0
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; a vanished file counts as empty
    except OSError:
        return keys, 0, 0
    with fh:
        for line in fh:
            if not line.strip():
                continue
            lines += 1
            try:
                record = json.loads(line)
                created = datetime.fromisoformat(record["created_at"])
                request_id = record["request_id"]
                if not isinstance(request_id, str):
                    raise TypeError(request_id)
            except (ValueError, TypeError, KeyError):
                unreadable += 1
                continue
            created = created.replace(tzinfo=UTC) if created.tzinfo is None else created
            keys.append((created.astimezone(UTC), request_id))
    return keys, lines, unreadable


def _stored(conn: Any, keys: Iterable[_Key]) -> set[_Key]:
    """Which keys the database holds (through the ``(created_at, request_id)`` index)."""
    t = receipts_table
    ordered = sorted(set(keys))
    found: set[_Key] = set()
    for start in range(0, len(ordered), _LOOKUP_CHUNK):
        chunk = ordered[start : start + _LOOKUP_CHUNK]
        stmt = select(t.c.created_at, t.c.request_id).where(
            t.c.created_at.in_(sorted({k[0] for k in chunk})),
            t.c.request_id.in_(sorted({k[1] for k in chunk})),
        )
        found.update((c.astimezone(UTC), r) for c, r in conn.execute(stmt))
    return found


def scan_pending(db_url: str, spool: str | Path, *, engine: Engine | None = None) -> PendingReport:
    """Count the receipts waiting beside ``spool`` that the database at ``db_url`` lacks.

    Raises:
        LedgerError: the database cannot be read.
    """
    spool = Path(spool)
    report = PendingReport(spool=spool, rejected=_count_lines(rejected_path_for(spool)))
    candidates = [(spool, "spool")] if spool.exists() else []
    try:
        journals = sorted(spool.parent.glob(spool.name + ".journal-*"))
    except OSError:
        journals = []
    candidates += [(p, "journal") for p in journals]
    per_file: list[tuple[PendingFile, list[_Key]]] = []
    for path, kind in candidates:
        keys, lines, unreadable = _read_keys(path)
        live = kind == "journal" and _is_live(path)
        per_file.append((PendingFile(path, kind, lines, 0, unreadable, live), keys))
    if not any(keys for _, keys in per_file):
        report.files = [f for f, _ in per_file if f.lines]
        return report
    own = engine is None
    eng = engine if engine is not None else create_ledger_engine(db_url)
    try:
        with ledger_errors(db_url, "looking up pending receipts"), eng.connect() as conn:
            stored = _stored(conn, (k for _, keys in per_file for k in keys))
    finally:
        if own:
            eng.dispose()
    # Each waiting receipt counts once, where a dead process left it before a live one.
    seen = set(stored)
    for f, keys in sorted(per_file, key=lambda fk: fk[0].live):
        for key in keys:
            if key not in seen:
                seen.add(key)
                f.pending += 1
                if not f.live:
                    report.keys.add(key)
    report.files = [f for f, _ in per_file if f.lines]
    return report


@dataclass
class RecoverResult:
    """What :func:`recover` did."""

    before: PendingReport
    after: PendingReport
    #: Receipts pending before that the database holds now.
    recovered: int
    #: Receipts the database refused meanwhile (moved to the rejected file).
    rejected: int
    #: Receipts in the database after.
    stored: int

    @property
    def remaining(self) -> int:
        """Receipts still pending (the database is down, say)."""
        return self.after.pending

    def summary(self) -> str:
        """A few lines for a person."""
        lines = [
            f"recovered {self.recovered} of {self.before.pending} pending receipt(s); "
            f"{self.remaining} remain pending; the ledger holds {self.stored} receipts"
        ]
        if self.rejected:
            lines.append(
                f"{self.rejected} receipt(s) were refused by the database and set aside in "
                f"{rejected_path_for(self.after.spool)}"
            )
        if self.after.in_flight:
            lines.append(
                f"{self.after.in_flight} receipt(s) are in flight in journals of running "
                "ledgers (they commit them)"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "recovered": self.recovered,
            "remaining": self.remaining,
            "rejected": self.rejected,
            "stored": self.stored,
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
        }


def recover(db_url: str, spool: str | Path, *, timeout_s: float = 120.0) -> RecoverResult:
    """Bring the receipts of the spool and of orphaned journals beside ``spool`` into the
    database: a :class:`~sprout.ledger.store.Ledger` adopts the journals and replays the
    spool (receipts stored already are skipped).

    Raises:
        LedgerError: the database cannot be read or migrated.
    """
    from sprout.ledger.store import Ledger

    spool = Path(spool)
    before = scan_pending(db_url, spool)
    ledger = Ledger(db_url, spool_path=spool, durability="buffered")
    try:
        ledger.flush(timeout_s)  # a flush adopts orphaned journals and replays the spool now
        engine = ledger.engine
        after = scan_pending(db_url, spool, engine=engine)
        with ledger_errors(db_url, "counting receipts"), engine.connect() as conn:
            stored = _stored(conn, before.keys)
            total = int(conn.scalar(select(func.count()).select_from(receipts_table)) or 0)
    finally:
        ledger.close()
    return RecoverResult(
        before=before,
        after=after,
        recovered=len(stored),
        rejected=max(0, after.rejected - before.rejected),
        stored=total,
    )


__all__ = [
    "PendingFile",
    "PendingReport",
    "RecoverResult",
    "recover",
    "rejected_path_for",
    "scan_pending",
    "spool_path_for",
]
