"""Cluster-wide job locks, so that replicas sharing a ledger run a scheduled job once.

::

    with job_lock(settings.db_url, "poll") as acquired:
        if acquired:
            poll_carbon()

- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) held on a dedicated
  connection for the duration of the block; the server releases it if the process dies.
- SQLite (one machine by nature): an exclusive ``flock`` on a file beside the database; the
  kernel releases it if the process dies. An in-memory database uses a process-local lock.

A lock that cannot be had within ``wait_s`` yields False (another replica runs the job);
it never raises for that. Errors reaching the database raise :class:`LedgerError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, text

from sprout.errors import LedgerError
from sprout.ledger.migrate import create_ledger_engine, is_sqlite_memory, ledger_errors, sqlite_file

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Longest pause between two tries while waiting for a lock.
_POLL_MAX_S = 0.25
_memory_locks: dict[str, threading.Lock] = {}
_memory_guard = threading.Lock()


def lock_key(name: str) -> int:
    """The signed 64-bit advisory-lock key of job ``name`` (stable across processes)."""
    digest = hashlib.sha256(f"sprout-job:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise LedgerError(f"job lock name {name!r}: use 1-64 letters, digits, '_', '.', '-'")


@contextlib.contextmanager
def job_lock(target: str | Engine, name: str, *, wait_s: float = 0.0) -> Iterator[bool]:
    """Hold the cluster-wide lock of job ``name`` for the block, if it can be had.

    Args:
        target: the ledger's URL, or an engine for it.
        name: the job (``poll``, ``retrain``, ``judge``, ``prune`` ...).
        wait_s: how long to wait for a lock that another process holds (0: try once).

    Yields:
        True when this process holds the lock; False when another one does.

    Raises:
        LedgerError: a bad name, a database other than SQLite or PostgreSQL, or the
            database cannot be reached.
    """
    _check_name(name)
    url = target if isinstance(target, str) else target.url.render_as_string(hide_password=False)
    backend = url.split(":", 1)[0].split("+", 1)[0]
    if backend == "sqlite":
        if is_sqlite_memory(url):
            with _memory_lock(name, wait_s) as acquired:
                yield acquired
            return
        path = sqlite_file(url)
        assert path is not None
        with _file_lock(path.with_name(f"{path.name}.job-{name}.lock"), wait_s) as acquired:
            yield acquired
        return
    if backend != "postgresql":
        raise LedgerError(f"job locks need PostgreSQL or SQLite, not {backend}")
    engine = create_ledger_engine(url) if isinstance(target, str) else target
    try:
        with _advisory_lock(engine, url, name, wait_s) as acquired:
            yield acquired
    finally:
        if isinstance(target, str):
            engine.dispose()


def _deadline_tries(wait_s: float) -> Iterator[None]:
    """Yield once per try until ``wait_s`` has passed (at least once)."""
    deadline = time.monotonic() + max(0.0, wait_s)
    pause = 0.01
    while True:
        yield
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, _POLL_MAX_S)


@contextlib.contextmanager
def _advisory_lock(engine: Engine, url: str, name: str, wait_s: float) -> Iterator[bool]:
    key = lock_key(name)
    with ledger_errors(url, f"taking job lock {name!r}"):
        conn = engine.connect()
    acquired = False
    try:
        with ledger_errors(url, f"taking job lock {name!r}"):
            for _ in _deadline_tries(wait_s):
                acquired = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}))
                conn.commit()  # the lock is the session's: no transaction is left open
                if acquired:
                    break
        yield acquired
    finally:
        released = not acquired
        if acquired:
            with contextlib.suppress(Exception):
                released = bool(conn.scalar(text("SELECT pg_advisory_unlock(:k)"), {"k": key}))
                conn.commit()
        if not released:
            # Never hand a connection that may still hold the lock back to the pool.
            conn.invalidate()
        conn.close()


@contextlib.contextmanager
def _file_lock(path: Path, wait_s: float) -> Iterator[bool]:
    if fcntl is None:  # pragma: no cover - Windows
        raise LedgerError("job locks on SQLite need fcntl (POSIX)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+b")  # noqa: SIM115 - held for the whole block
    except OSError as e:
        raise LedgerError(f"job lock file {path}: {e}") from e
    acquired = False
    try:
        for _ in _deadline_tries(wait_s):
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                acquired = True
                break
            except BlockingIOError:
                continue
        yield acquired
    finally:
        if acquired:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


@contextlib.contextmanager
def _memory_lock(name: str, wait_s: float) -> Iterator[bool]:
    with _memory_guard:
        lock = _memory_locks.setdefault(name, threading.Lock())
    acquired = lock.acquire(timeout=wait_s) if wait_s > 0 else lock.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            lock.release()


__all__ = ["job_lock", "lock_key"]
