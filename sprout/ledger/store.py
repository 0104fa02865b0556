"""The ledger store: a buffered, hash-chaining receipt writer with a disk spool.

:meth:`Ledger.append` only puts the receipt on an in-memory queue, so a request never waits
for (or fails because of) the database. A daemon thread commits the queue in batches; each
batch is validated, chained (every ledger instance writes its own hash chain, see
:mod:`sprout.ledger.chain`), inserted, folded into the hourly rollups and recorded in the
chain's head, all in one transaction. Chain positions are assigned inside that transaction,
from the head stored in the database, so a batch that fails takes no position and a receipt
replayed later (or twice) chains like any other.

When a batch cannot be committed (database down, locked, table missing...) it is appended to
a JSON-lines spool file and fsynced; later cycles replay the spool, skipping receipts already
stored (the key is ``(created_at, request_id)``), and remove it once it is in. Processes that
share a spool file take turns on it through a file lock. A receipt the database would refuse
on its own (a value too long for its column, say) is moved to a ``*.rejected.jsonl`` file
beside the spool instead of holding up the rest. Nothing is dropped silently.

Durability: in ``durable`` mode (the default) :meth:`Ledger.append` first appends the receipt
to a journal file private to this ledger and returns once it is on disk (group commit: one
``fdatasync`` covers every line written before it, so concurrent appenders share it); the
journal is truncated once its receipts are committed, and the journal of a dead process is
adopted into the spool by the next ledger that starts beside it. In ``buffered`` mode a
process killed with SIGKILL loses the receipts still in memory, at most those of the last
flush interval (plus a batch being committed).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import hashlib
import json
import logging
import operator
import os
import secrets
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Insert, func, insert, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine as SAEngine

from sprout.carbon.base import CarbonReading
from sprout.errors import ConfigError, LedgerError
from sprout.ledger.chain import (
    FIELD_KINDS,
    FLOAT_FIELDS,
    GENESIS_HASH,
    HASH_VERSION,
    HASHED_FIELDS,
    NULL_FLOAT,
    OTHER_FIELDS,
    ChainHasher,
    new_chain_id,
)
from sprout.ledger.migrate import (
    SQLITE_BEGIN_OPTION,
    create_ledger_engine,
    describe_error,
    ensure_schema,
    is_sqlite_memory,
    ledger_errors,
    mask_url,
    sqlite_file,
)
from sprout.ledger.rollup import upsert_chain_range_sql
from sprout.ledger.schema import (
    carbon_readings_table,
    ledger_chains_table,
    policy_versions_table,
    receipts_table,
    sampled_prompts_table,
    verdicts_table,
)
from sprout.receipt import Receipt

try:  # POSIX: processes sharing a spool file take turns through flock
    import fcntl
except ImportError:  # pragma: no cover - Windows: the spool is guarded per process only
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("sprout.ledger")

RECEIPT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Receipt))
#: ``buffered``: SIGKILL loses at most the last flush interval; ``durable``: nothing appended.
DURABILITY_MODES: tuple[str, ...] = ("buffered", "durable")
#: Rows per IN (...) lookup: far below SQLite's and PostgreSQL's bound-parameter limits.
_LOOKUP_CHUNK = 500
#: Longest wait between two replay attempts while the database stays down.
_MAX_BACKOFF_S = 30.0
#: Longest wait for another process's turn on the shared spool (its replay is bounded by the
#: database timeouts).
_SPOOL_LOCK_WAIT_S = 60.0
#: A durable journal whose committed head grows past this is rewritten without it.
_JOURNAL_COMPACT_BYTES = 2**20
#: While a backlog waits, an appender yields the GIL to the writer every this many receipts.
_YIELD_EVERY = 128
#: How often a running ledger looks for journals left by dead processes.
_ADOPT_EVERY_S = 30.0
#: How SQLAlchemy stores a datetime in SQLite (a test checks that it still does).
_DT_FORMAT = "%04d-%02d-%02d %02d:%02d:%02d.%06d"
#: PostgreSQL's INTEGER range; SQLite would take more, and both must store the same.
_INT32 = 2**31
_CHAIN_COLUMNS = ("chain_id", "seq", "prev_hash", "hash")


@dataclass(frozen=True)
class PolicyVersionRecord:
    """A stored policy version, its params verified against their SHA-256."""

    id: int
    created_at: datetime
    kind: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    sha256: str
    note: str = ""


def canonical_json(obj: Any) -> str:
    """Canonical JSON of ``obj``: sorted keys, no spaces, no NaN/Infinity.

    Raises:
        ValueError, TypeError: ``obj`` is not plain JSON data.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def params_sha256(params: Any) -> str:
    """Hex SHA-256 of the canonical JSON of ``params``."""
    return hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()


def default_spool_path(db_url: str) -> Path:
    """``<file>.spool.jsonl`` beside a SQLite file, else ``sprout-ledger.spool.jsonl`` in cwd."""
    path = sqlite_file(db_url)
    if path is None:
        return Path.cwd() / "sprout-ledger.spool.jsonl"
    return path.with_name(path.name + ".spool.jsonl")


def _is_row_error(error: BaseException) -> bool:
    """Whether the database refused the data itself rather than being unusable.

    Integrity and data errors, and failures to bind a value (a ``StatementError`` that
    never reached the driver), are about rows; everything else (connection refused, locked,
    missing table, permission) is about the database, and retrying later can succeed.
    """
    if isinstance(error, sa_exc.IntegrityError | sa_exc.DataError):
        return True
    return isinstance(error, sa_exc.StatementError) and not isinstance(error, sa_exc.DBAPIError)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: A receipt's field values, in :data:`RECEIPT_FIELDS` order.
_receipt_values = operator.attrgetter(*RECEIPT_FIELDS)


def _json_dict(receipt: Receipt) -> dict[str, Any]:
    """:meth:`Receipt.to_json_dict`, shallow (its fields are scalars; ``asdict``'s deep copy
    costs more than the journal's disk write)."""
    try:
        out = dict(zip(RECEIPT_FIELDS, _receipt_values(receipt), strict=True))
        for key in ("created_at", "ci_time"):
            out[key] = out[key].isoformat()
        return out
    except Exception:  # a field of the wrong type: keep what there is rather than nothing
        return {name: getattr(receipt, name, None) for name in RECEIPT_FIELDS}


def _prepared_record(row: _Prepared) -> dict[str, Any]:
    """A prepared receipt back as the JSON record of :meth:`Receipt.to_json_dict`."""
    record = dict(zip(HASHED_FIELDS, row[1], strict=True))
    for name in ("created_at", "ci_time"):
        value = record[name]
        # SQLite's stored text is UTC: say so, so that the record reads back as the instant.
        record[name] = (
            value.isoformat() if isinstance(value, datetime) else f"{value[:10]}T{value[11:]}+00:00"
        )
    return record


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, default=str) + "\n"


#: ``fdatasync`` where the platform has it: an append needs its data and size on disk, not
#: its times.
_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Invalid(Exception):
    """A receipt whose values its columns cannot hold (it is set aside, never chained)."""


class _Conflict(Exception):
    """Some row of a batch was stored meanwhile: redo the batch with a lookup."""


#: A receipt ready to insert: (idempotency key, column values, hashed content: the JSON
#: values and the packed floats of :func:`sprout.ledger.chain.canonical_content`).
_Prepared = tuple[tuple[datetime, str], tuple[Any, ...], tuple[Any, ...], str]
#: A queued receipt: (its prepared form, None, end of its journal line or 0), or, for one
#: that cannot be stored, (the receipt, why, end). Only the prepared form is kept (not the
#: Receipt): a tuple of atoms, which the cyclic GC stops tracking, where a queue of Receipts
#: would be walked by every collection while it is long.
_Item = tuple[Any, "_Invalid | None", int]


_Getter = Callable[[Sequence[Any]], tuple[Any, ...]]
_NULL_FLOATS = (NULL_FLOAT,)


def _tuple_getter(indexes: Sequence[int]) -> _Getter:
    """``operator.itemgetter(*indexes)``, but a tuple for any number of indexes."""
    if len(indexes) >= 2:
        return operator.itemgetter(*indexes)
    return lambda seq: tuple(seq[i] for i in indexes)


def _make_preparer(dialect: Any) -> Callable[[Receipt], _Prepared]:
    """A function that validates a receipt and converts it for ``dialect`` and for hashing.

    Validation is what both backends would enforce (column lengths, 32-bit integers, no NUL
    in text, finite floats, datetimes), so a receipt that passes is stored alike on SQLite
    and PostgreSQL and hashes alike when read back, and one that fails never takes a chain
    position. This runs for every receipt, so it works on groups of fields at C speed; on
    SQLite the insert parameters double as the hashed content. The result equals
    :func:`sprout.ledger.chain.canonical_content` (a test checks).
    """
    # SQLite stores datetimes as text (SQLAlchemy's format, which to_text reproduces).
    sqlite_text = dialect.name == "sqlite"
    getter = operator.attrgetter(*HASHED_FIELDS)
    index = {name: i for i, name in enumerate(HASHED_FIELDS)}
    req_str = [index[n] for n, k in FIELD_KINDS if k == "str"]
    req_limits = tuple(receipts_table.c[HASHED_FIELDS[i]].type.length for i in req_str)
    opt_str = [
        (index[n], n, receipts_table.c[n].type.length) for n, k in FIELD_KINDS if k == "str?"
    ]
    ints = [(index[n], n) for n, k in FIELD_KINDS if k.startswith("int")]
    float_indexes = [index[n] for n in FLOAT_FIELDS]
    float_get = operator.itemgetter(*float_indexes)
    others_get = operator.itemgetter(*(index[n] for n in OTHER_FIELDS))
    pack = struct.Struct(f"<{len(FLOAT_FIELDS)}d").pack
    created_index, ci_index = index["created_at"], index["ci_time"]
    others_created = OTHER_FIELDS.index("created_at")
    others_ci = OTHER_FIELDS.index("ci_time")
    min_limit = min(req_limits + tuple(limit for _, _, limit in opt_str))
    int_get = operator.itemgetter(*(i for i, _ in ints))
    n_floats = len(float_indexes)
    # Per signature (the types of a receipt's values, so also which ones are None): getters
    # of its present strings, and of its present floats and its floats with NaN for None
    # (None when all are present), so that optional fields cost no per-value Python.
    plans: dict[tuple[type, ...], tuple[_Getter, _Getter | None, _Getter | None]] = {}

    def make_plan(signature: tuple[type, ...]) -> tuple[_Getter, _Getter | None, _Getter | None]:
        str_indexes = [*req_str, *(i for i, _, _ in opt_str)]
        strs = _tuple_getter([i for i in str_indexes if signature[i] is not type(None)])
        nulls = {j for j, i in enumerate(float_indexes) if signature[i] is type(None)}
        if not nulls:
            return strs, None, None
        present = _tuple_getter([j for j in range(n_floats) if j not in nulls])
        # Index n_floats is the NaN appended to the floats.
        packed = _tuple_getter([n_floats if j in nulls else j for j in range(n_floats)])
        return strs, present, packed

    # ci_time repeats across the receipts of one carbon reading: convert it once.
    last_ci: list[tuple[Any, Any, str]] = [(None, None, "")]

    def check_types(values: Sequence[Any]) -> None:
        for (name, kind), v in zip(FIELD_KINDS, values, strict=True):
            if v is None:
                if kind.endswith("?"):
                    continue
                raise _Invalid(f"{name} is missing")
            code = kind[0]
            if (
                (code == "s" and type(v) is not str)
                or (code == "f" and type(v) not in (float, int))
                or (code == "i" and type(v) is not int)
                or (code == "d" and not isinstance(v, datetime))
            ):
                raise _Invalid(f"{name} must be a {kind.rstrip('?')}, got {type(v).__name__}")

    def check_strings(values: Sequence[Any]) -> None:
        for i, limit in zip(req_str, req_limits, strict=True):
            v = values[i]
            if len(v) > limit or "\x00" in v:
                raise _Invalid(f"{HASHED_FIELDS[i]}: longer than {limit} or contains NUL")
        for i, name, limit in opt_str:
            v = values[i]
            if v is not None and (len(v) > limit or "\x00" in v):
                raise _Invalid(f"{name}: longer than {limit} or contains NUL")

    def check_numbers(values: Sequence[Any]) -> None:
        for i, name in ints:
            v = values[i]
            if v is not None and not -_INT32 <= v < _INT32:
                raise _Invalid(f"{name} must fit 32 bits, got {v}")
        for i in float_indexes:
            v = values[i]
            if v is not None and v - v != 0.0:
                raise _Invalid(f"{HASHED_FIELDS[i]} must be finite, got {v!r}")

    def to_text(v: datetime) -> tuple[datetime, str]:
        utc = v if v.tzinfo is UTC else v.astimezone(UTC) if v.tzinfo else v.replace(tzinfo=UTC)
        # The text SQLite stores (as SQLAlchemy writes it), which is also the hashed form.
        return utc, _DT_FORMAT % (
            utc.year,
            utc.month,
            utc.day,
            utc.hour,
            utc.minute,
            utc.second,
            utc.microsecond,
        )

    def prepare(receipt: Receipt) -> _Prepared:
        values = getter(receipt)
        signature = tuple(map(type, values))
        plan = plans.get(signature)
        if plan is None:
            check_types(values)
            plan = make_plan(signature)
            if len(plans) < 4096:
                plans[signature] = plan
        strs_get, present_get, packed_get = plan
        # Cheap checks over whole groups; the slow ones run only to find what failed.
        strs = strs_get(values)
        if max(map(len, strs)) > min_limit or "\x00" in "".join(strs):
            check_strings(values)
        for v in int_get(values):
            if v is not None and not -_INT32 <= v < _INT32:
                check_numbers(values)
        floats = float_get(values)
        if present_get is None or packed_get is None:
            present = packed = floats
        else:
            present = present_get(floats)
            packed = packed_get(floats + _NULL_FLOATS)
        total = sum(present)
        if total - total != 0.0:  # some value is NaN or infinite (or the sum overflowed)
            check_numbers(values)
        params = list(values)
        if 0.0 in present:  # -0.0 == 0.0: store and hash every zero as +0.0
            packed = tuple(0.0 if v == 0.0 else v for v in packed)
            for i, v in zip(float_indexes, floats, strict=True):
                if v == 0.0:
                    params[i] = 0.0
        floats_hex = pack(*packed).hex()
        utc_created, created_text = to_text(values[created_index])
        params[created_index] = created_text if sqlite_text else utc_created
        ci_time = values[ci_index]
        cached = last_ci[0]
        if cached[0] is not ci_time:
            cached = last_ci[0] = (ci_time, *to_text(ci_time))
        params[ci_index] = cached[2] if sqlite_text else cached[1]
        if sqlite_text:
            others: Sequence[Any] = others_get(params)
        else:
            others = list(others_get(params))
            others[others_created] = created_text
            others[others_ci] = cached[2]
        # Tuples only: holding nothing but atoms, they drop out of the cyclic GC's sight, which
        # otherwise walks every queued receipt again and again (a quarter of the ingest time).
        return (utc_created, values[0]), tuple(params), tuple(others), floats_hex

    return prepare


#: The bound columns of a receipt row; ``hash_version`` (every row of this writer is hashed
#: with the current encoding) is a literal in the statement.
_INSERT_COLUMNS = (*HASHED_FIELDS, *_CHAIN_COLUMNS)


def _insert_sql(dialect: Any, rows: int = 1) -> str:
    """The receipt INSERT of ``rows`` rows, skipping those whose (created_at, request_id) is
    stored."""
    if dialect.paramstyle == "qmark":
        mark = "?"
    elif dialect.paramstyle in ("format", "pyformat"):
        mark = "%s"
    else:  # pragma: no cover - sqlite3 and psycopg are the supported drivers
        raise LedgerError(f"ledger: unsupported driver parameter style {dialect.paramstyle}")
    row = f"({', '.join(mark for _ in _INSERT_COLUMNS)}, {int(HASH_VERSION)})"
    columns = ", ".join((*_INSERT_COLUMNS, "hash_version"))
    return (
        f"INSERT INTO receipts ({columns}) VALUES {', '.join([row] * rows)} "
        "ON CONFLICT (created_at, request_id) DO NOTHING"
    )


def _rows_per_insert(dialect: Any) -> int:
    """Rows per multi-row INSERT on SQLite (0: use executemany), within its variable limit."""
    if dialect.name != "sqlite":
        return 0
    import sqlite3

    limit = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
    return max(1, limit // len(_INSERT_COLUMNS))


class _Flush:
    """Queue marker: the writer sets ``done`` once everything queued before it is handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class _Journal:
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


class Ledger:
    """The carbon ledger on a SQLAlchemy database (SQLite file or PostgreSQL).

    Args:
        db_url: SQLAlchemy URL, e.g. ``sqlite:///ledger.db`` or
            ``postgresql+psycopg://user:pw@host/db``.
        flush_interval_s: longest time a receipt waits in memory before its batch commits
            (in ``buffered`` mode, what a SIGKILL can lose).
        spool_path: where receipts go while the database is unusable (default: beside a
            SQLite file, else ``sprout-ledger.spool.jsonl`` in the working directory).
            Processes may share it.
        batch_size: receipts per insert; a full batch commits without waiting.
        migrate: bring the schema to the latest migration first (cheap when it is there).
        durability: ``durable`` (default: each receipt synced to a journal beside the
            spool, by group commit, before :meth:`append` returns) or ``buffered`` (a
            SIGKILL loses what is still in memory: at most the last flush interval).

    Raises:
        ConfigError: a non-positive ``flush_interval_s`` or ``batch_size``, an unknown
            ``durability``.
        LedgerError: the engine cannot be created or the migration failed.
    """

    def __init__(
        self,
        db_url: str,
        *,
        flush_interval_s: float = 0.5,
        spool_path: str | Path | None = None,
        batch_size: int = 2000,
        migrate: bool = True,
        durability: str = "durable",
    ) -> None:
        if not flush_interval_s > 0:
            raise ConfigError(f"flush_interval_s must be > 0, got {flush_interval_s!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        if durability not in DURABILITY_MODES:
            raise ConfigError(
                f"durability must be one of {', '.join(DURABILITY_MODES)}, got {durability!r}"
            )
        self._url = db_url
        self._interval = float(flush_interval_s)
        self._batch_size = int(batch_size)
        self._durability = durability
        self._chain_id = new_chain_id()
        self._hasher = ChainHasher(self._chain_id, HASH_VERSION)  # as _insert_sql records
        self._spool_path = (
            Path(spool_path) if spool_path is not None else default_spool_path(db_url)
        )
        self._rejected_path = self._spool_path.with_name(
            self._spool_path.name.removesuffix(".jsonl") + ".rejected.jsonl"
        )
        self._spool_lock = threading.RLock()
        self._spool_depth = 0
        self._lock_fd = -1
        self._spool_count = self._prepare_spool()

        path = sqlite_file(db_url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Buffered mode already trades the last flush interval for speed; its commits need
        # not wait for the disk (a killed process still loses nothing committed). Durable
        # mode truncates its journal after a commit, so that commit must be on disk.
        self._engine = create_ledger_engine(
            db_url, sqlite_synchronous="NORMAL" if durability == "buffered" else "FULL"
        )
        try:
            if migrate:
                ensure_schema(db_url, engine=self._engine)
        except BaseException:
            self._engine.dispose()
            raise
        # An in-memory SQLite database is one shared connection: take turns on it.
        self._db_lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if is_sqlite_memory(db_url) else contextlib.nullcontext()
        )
        dialect = self._engine.dialect
        self._prepare = _make_preparer(dialect)
        self._receipt_sql = _insert_sql(dialect)
        self._rows_per_insert = _rows_per_insert(dialect)
        self._multi_sql: dict[int, str] = {}
        self._rollup_sql = text(upsert_chain_range_sql(dialect.name))
        self._reading_insert = _insert_ignoring(
            dialect.name, carbon_readings_table, ["zone", "time", "provider", "is_forecast"]
        )

        self._journal: _Journal | None = None
        if durability == "durable":
            token = secrets.token_hex(8)
            self._journal = _Journal(
                self._spool_path.with_name(f"{self._spool_path.name}.journal-{token}")
            )
        self._next_adopt = time.monotonic() + _ADOPT_EVERY_S
        self._adopt_orphan_journals()

        # Receipts and markers, in order; a deque and an event cost less per receipt than a
        # queue.Queue (the writer wakes per batch, not per receipt).
        self._pending: collections.deque[_Item | object] = collections.deque()
        self._wake = threading.Event()
        self._state_lock = threading.Lock()
        self._markers = 0  # flush/stop markers queued
        self._in_flight = 0  # receipts taken by the writer, not yet committed or spooled
        self._closed = False
        self._outage: str | None = None  # current failure, so an outage is logged once
        self._backoff = self._interval
        self._next_replay = 0.0

        self._thread = threading.Thread(target=self._run, name="sprout-ledger-writer", daemon=True)
        self._thread.start()
        # The writer is a daemon thread: flush what is queued when the interpreter exits.
        ref = weakref.ref(self)

        def _at_exit() -> None:
            ledger = ref()
            if ledger is not None:
                ledger.close(timeout_s=5.0)

        self._at_exit = _at_exit
        atexit.register(_at_exit)

    # ---------------------------------------------------------------- properties

    @property
    def engine(self) -> SAEngine:
        """The SQLAlchemy engine (for cluster-wide job locks and audits)."""
        return self._engine

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return mask_url(self._url)

    @property
    def spool_path(self) -> Path:
        """The spool file (it exists only while receipts wait in it)."""
        return self._spool_path

    @property
    def rejected_path(self) -> Path:
        """Where receipts the database refuses on their own are kept."""
        return self._rejected_path

    @property
    def chain_id(self) -> str:
        """The id of this ledger's hash chain (``host:pid:random``)."""
        return self._chain_id

    @property
    def durability(self) -> str:
        """``buffered`` or ``durable``."""
        return self._durability

    @property
    def journal_path(self) -> Path | None:
        """The durable journal (None in buffered mode)."""
        return None if self._journal is None else self._journal.path

    # ---------------------------------------------------------------- buffered writer

    def append(self, receipt: Receipt) -> None:
        """Queue a receipt for the background writer. Never waits on the database, never raises.

        The receipt is validated and converted here, in the caller's thread (CPU only), so
        that this work overlaps the writer's database time. In durable mode the receipt is
        first fsynced to the journal. After :meth:`close`, it goes straight to the spool file.
        """
        try:
            if not isinstance(receipt, Receipt):
                log.error("ledger: ignoring %r, which is not a Receipt", type(receipt).__name__)
                return
            item = self._item(receipt, 0)
            if self._journal is not None and not self._closed:
                self._append_durable(receipt, item)
                return
            queued = 0
            with self._state_lock:
                closed = self._closed
                if not closed:
                    self._pending.append(item)
                    queued = len(self._pending)
                    if queued % self._batch_size == 0:
                        self._wake.set()
            if queued > self._batch_size and queued % _YIELD_EVERY == 0:
                # A backlog: let the writer have the GIL now and then. Otherwise each of its
                # returns from SQLite waits out the interpreter's switch interval (5 ms) while
                # appenders run, and it falls ever further behind a burst. Not a wait on the
                # database: the writer's next stretch of Python is all it can cost.
                time.sleep(0)
            if closed:
                self._spool([_json_dict(receipt)])
                log.warning(
                    "ledger %s is closed: receipt %s spooled to %s",
                    self.url,
                    receipt.request_id,
                    self._spool_path,
                )
        except Exception:  # the request path must never fail because of the ledger
            log.exception("ledger: could not take receipt %s", getattr(receipt, "request_id", "?"))

    def _item(self, receipt: Receipt, end: int) -> _Item:
        """The queue item of ``receipt``: prepared, or set aside with the reason."""
        try:
            return self._prepare(receipt), None, end
        except _Invalid as e:
            return receipt, e, end
        except Exception as e:  # not a Receipt as the dataclass declares it
            return receipt, _Invalid(repr(e)), end

    def _append_durable(self, receipt: Receipt, item: _Item) -> None:
        assert self._journal is not None
        line = _json_line(_json_dict(receipt)).encode("utf-8")
        closed = False

        def enqueue(end: int) -> None:
            nonlocal closed
            with self._state_lock:
                closed = self._closed
                if not closed:
                    self._pending.append((item[0], item[1], end))
                    if len(self._pending) % self._batch_size == 0:
                        self._wake.set()

        try:
            self._journal.write(line, enqueue)
        except OSError as e:
            # The journal is unusable: still take the receipt, as buffered mode would.
            log.error(
                "ledger: journal %s failed (%s); receipt kept in memory", self._journal.path, e
            )
            enqueue(-1)
        if closed:  # closed meanwhile: the journal line is adopted by the next ledger
            self._spool([_json_dict(receipt)])

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every receipt appended so far is committed or spooled.

        A flush also retries the spool at once, without waiting for the backoff.

        Returns:
            True if that happened within ``timeout_s``.
        """
        marker = _Flush()
        with self._state_lock:
            if self._closed or not self._thread.is_alive():
                return not self._pending and not self._in_flight
            self._pending.append(marker)
            self._markers += 1
        self._wake.set()
        return marker.done.wait(timeout_s)

    def pending(self) -> int:
        """Receipts appended but not yet committed or spooled."""
        with self._state_lock:
            queued = sum(1 for item in self._pending if type(item) is tuple)
            return queued + self._in_flight

    def spooled(self) -> int:
        """Receipts waiting in the spool file."""
        return self._spool_count

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush, stop the writer and release the engine. Safe to call more than once."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._pending.append(_STOP)
            self._markers += 1
        self._wake.set()
        atexit.unregister(self._at_exit)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            # Disposing the engine under a busy writer would turn its batch into errors; the
            # journal (durable mode) stays for the next ledger to adopt.
            log.warning(
                "ledger %s: writer still busy after %.1f s; %d receipts not yet written",
                self.url,
                timeout_s,
                self.pending(),
            )
            return
        if self._journal is not None:
            self._journal.close()
        with self._spool_lock:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        """The writer: a batch per flush interval, or sooner when full or asked to flush."""
        pending, wake, size = self._pending, self._wake, self._batch_size
        while True:
            deadline = time.monotonic() + self._interval
            wake.clear()  # before looking, so that a wake-up given meanwhile is not missed
            while len(pending) < size and not self._markers:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wake.wait(remaining)
                wake.clear()
            batch: list[_Item] = []
            marker: object = None
            with self._state_lock:
                while len(batch) < size and pending:
                    item = pending.popleft()
                    if type(item) is tuple:
                        batch.append(item)
                    else:
                        marker = item
                        self._markers -= 1
                        break
                self._in_flight = len(batch)
            if isinstance(marker, _Flush):
                self._cycle(batch, force_replay=True)
                marker.done.set()
            elif marker is _STOP:
                # No forced replay on close: a down database would only make close() slow,
                # and whatever stays spooled is replayed by the next Ledger on this spool.
                self._cycle(batch, force_replay=False)
                return
            else:  # a full batch, or the timer: commit, retry the spool when due
                self._cycle(batch, force_replay=False)

    def _cycle(self, batch: list[_Item], *, force_replay: bool) -> None:
        """Commit ``batch`` (after the spool, if any), or spool it. Never raises."""
        safe = False
        try:
            if force_replay or time.monotonic() >= self._next_adopt:
                self._adopt_orphan_journals()
            if self._spool_count and not self._replay(force=force_replay):
                # Still failing: keep arrival order and don't hammer the database.
                safe = self._spool([self._record(item) for item in batch])
            elif batch:
                rows: list[_Prepared] = []
                for item in batch:
                    if item[1] is None:
                        rows.append(item[0])
                    else:
                        self._reject(
                            {**_json_dict(item[0]), "_error": f"invalid receipt: {item[1]}"}
                        )
                try:
                    self._write(rows, replay=False)
                except (sa_exc.SQLAlchemyError, OSError) as e:
                    self._note_outage(e)
                    safe = self._spool([_prepared_record(row) for row in rows])
                else:
                    safe = True
                    self._note_recovery()
            else:
                safe = True
        except Exception:
            log.exception("ledger %s: unexpected error writing %d receipts", self.url, len(batch))
            with contextlib.suppress(Exception):
                safe = self._spool([self._record(item) for item in batch])
        finally:
            with self._state_lock:
                self._in_flight = 0
            if self._journal is not None and batch:
                end = batch[-1][2]
                try:
                    self._journal.handled(end, safe and end >= 0)
                except OSError as e:
                    log.error("ledger: journal %s: %s", self._journal.path, e)

    # ---------------------------------------------------------------- database writes

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self._db_lock, self._engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _begin_write(self) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so waiting writers queue up)."""
        with self._db_lock, self._engine.connect() as conn:
            conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            with conn.begin():
                yield conn

    def _read_head(self, conn: Connection) -> tuple[int, str]:
        """This chain's stored (count, last hash); the head row is created when missing."""
        t = ledger_chains_table
        row = conn.execute(
            select(t.c.receipt_count, t.c.last_hash).where(t.c.chain_id == self._chain_id)
        ).first()
        if row is not None:
            return int(row[0]), str(row[1])
        now = datetime.now(UTC)
        conn.execute(
            insert(t).values(
                chain_id=self._chain_id,
                created_at=now,
                updated_at=now,
                host=socket.gethostname()[:255],
                pid=os.getpid(),
                receipt_count=0,
                last_hash=GENESIS_HASH,
            )
        )
        return 0, GENESIS_HASH

    def _stored_keys(
        self, conn: Connection, keys: Sequence[tuple[datetime, str]]
    ) -> set[tuple[datetime, str]]:
        """Which ``(created_at, request_id)`` keys are stored (via their unique index)."""
        t = receipts_table
        found: set[tuple[datetime, str]] = set()
        for chunk in _chunks(sorted(set(keys)), _LOOKUP_CHUNK):
            stmt = select(t.c.created_at, t.c.request_id).where(
                t.c.created_at.in_(sorted({k[0] for k in chunk})),
                t.c.request_id.in_(sorted({k[1] for k in chunk})),
            )
            found.update((created, rid) for created, rid in conn.execute(stmt))
        return found

    def _insert_receipts(self, rows: Sequence[_Prepared], *, replay: bool) -> int:
        """Chain and insert ``rows`` in one transaction, with rollups and the chain head.

        Receipts already stored are skipped (idempotent replay): on replay by looking them
        up first; otherwise the insert skips them and a shortfall redoes the batch with the
        lookup, so that no chain position is spent on a skipped row.

        Returns:
            The number of receipts inserted.
        """
        for attempt in range(3):
            try:
                with self._begin_write() as conn:
                    return self._insert_in(conn, rows, lookup=replay or attempt > 0)
            except _Conflict:
                continue  # rolled back; a concurrent writer stored a key after the lookup
        # Treated as an outage: the batch is spooled and replayed later.
        raise sa_exc.OperationalError(
            "INSERT INTO receipts",
            None,
            RuntimeError("receipts kept colliding with another writer"),
        )

    def _insert_in(self, conn: Connection, rows: Sequence[_Prepared], *, lookup: bool) -> int:
        todo: Sequence[_Prepared] = rows
        if lookup:
            stored = self._stored_keys(conn, [row[0] for row in rows])
            todo = []
            for row in rows:
                if row[0] not in stored:
                    stored.add(row[0])  # also drops repeats inside the batch
                    todo.append(row)
            if len(todo) < len(rows):
                log.info(
                    "ledger %s: skipped %d receipts already stored", self.url, len(rows) - len(todo)
                )
        # Without the lookup, a stored key (or one repeated in the batch) makes the insert
        # skip a row: the row count tells, and the batch is redone with the lookup.
        if not todo:
            return 0
        count, prev = self._read_head(conn)
        chain_id, seq, hasher = self._chain_id, count, self._hasher.hash
        inserted = 0
        per = self._rows_per_insert or len(todo)
        for start in range(0, len(todo), per):
            # SQLite: multi-row INSERTs, each binding ~960 rows at once: it releases the GIL
            # once per statement, where executemany releases it per row and then waits out
            # the appending threads' switch interval (5 ms) to get it back.
            chunk = todo[start : start + per]
            flat: list[Any] = []
            rows: list[tuple[Any, ...]] = []
            for _, values, others, floats_hex in chunk:
                seq += 1
                digest = hasher(seq, prev, others, floats_hex)
                if self._rows_per_insert:
                    flat += values
                    flat += (chain_id, seq, prev, digest)
                else:
                    rows.append((*values, chain_id, seq, prev, digest))
                prev = digest
            if self._rows_per_insert:
                sql = self._multi_sql.get(len(chunk))
                if sql is None:
                    sql = self._multi_sql.setdefault(
                        len(chunk), _insert_sql(conn.dialect, len(chunk))
                    )
                inserted += conn.exec_driver_sql(sql, tuple(flat)).rowcount
            else:
                inserted += conn.exec_driver_sql(self._receipt_sql, rows).rowcount
        if inserted < 0 and self._rows_per_insert == 0:
            inserted = len(todo)  # the driver does not count executemany rows
        if inserted != len(todo):
            raise _Conflict  # a row was stored already (by another writer, or a replay)
        conn.execute(self._rollup_sql, {"chain_id": chain_id, "lo": count, "hi": seq})
        t = ledger_chains_table
        conn.execute(
            update(t)
            .where(t.c.chain_id == chain_id)
            .values(receipt_count=seq, last_hash=prev, updated_at=datetime.now(UTC))
        )
        return len(todo)

    def _record(self, item: _Item) -> dict[str, Any]:
        """The JSON record (spool line) of a queue item."""
        return _prepared_record(item[0]) if item[1] is None else _json_dict(item[0])

    def _write(self, rows: Sequence[_Prepared], *, replay: bool) -> None:
        """Insert prepared receipts; ones the database still refuses go to the rejected file.

        Args:
            rows: prepared receipts.
            replay: they come from the spool (look up stored ones first).

        Raises:
            SQLAlchemyError: the database is unusable (the caller spools or keeps the batch).
        """
        if not rows:
            return
        try:
            self._insert_receipts(rows, replay=replay)
            return
        except sa_exc.SQLAlchemyError as e:
            if not _is_row_error(e):
                raise
        # Some row is refused all the same: one by one, so that only the bad ones are set aside
        # (each in its own transaction, so a refused row takes no chain position).
        for row in rows:
            try:
                self._insert_receipts([row], replay=True)
            except sa_exc.SQLAlchemyError as e:
                if not _is_row_error(e):
                    raise
                self._reject({**_prepared_record(row), "_error": describe_error(e, self._url)})

    def _note_outage(self, error: BaseException) -> None:
        what = describe_error(error, self._url)
        if what != self._outage:
            log.warning(
                "ledger %s: write failed (%s); receipts are spooled to %s and replayed later",
                self.url,
                what,
                self._spool_path,
            )
        self._outage = what
        self._next_replay = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)

    def _note_recovery(self) -> None:
        if self._outage is not None:
            log.info("ledger %s: writes succeed again", self.url)
        self._outage = None
        self._backoff = self._interval
        self._next_replay = 0.0

    # ---------------------------------------------------------------- spool

    @contextlib.contextmanager
    def _spool_guard(self) -> Iterator[None]:
        """This process's turn on the spool: a thread lock, then the shared file lock.

        Raises:
            OSError: the file lock could not be had within ``_SPOOL_LOCK_WAIT_S``.
        """
        with self._spool_lock:
            outermost = self._spool_depth == 0
            if outermost and fcntl is not None:
                if self._lock_fd < 0:
                    self._spool_path.parent.mkdir(parents=True, exist_ok=True)
                    self._lock_fd = os.open(
                        self._spool_path.with_name(self._spool_path.name + ".lock"),
                        os.O_RDWR | os.O_CREAT,
                        0o600,
                    )
                deadline = time.monotonic() + _SPOOL_LOCK_WAIT_S
                delay = 0.005
                while True:
                    try:
                        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise OSError(
                                f"spool {self._spool_path} stayed locked by another process "
                                f"for {_SPOOL_LOCK_WAIT_S:.0f} s"
                            ) from None
                        time.sleep(delay)
                        delay = min(delay * 2, 0.2)
            self._spool_depth += 1
            try:
                yield
            finally:
                self._spool_depth -= 1
                if outermost and fcntl is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _prepare_spool(self) -> int:
        """Count receipts left in the spool by an earlier run; end a torn last line."""
        if not self._spool_path.exists():
            return 0  # (no lock file is made for nothing)
        try:
            with self._spool_guard():
                try:
                    data = self._spool_path.read_bytes()
                except FileNotFoundError:
                    return 0
                if data and not data.endswith(b"\n"):
                    # A crash mid-write left half a line; new lines must not be glued to it.
                    with open(self._spool_path, "ab") as fh:
                        fh.write(b"\n")
        except OSError as e:
            raise LedgerError(f"ledger spool {self._spool_path} cannot be read: {e}") from e
        if data.strip():
            log.info("ledger: %s holds receipts from an earlier run; replaying", self._spool_path)
        return sum(1 for line in data.splitlines() if line.strip())

    def _spool(self, records: Sequence[dict[str, Any]]) -> bool:
        """Append receipt records to the spool and fsync it; False if that failed."""
        if not records:
            return True
        payload = "".join(_json_line(r) for r in records).encode("utf-8")
        try:
            with self._spool_guard():
                self._append_to_spool(payload, len(records))
        except OSError as e:
            # Last resort: the receipts go to the log rather than nowhere.
            log.error(
                "ledger: cannot write spool %s (%s); receipts follow:\n%s",
                self._spool_path,
                e,
                payload.decode("utf-8"),
            )
            return False
        return True

    def _append_to_spool(self, payload: bytes, lines: int) -> None:
        """Append and fsync (the caller holds the spool guard)."""
        self._spool_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._spool_path, "ab") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        self._spool_count += lines

    def _reject(self, record: dict[str, Any]) -> None:
        log.error(
            "ledger %s: %s set aside (%s); kept in %s",
            self.url,
            f"receipt {record['request_id']}" if "request_id" in record else "spool line",
            record.get("_error"),
            self._rejected_path,
        )
        line = _json_line(record).encode("utf-8")
        with self._spool_lock:
            self._rejected_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._rejected_path, "ab") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

    def _replay(self, *, force: bool) -> bool:
        """Try to move the spool into the database; True when the spool is empty after."""
        if not force and time.monotonic() < self._next_replay:
            return False
        try:
            replayed = self._replay_spool()
        except (sa_exc.SQLAlchemyError, OSError) as e:
            self._note_outage(e)
            return False
        self._note_recovery()
        if replayed:
            log.info("ledger %s: replayed %d spooled receipts", self.url, replayed)
        return True

    def _replay_spool(self) -> int:
        """Insert the spool's receipts (skipping stored ones) and remove it.

        The spool stays locked throughout, so that no other process appends to (or replays)
        it meanwhile; a failure leaves it whole, and what was committed is skipped next time.
        """
        with self._spool_guard():
            count = 0
            receipts: list[Receipt] = []
            if not self._spool_path.exists():
                self._spool_count = 0
                return 0
            with open(self._spool_path, "rb") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    try:
                        receipts.append(Receipt.from_json_dict(json.loads(line)))
                    except (ValueError, TypeError, KeyError) as e:
                        self._reject(
                            {
                                "_error": f"unreadable spool line: {e!r}",
                                "_line": line.decode("utf-8", "replace"),
                            }
                        )
                        continue
                    if len(receipts) >= self._batch_size:
                        self._write(self._prepare_valid(receipts), replay=True)
                        count += len(receipts)
                        receipts = []
                if receipts:
                    self._write(self._prepare_valid(receipts), replay=True)
                    count += len(receipts)
            self._spool_path.unlink(missing_ok=True)
            self._spool_count = 0
            return count

    def _prepare_valid(self, receipts: Sequence[Receipt]) -> list[_Prepared]:
        """Prepared forms of ``receipts``; invalid ones are set aside."""
        rows = []
        for receipt in receipts:
            item = self._item(receipt, 0)
            if item[1] is None:
                rows.append(item[0])
            else:
                self._reject({**_json_dict(receipt), "_error": f"invalid receipt: {item[1]}"})
        return rows

    def _adopt_orphan_journals(self) -> int:
        """Move the journals of dead durable ledgers beside this spool into the spool.

        A journal's owner holds a ``flock`` on it while alive, so a journal whose lock can
        be taken is an orphan. Adopted lines are replayed like spooled ones (stored
        receipts skipped). Never raises.

        Returns:
            The number of lines adopted.
        """
        self._next_adopt = time.monotonic() + _ADOPT_EVERY_S
        if fcntl is None:
            return 0
        own = None if self._journal is None else self._journal.path
        adopted = 0
        try:
            candidates = sorted(self._spool_path.parent.glob(self._spool_path.name + ".journal-*"))
        except OSError:
            return 0
        for path in candidates:
            if path == own:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue  # adopted by someone else meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its ledger is alive
                if os.fstat(fd).st_nlink == 0:
                    continue  # another ledger adopted it while we waited
                with open(fd, "rb", closefd=False) as fh:
                    data = fh.read()
                lines = sum(1 for line in data.splitlines() if line.strip())
                if lines:
                    if not data.endswith(b"\n"):
                        data += b"\n"  # a torn line (its append never returned) is set aside
                    with self._spool_guard():
                        self._append_to_spool(data, lines)
                    log.warning(
                        "ledger: adopted %d receipts from %s, left by a stopped process",
                        lines,
                        path,
                    )
                path.unlink(missing_ok=True)
                adopted += lines
            except OSError as e:
                log.error("ledger: cannot adopt journal %s: %s", path, e)
            finally:
                os.close(fd)
        return adopted

    # ---------------------------------------------------------------- synchronous helpers

    def add_readings(
        self, readings: Iterable[CarbonReading], fetched_at: datetime | None = None
    ) -> int:
        """Store carbon readings, ignoring ones already stored (same zone, time, provider,
        forecast flag).

        Args:
            readings: the readings.
            fetched_at: when they were fetched (default: now, UTC).

        Returns:
            The number of readings newly stored.

        Raises:
            LedgerError: the database cannot be written.
        """
        fetched = fetched_at or datetime.now(UTC)
        rows: dict[tuple[str, datetime, str, bool], dict[str, Any]] = {}
        for r in readings:
            key = (r.zone, r.time.astimezone(UTC), r.provider, bool(r.is_forecast))
            rows.setdefault(
                key,
                {
                    "zone": r.zone,
                    "time": key[1],
                    "ci_g_per_kwh": float(r.ci_g_per_kwh),
                    "provider": r.provider,
                    "signal_type": r.signal_type,
                    "emission_factor": r.emission_factor,
                    "is_forecast": key[3],
                    "is_estimated": bool(r.is_estimated),
                    "fetched_at": fetched,
                },
            )
        if not rows:
            return 0
        t = carbon_readings_table
        key_cols = (t.c.zone, t.c.time, t.c.provider, t.c.is_forecast)
        times = [k[1] for k in rows]
        # A write transaction from the start: a read-then-write one fails at once on SQLite
        # when another connection (the writer thread, the sampler) commits in between.
        with ledger_errors(self._url, "storing carbon readings"), self._begin_write() as conn:
            existing = {
                (z, tm, p, bool(f))
                for z, tm, p, f in conn.execute(
                    select(*key_cols).where(
                        t.c.zone.in_(sorted({k[0] for k in rows})),
                        t.c.time >= min(times),
                        t.c.time <= max(times),
                    )
                )
            }
            new = [row for key, row in rows.items() if key not in existing]
            if new:
                conn.execute(self._reading_insert, new)
        return len(new)

    def save_policy_version(
        self, kind: str, params: dict[str, Any], metrics: dict[str, Any], note: str = ""
    ) -> int:
        """Store a trained policy; its params are hashed (SHA-256 of canonical JSON).

        Returns:
            The new version's id.

        Raises:
            LedgerError: params or metrics are not plain JSON data, or the write failed.
        """
        try:
            # Store what canonical JSON makes of the data, so what is read back hashes alike.
            params_json = canonical_json(params)
            metrics_data = json.loads(canonical_json(metrics))
        except (TypeError, ValueError) as e:
            raise LedgerError(f"policy version {kind!r}: params/metrics are not JSON: {e}") from e
        row = {
            "created_at": datetime.now(UTC),
            "kind": kind,
            "params": json.loads(params_json),
            "metrics": metrics_data,
            "sha256": hashlib.sha256(params_json.encode("utf-8")).hexdigest(),
            "note": note,
        }
        with ledger_errors(self._url, "saving a policy version"), self._begin() as conn:
            result = conn.execute(insert(policy_versions_table).values(**row))
            return int(result.inserted_primary_key[0])

    def latest_policy_version(self, kind: str | None = None) -> PolicyVersionRecord | None:
        """The most recently saved policy version (of ``kind``, if given), or None.

        Raises:
            LedgerError: the database cannot be read, or the stored params do not match their
                SHA-256 (the row was altered).
        """
        t = policy_versions_table
        stmt = select(t).order_by(t.c.id.desc()).limit(1)
        if kind is not None:
            stmt = stmt.where(t.c.kind == kind)
        with ledger_errors(self._url, "reading policy versions"), self._begin() as conn:
            row = conn.execute(stmt).mappings().first()
        if row is None:
            return None
        try:
            actual = params_sha256(row["params"])
        except (TypeError, ValueError) as e:
            raise LedgerError(f"policy version {row['id']}: params are not JSON: {e}") from e
        if actual != row["sha256"]:
            raise LedgerError(
                f"policy version {row['id']} ({row['kind']}): params do not match their "
                f"sha256 (stored {row['sha256'][:12]}..., computed {actual[:12]}...); "
                "the row was altered after it was saved"
            )
        return PolicyVersionRecord(
            id=row["id"],
            created_at=row["created_at"],
            kind=row["kind"],
            params=row["params"],
            metrics=row["metrics"],
            sha256=row["sha256"],
            note=row["note"],
        )

    def receipts(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[Receipt]:
        """Stored receipts with ``since <= created_at < until``, in insertion order.

        Naive datetimes are taken to be UTC. Receipts still queued are not included:
        :meth:`flush` first.

        Raises:
            LedgerError: the database cannot be read.
        """
        t = receipts_table
        stmt = select(*(t.c[name] for name in RECEIPT_FIELDS)).order_by(t.c.id)
        if since is not None:
            stmt = stmt.where(t.c.created_at >= since)
        if until is not None:
            stmt = stmt.where(t.c.created_at < until)
        if limit is not None:
            stmt = stmt.limit(limit)
        with ledger_errors(self._url, "reading receipts"), self._begin() as conn:
            return [Receipt(**row) for row in conn.execute(stmt).mappings()]

    def count_receipts(self) -> int:
        """Number of stored receipts (not counting queued or spooled ones).

        Raises:
            LedgerError: the database cannot be read.
        """
        with ledger_errors(self._url, "counting receipts"), self._begin() as conn:
            return int(conn.scalar(select(func.count()).select_from(receipts_table)) or 0)

    def add_verdict(
        self,
        receipt: Receipt,
        preferred_directive: str | None,
        *,
        judge: str,
        protocol: str = "listwise",
        detail: dict[str, Any] | None = None,
        created_at: datetime | None = None,
    ) -> int:
        """Store a judge's verdict on a served request.

        Args:
            receipt: the request's receipt (its id, time and served directive are recorded).
            preferred_directive: the directive whose answer the judge preferred; None for no
                usable verdict (a tie, a refusal, junk).
            judge: the judge model.
            protocol: ``listwise`` or ``pairwise``.
            detail: anything else worth keeping (JSON data).
            created_at: when the verdict was given (default: now, UTC).

        Returns:
            The verdict's id.

        Raises:
            LedgerError: ``detail`` is not JSON data, or the write failed.
        """
        try:
            detail_data = json.loads(canonical_json(detail or {}))
        except (TypeError, ValueError) as e:
            raise LedgerError(f"verdict for {receipt.request_id}: detail is not JSON: {e}") from e
        row = {
            "created_at": created_at or datetime.now(UTC),
            "request_id": receipt.request_id,
            "receipt_created_at": receipt.created_at,
            "served_directive": receipt.directive,
            "preferred_directive": preferred_directive,
            "judge": judge,
            "protocol": protocol,
            "detail": detail_data,
        }
        with ledger_errors(self._url, "storing a verdict"), self._begin() as conn:
            result = conn.execute(insert(verdicts_table).values(**row))
            return int(result.inserted_primary_key[0])

    def add_sampled_prompt(
        self,
        request_id: str,
        prompt: Any,
        *,
        created_at: datetime | None = None,
        tenant: str | None = None,
        purpose: str = "serve",
    ) -> bool:
        """Keep a sampled request's prompt for the quality loop, until retention prunes it.

        The prompt is stored apart from the hashed receipt, so pruning it later leaves every
        chain verifiable.

        Args:
            request_id: the request (its receipt has the same id).
            prompt: the chat messages or prompt text (JSON data).
            created_at: when the request was made (default: now, UTC).
            tenant: the app's tenant.
            purpose: ``serve`` or ``evaluation``.

        Returns:
            False when a prompt for ``request_id`` was stored already (it is kept).

        Raises:
            LedgerError: ``prompt`` is not JSON data, or the write failed.
        """
        try:
            prompt_data = json.loads(canonical_json(prompt))
        except (TypeError, ValueError) as e:
            raise LedgerError(f"sampled prompt {request_id}: not JSON: {e}") from e
        row = {
            "request_id": request_id,
            "created_at": created_at or datetime.now(UTC),
            "tenant": tenant,
            "purpose": purpose,
            "prompt": prompt_data,
        }
        stmt = _insert_ignoring(
            self._engine.dialect.name, sampled_prompts_table, ["request_id"]
        ).values(**row)
        with ledger_errors(self._url, "storing a sampled prompt"), self._begin() as conn:
            return bool(conn.execute(stmt).rowcount)

    def sampled_prompts(
        self,
        *,
        pending: bool = False,
        since: datetime | None = None,
        purpose: str = "serve",
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Kept prompts (``sampled_prompts`` rows as dicts), oldest first.

        Args:
            pending: only those without a verdict yet (the judge's queue).
            since: only those of requests made at or after this time.
            purpose: ``serve`` or ``evaluation``.
            limit: at most this many.

        Raises:
            LedgerError: the database cannot be read.
        """
        s, v = sampled_prompts_table, verdicts_table
        stmt = select(s).where(s.c.purpose == purpose).order_by(s.c.created_at, s.c.id)
        if pending:
            judged = select(v.c.id).where(
                v.c.receipt_created_at == s.c.created_at, v.c.request_id == s.c.request_id
            )
            stmt = stmt.where(~judged.exists())
        if since is not None:
            stmt = stmt.where(s.c.created_at >= since)
        if limit is not None:
            stmt = stmt.limit(limit)
        with ledger_errors(self._url, "reading sampled prompts"), self._begin() as conn:
            return [dict(row) for row in conn.execute(stmt).mappings()]

    def verdicts(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Stored verdicts (rows as dicts) on requests made in ``[since, until)``, in order.

        Raises:
            LedgerError: the database cannot be read.
        """
        v = verdicts_table
        stmt = select(v).order_by(v.c.id)
        if since is not None:
            stmt = stmt.where(v.c.receipt_created_at >= since)
        if until is not None:
            stmt = stmt.where(v.c.receipt_created_at < until)
        with ledger_errors(self._url, "reading verdicts"), self._begin() as conn:
            return [dict(row) for row in conn.execute(stmt).mappings()]

    def find_receipt(self, request_id: str, created_at: datetime) -> Receipt | None:
        """The stored receipt with this id and time (its unique key), or None.

        Raises:
            LedgerError: the database cannot be read.
        """
        t = receipts_table
        stmt = select(*(t.c[name] for name in RECEIPT_FIELDS)).where(
            t.c.created_at == created_at, t.c.request_id == request_id
        )
        with ledger_errors(self._url, "reading a receipt"), self._begin() as conn:
            row = conn.execute(stmt).mappings().first()
        return None if row is None else Receipt(**row)

    def verify(self) -> Any:
        """Check every hash chain of this database: see :func:`sprout.ledger.verify.verify`.

        Receipts still queued are not included: :meth:`flush` first.
        """
        from sprout.ledger.verify import verify

        with self._db_lock:
            return verify(self._url, engine=self._engine)


def _insert_ignoring(dialect: str, table: Any, index_elements: list[str]) -> Insert:
    """INSERT that skips rows clashing on ``index_elements`` where the dialect can say so.

    The callers filter out stored keys first; this covers a concurrent writer (another
    replica) inserting the same key between that check and the insert.
    """
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=index_elements)
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=index_elements)
    return insert(table)


__all__ = [
    "DURABILITY_MODES",
    "RECEIPT_FIELDS",
    "Ledger",
    "PolicyVersionRecord",
    "canonical_json",
    "default_spool_path",
    "params_sha256",
]
