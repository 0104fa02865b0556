"""Ledger engines and schema migrations (Alembic, configured in code; no ``alembic.ini``).

The ledger's schema is created and changed only here, by the revisions in
:func:`sprout.data.migrations_dir`. Every SQLAlchemy or Alembic failure leaves this module as
a :class:`~sprout.errors.LedgerError` whose message names the database URL with its password
masked.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from sprout.data import migrations_dir
from sprout.errors import LedgerError

try:  # POSIX: processes migrating one SQLite file take turns through flock
    import fcntl
except ImportError:  # pragma: no cover - Windows: BEGIN IMMEDIATE and the busy timeout only
    fcntl = None  # type: ignore[assignment]

#: How long SQLite waits on a locked database, and PostgreSQL on a connection attempt.
SQLITE_BUSY_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 10
#: pg_advisory_xact_lock key that serializes replicas migrating one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x5350_524F_5554  # "SPROUT"
#: Longest a process waits for another one's migration of the same SQLite file.
SQLITE_MIGRATION_WAIT_S = 300.0

#: Errors converted into LedgerError at this edge (ImportError: a missing DB driver).
DB_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    CommandError,
    ImportError,
    OSError,
    ValueError,
)


def mask_url(url: str | URL) -> str:
    """``url`` as a string with its password replaced by ``***``, safe for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError, TypeError):
        # Not parseable as a URL: still hide anything between "user:" and "@".
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def describe_error(error: BaseException, url: str | URL | None = None) -> str:
    """A one-line description of ``error``; the URL's password, if any, is scrubbed from it."""
    orig = getattr(error, "orig", None)
    text_ = str(orig if orig is not None else error).strip()
    first = text_.splitlines()[0] if text_ else ""
    out = f"{type(orig if orig is not None else error).__name__}: {first}".rstrip(": ")
    if url is not None:
        with contextlib.suppress(SQLAlchemyError, ValueError, TypeError):
            password = make_url(url).password
            if password:
                out = out.replace(str(password), "***")
    return out


@contextlib.contextmanager
def ledger_errors(url: str | URL, action: str) -> Iterator[None]:
    """Convert database errors raised inside the block into :class:`LedgerError`."""
    try:
        yield
    except LedgerError:
        raise
    except DB_ERRORS as e:
        raise LedgerError(
            f"ledger {mask_url(url)}: {action} failed: {describe_error(e, url)}"
        ) from e


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def is_sqlite_memory(url: str | URL) -> bool:
    """Whether ``url`` names an in-memory SQLite database."""
    u = make_url(url)
    return _is_sqlite(u) and (
        u.database in (None, "", ":memory:") or u.query.get("mode") == "memory"
    )


def sqlite_file(url: str | URL) -> Path | None:
    """The file of a file-backed SQLite URL, else None."""
    u = make_url(url)
    if not _is_sqlite(u) or is_sqlite_memory(u) or not u.database:
        return None
    database = u.database
    if database.startswith("file:"):  # URI filenames (?uri=true)
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database)


def _prepare_sqlite_dir(url: str) -> None:
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def create_ledger_engine(
    db_url: str, *, sqlite_synchronous: str | None = None, **kwargs: Any
) -> Engine:
    """An engine with the ledger's settings.

    SQLite: usable from the writer thread (``check_same_thread=False``), WAL journal (readers
    never block the writer), a busy timeout; an in-memory database gets one shared
    connection so that every thread sees the same data. Other backends: a connect timeout
    and pre-ping, so that a restarted server does not fail the first write after it.
    Statement parameters are kept out of error messages (they would flood the logs).

    Args:
        db_url: SQLAlchemy URL.
        sqlite_synchronous: SQLite ``PRAGMA synchronous`` (``NORMAL``: in WAL mode a commit
            survives a killed process but not a power cut; default ``FULL``).
        **kwargs: passed to :func:`sqlalchemy.create_engine`.

    Raises:
        LedgerError: bad URL or missing driver.
    """
    with ledger_errors(db_url, "creating the engine"):
        url = make_url(db_url)
        options: dict[str, Any] = {"hide_parameters": True}
        if _is_sqlite(url):
            options["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
            if is_sqlite_memory(url):
                options["poolclass"] = StaticPool
        else:
            options["pool_pre_ping"] = True
            if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
                options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        options.update(kwargs)
        engine = create_engine(url, **options)
        if _is_sqlite(url):
            if sqlite_synchronous not in (None, "NORMAL", "FULL", "EXTRA"):
                raise ValueError(f"sqlite_synchronous={sqlite_synchronous!r}")
            event.listen(engine, "connect", functools.partial(_sqlite_pragmas, sqlite_synchronous))
            event.listen(engine, "begin", _sqlite_begin)
        return engine


#: Execution option naming the SQLite ``BEGIN`` mode of a connection's transactions
#: (``IMMEDIATE`` for writers: take the write lock at BEGIN, so that the busy timeout
#: applies, instead of failing on a lock upgrade when another process committed meanwhile).
SQLITE_BEGIN_OPTION = "sprout_sqlite_begin"


def _sqlite_pragmas(synchronous: str | None, dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own implicit BEGIN cannot be told IMMEDIATE: turn it off, and let the
    # "begin" event below start every transaction (SQLAlchemy's documented recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if synchronous:
            cursor.execute(f"PRAGMA synchronous={synchronous}")
    finally:
        cursor.close()


def _sqlite_begin(conn: Any) -> None:
    mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def alembic_config(db_url: str) -> Config:
    """An Alembic Config pointing at the bundled migrations and ``db_url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    # ConfigParser interpolates "%": URL-encoded passwords must be escaped.
    cfg.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))
    return cfg


def head_revisions() -> tuple[str, ...]:
    """The head revision(s) of the bundled migrations."""
    with ledger_errors("<migrations>", f"reading migrations in {migrations_dir()}"):
        return tuple(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def _current_heads(engine: Engine) -> tuple[str, ...]:
    with engine.connect() as conn:
        return tuple(MigrationContext.configure(conn).get_current_heads())


@contextlib.contextmanager
def _engine_for(db_url: str, engine: Engine | None) -> Iterator[Engine]:
    if engine is not None:
        yield engine
        return
    own = create_ledger_engine(db_url)
    try:
        yield own
    finally:
        own.dispose()


def current_revision(db_url: str, *, engine: Engine | None = None) -> str | None:
    """The database's Alembic revision, or None if it has never been migrated.

    Args:
        db_url: SQLAlchemy URL of the ledger database.
        engine: an existing engine for ``db_url`` to use instead of a new one.

    Raises:
        LedgerError: the database cannot be read.
    """
    path = sqlite_file(db_url)
    if engine is None and path is not None and not path.exists():
        return None  # don't create an empty file just to look at it
    with _engine_for(db_url, engine) as eng, ledger_errors(db_url, "reading the schema revision"):
        heads = _current_heads(eng)
    return ",".join(sorted(heads)) if heads else None


def upgrade(db_url: str, revision: str = "head", *, engine: Engine | None = None) -> None:
    """Migrate the database to ``revision`` (default: the latest).

    Args:
        db_url: SQLAlchemy URL of the ledger database; a SQLite file's directory is created.
        revision: target Alembic revision.
        engine: an existing engine for ``db_url`` to use instead of a new one.

    Raises:
        LedgerError: the migration failed; the message names the masked URL.
    """
    _prepare_sqlite_dir(db_url)
    with _engine_for(db_url, engine) as eng, ledger_errors(db_url, f"migrating to {revision}"):
        cfg = alembic_config(db_url)
        # One transaction, one migrator at a time: concurrently starting replicas or workers
        # migrate one after the other (the later ones then find nothing to do).
        with _migration_turn(db_url), _write_begin(eng) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)


def downgrade(db_url: str, revision: str, *, engine: Engine | None = None) -> None:
    """Migrate the database back to ``revision`` (``base`` removes every table).

    Raises:
        LedgerError: the migration failed; the message names the masked URL.
    """
    with _engine_for(db_url, engine) as eng, ledger_errors(db_url, f"downgrading to {revision}"):
        cfg = alembic_config(db_url)
        with _migration_turn(db_url), _write_begin(eng) as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)


@contextlib.contextmanager
def _migration_turn(db_url: str) -> Iterator[None]:
    """Hold the migration turn of a SQLite file: an exclusive ``flock`` on
    ``<db>.migrate.lock``, waited for up to :data:`SQLITE_MIGRATION_WAIT_S` (a migration of a
    big ledger can outlast SQLite's busy timeout). Other databases: nothing (PostgreSQL
    serialises on an advisory lock inside the migration's transaction)."""
    path = sqlite_file(db_url)
    if path is None or fcntl is None:
        yield
        return
    lock = path.with_name(f"{path.name}.migrate.lock")
    with open(lock, "a+b") as fh:
        deadline = time.monotonic() + SQLITE_MIGRATION_WAIT_S
        pause = 0.01
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LedgerError(
                        f"ledger {mask_url(db_url)}: another process has been migrating the "
                        f"schema for over {SQLITE_MIGRATION_WAIT_S:.0f} s (lock {lock})"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.25)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _write_begin(engine: Engine) -> Iterator[Any]:
    """A transaction that holds the database's write lock from its start: SQLite ``BEGIN
    IMMEDIATE`` (a read-then-write transaction would fail, not wait, when another process
    wrote meanwhile), PostgreSQL the migration advisory lock."""
    with engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"}).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        yield conn


def ensure_schema(db_url: str, *, engine: Engine | None = None) -> None:
    """Bring the database to the latest revision, doing nothing when it already is there.

    The check reads one row (``alembic_version``), so it is cheap enough for every start.
    Processes that migrate one database at once (replicas, proxy workers) take turns and
    the later ones find nothing to do: an advisory lock on PostgreSQL, a file lock and a
    ``BEGIN IMMEDIATE`` transaction on SQLite.

    Raises:
        LedgerError: the database is unreachable, at a revision this version of Sprout does
            not know (written by a newer one?), or the migration failed.
    """
    _prepare_sqlite_dir(db_url)
    heads = head_revisions()
    with _engine_for(db_url, engine) as eng:
        with ledger_errors(db_url, "reading the schema revision"):
            current = _current_heads(eng)
        if set(current) == set(heads):
            return
        with ledger_errors("<migrations>", "reading migrations"):
            script = ScriptDirectory.from_config(alembic_config(db_url))
            known = {rev.revision for rev in script.walk_revisions()}
        unknown = sorted(set(current) - known)
        if unknown:
            raise LedgerError(
                f"ledger {mask_url(db_url)}: database is at revision {', '.join(unknown)}, "
                f"unknown to this version of sprout (head {', '.join(heads)}); "
                "was it migrated by a newer sprout?"
            )
        upgrade(db_url, "heads", engine=eng)


__all__ = [
    "CONNECT_TIMEOUT_S",
    "SQLITE_BEGIN_OPTION",
    "SQLITE_BUSY_TIMEOUT_S",
    "SQLITE_MIGRATION_WAIT_S",
    "alembic_config",
    "create_ledger_engine",
    "current_revision",
    "describe_error",
    "downgrade",
    "ensure_schema",
    "head_revisions",
    "is_sqlite_memory",
    "ledger_errors",
    "mask_url",
    "sqlite_file",
    "upgrade",
]
