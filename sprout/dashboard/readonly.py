"""Opening a ledger so that the dashboard cannot write to it.

SQLite files are opened with ``mode=ro``; PostgreSQL sessions are read-only transactions.
Every read runs in one snapshot, so that an integrity check of a ledger being written sees
its chains and their heads as of one moment.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from sprout.errors import ConfigError
from sprout.ledger.migrate import (
    CONNECT_TIMEOUT_S,
    SQLITE_BUSY_TIMEOUT_S,
    create_ledger_engine,
    is_sqlite_memory,
    ledger_errors,
    sqlite_file,
)


def open_readonly(db_url: str) -> Engine:
    """An engine that cannot write to the ledger at ``db_url``.

    SQLite files are opened with ``mode=ro`` (and ``PRAGMA query_only``), so that neither a
    bug nor a crafted request can change them; PostgreSQL sessions start with
    ``default_transaction_read_only``. Other backends get the ledger's usual engine (the
    dashboard issues only SELECTs). Each transaction reads one snapshot (SQLite: an explicit
    ``BEGIN``; PostgreSQL: ``REPEATABLE READ``), so that a check of a ledger being written
    sees its chains and their heads as of one moment.

    Raises:
        ConfigError: an in-memory SQLite URL, or a SQLite file that does not exist.
        LedgerError: a bad URL or a missing driver.
    """
    with ledger_errors(db_url, "opening the ledger read-only"):
        url = make_url(db_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if is_sqlite_memory(url):
            raise ConfigError(
                "an in-memory SQLite ledger lives inside its process; open the dashboard "
                "of the process that writes it (the proxy's server_dashboard setting)"
            )
        path = sqlite_file(url)
        if path is None or not path.exists():
            raise ConfigError(f"no ledger at {path} (give --db URL or set SPROUT_DB_URL)")
        readonly = URL.create(
            url.drivername,
            database=f"file:{quote(str(path.resolve()))}",
            query={"mode": "ro", "uri": "true"},
        )
        with ledger_errors(db_url, "opening the ledger read-only"):
            engine = create_engine(
                readonly,
                hide_parameters=True,
                connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
            )
        event.listen(engine, "connect", _sqlite_query_only)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        args: dict[str, Any] = {"options": "-c default_transaction_read_only=on"}
        if "connect_timeout" not in url.query:
            args["connect_timeout"] = CONNECT_TIMEOUT_S
        return create_ledger_engine(db_url, connect_args=args, isolation_level="REPEATABLE READ")
    return create_ledger_engine(db_url)


def _sqlite_query_only(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite begins no transaction before a SELECT: the "begin" event below does.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA query_only = ON")
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    finally:
        cursor.close()


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")  # a read snapshot until the connection is given back


__all__ = ["open_readonly"]
