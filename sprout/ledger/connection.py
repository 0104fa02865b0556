"""One read connection to a ledger, on a caller's engine or a throwaway one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import Connection, Engine

from sprout.ledger.migrate import create_ledger_engine, ledger_errors


@contextlib.contextmanager
def ledger_connection(db_url: str, engine: Engine | None, action: str) -> Iterator[Connection]:
    """A connection to the ledger at ``db_url``, on ``engine`` if given, else on an engine
    made for the block and disposed after it (a caller's engine is left open).

    Args:
        db_url: the ledger.
        engine: an existing engine for it, or None.
        action: what is being done, for :func:`~sprout.ledger.migrate.ledger_errors`.

    Raises:
        LedgerError: the database cannot be reached or read (also for errors in the block).
    """
    own = engine is None
    eng = engine if engine is not None else create_ledger_engine(db_url)
    try:
        with ledger_errors(db_url, action), eng.connect() as conn:
            yield conn
    finally:
        if own:
            eng.dispose()


__all__ = ["ledger_connection"]
