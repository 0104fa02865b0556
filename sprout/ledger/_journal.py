"""A durable ledger's journal: each receipt on disk before ``append`` returns.

The journal is private to one :class:`~sprout.ledger.store.Ledger` and truncated once its
receipts are committed; the journal of a dead process is adopted into the spool by the
next ledger that starts beside it (:meth:`sprout.ledger._spool.Spool.adopt_orphan_journals`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

try:  # POSIX: the owner's flock tells a live journal from a dead writer's
    import fcntl
except ImportError:  # pragma: no cover - Windows: journals are never adopted
    fcntl = None  # type: ignore[assignment]

#: A durable journal whose committed head grows past this is rewritten without it.
_JOURNAL_COMPACT_BYTES = 2**20

#: ``fdatasync`` where the platform has it: an append needs its data and size on disk, not
#: its times.
_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _write_all(fd: int, data: bytes) -> None:
    """Write the whole of ``data`` (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def journal_path(spool_path: Path, token: str) -> Path:
    """The journal of ledger ``token`` beside ``spool_path`` (orphans are found by this name)."""
    return spool_path.with_name(f"{spool_path.name}.journal-{token}")


class Journal:
    """A durable ledger's private journal: fsynced receipt lines not yet committed.

    The owner holds an exclusive ``flock`` on it for its lifetime, so another ledger can
    tell a dead writer's journal (lock free) from a live one's. Offsets are logical (they
    keep growing across truncations) so that queued receipts can name their line's end.

    Group commit: each appender writes its line, then waits until a sync covers it. One
    ``fdatasync`` covers every line written before it started, so concurrent appenders
    share syncs instead of queueing for one each; a lone appender pays one sync.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # Lock order: _sync_lock, then _lock. _lock guards the file and offsets (held only
        # for a write); _sync_lock serialises syncs with truncation and compaction, which
        # replace what the descriptor points at.
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Locked before it takes the journal's name: a ledger starting beside this one (another
        # worker) adopts unlocked journals, and must not take this one between create and lock.
        opening = path.with_name(path.name.replace(".journal-", ".opening-"))
        self._fd = os.open(opening, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(opening, path)
        except BaseException:
            os.close(self._fd)
            opening.unlink(missing_ok=True)
            raise
        self._base = 0
        self._size = 0
        self._synced = 0  # logical offset up to which the journal is on disk
        self.syncs = 0  # fdatasync calls so far (group commit makes it < lines written)
        self._poisoned = False  # a receipt of it could be neither committed nor spooled

    def write(self, data: bytes, then: Callable[[int], None]) -> None:
        """Append ``data``; ``then(end)`` runs under the write lock (to enqueue); return
        once the line is on disk."""
        with self._lock:
            _write_all(self._fd, data)
            self._size += len(data)
            end = self._base + self._size
            then(end)
        self._sync_to(end)

    def _sync_to(self, end: int) -> None:
        """Return once the journal is on disk up to logical offset ``end``."""
        with self._sync_lock:
            if self._synced >= end:
                return  # a sync that started after our write covered it
            with self._lock:
                target = self._base + self._size
                fd = self._fd
            _fdatasync(fd)
            self.syncs += 1
            self._synced = max(self._synced, target)

    def handled(self, end: int, safe: bool) -> None:
        """Receipts up to logical offset ``end`` are committed or spooled (if ``safe``)."""
        with self._sync_lock, self._lock:
            self._poisoned = self._poisoned or not safe
            if self._poisoned:
                return  # keep every line: the next ledger adopts the journal
            if end == self._base + self._size:
                os.ftruncate(self._fd, 0)
                self._base, self._size = end, 0
            elif end - self._base > _JOURNAL_COMPACT_BYTES:
                self._compact(end)

    def _compact(self, end: int) -> None:
        with open(self.path, "rb") as fh:
            fh.seek(end - self._base)
            tail = fh.read()
        tmp = self.path.with_name(self.path.name.replace(".journal-", ".compact-"))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            _write_all(fd, tail)
            os.fsync(fd)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(tmp, self.path)  # a crash leaves the old or the new file: both replay
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd
        self._base, self._size = end, len(tail)
        self._synced = max(self._synced, end + len(tail))  # the new file was synced whole

    def close(self) -> None:
        """Close; the file is removed when every line in it was handled."""
        with self._sync_lock, self._lock:
            if self._fd < 0:
                return
            if self._size == 0 and not self._poisoned:
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = -1


__all__ = ["Journal", "journal_path"]
