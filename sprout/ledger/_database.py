"""A ledger's database: its engine, opened and migrated, and the transactions on it.

Every part of a :class:`~sprout.ledger.store.Ledger` (the writer, the table stores) goes
through one :class:`LedgerDatabase`, so that an in-memory SQLite database, which is a single
shared connection, is taken in turns by all of them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Insert, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine as SAEngine

from sprout.ledger.migrate import (
    SQLITE_BEGIN_OPTION,
    create_ledger_engine,
    ensure_schema,
    is_sqlite_memory,
    ledger_errors,
    mask_url,
    sqlite_file,
)


class LedgerDatabase:
    """The engine of one ledger, with its transactions.

    Args:
        url: the SQLAlchemy URL (kept unmasked: error messages mask it themselves).
        engine: the engine on ``url``.
    """

    def __init__(self, url: str, engine: SAEngine) -> None:
        self.url = url
        self.engine = engine
        #: The URL with its password masked, for log lines.
        self.label = mask_url(url)
        # An in-memory SQLite database is one shared connection: take turns on it.
        self.lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if is_sqlite_memory(url) else contextlib.nullcontext()
        )

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction."""
        with self.lock, self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def begin_write(self) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so waiting writers queue up)."""
        with self.lock, self.engine.connect() as conn:
            conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            with conn.begin():
                yield conn

    def errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        """Database errors inside the block raise :class:`~sprout.errors.LedgerError`."""
        return ledger_errors(self.url, action)


def open_database(url: str, *, sqlite_synchronous: str, migrate: bool) -> LedgerDatabase:
    """Create the engine on ``url`` (and a SQLite file's folder); migrate it if asked.

    Raises:
        LedgerError: the engine cannot be created or the migration failed.
    """
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_ledger_engine(url, sqlite_synchronous=sqlite_synchronous)
    try:
        if migrate:
            ensure_schema(url, engine=engine)
    except BaseException:
        engine.dispose()
        raise
    return LedgerDatabase(url, engine)


def insert_ignoring(dialect: str, table: Any, index_elements: list[str]) -> Insert:
    """INSERT that skips rows clashing on ``index_elements`` where the dialect can say so.

    The callers filter out stored keys first; this covers a concurrent writer (another
    replica) inserting the same key between that check and the insert.
    """
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=index_elements)
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=index_elements)
    return insert(table)


__all__ = ["LedgerDatabase", "insert_ignoring", "open_database"]
