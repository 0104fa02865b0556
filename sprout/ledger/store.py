"""The ledger store: a buffered receipt writer with a disk spool, plus synchronous helpers.

:meth:`Ledger.append` only puts the receipt on an in-memory queue, so a request never waits
for (or fails because of) the database. A daemon thread commits the queue in batches. When a
batch cannot be committed (database down, locked, table missing...) it is appended to a JSON
lines spool file and fsynced; every later flush first replays the spool, skipping receipts
already stored, and removes it once it is in. A receipt the database refuses on its own (a
value too long for its column, say) is moved to a ``*.rejected.jsonl`` file beside the spool
instead of holding up the rest. Nothing is dropped silently.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Insert, func, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from sprout.carbon.base import CarbonReading
from sprout.errors import ConfigError, LedgerError
from sprout.ledger.migrate import (
    create_ledger_engine,
    describe_error,
    ensure_schema,
    is_sqlite_memory,
    ledger_errors,
    mask_url,
    sqlite_file,
)
from sprout.ledger.schema import carbon_readings_table, policy_versions_table, receipts_table
from sprout.receipt import Receipt

log = logging.getLogger("sprout.ledger")

RECEIPT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Receipt))
#: Rows per IN (...) lookup: far below SQLite's and PostgreSQL's bound-parameter limits.
_LOOKUP_CHUNK = 500
#: Longest wait between two replay attempts while the database stays down.
_MAX_BACKOFF_S = 30.0


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


def _json_dict(receipt: Receipt) -> dict[str, Any]:
    try:
        return receipt.to_json_dict()
    except Exception:  # a field of the wrong type: keep what there is rather than nothing
        return {name: getattr(receipt, name, None) for name in RECEIPT_FIELDS}


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, default=str) + "\n"


class _Flush:
    """Queue marker: the writer sets ``done`` once everything queued before it is handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class Ledger:
    """The carbon ledger on a SQLAlchemy database (SQLite file or PostgreSQL).

    Args:
        db_url: SQLAlchemy URL, e.g. ``sqlite:///ledger.db`` or
            ``postgresql+psycopg://user:pw@host/db``.
        flush_interval_s: longest time a receipt waits in memory before its batch commits.
        spool_path: where receipts go while the database is unusable (default: beside a
            SQLite file, else ``sprout-ledger.spool.jsonl`` in the working directory).
        batch_size: receipts per insert; a full batch commits without waiting.
        migrate: bring the schema to the latest migration first (cheap when it is there).

    Raises:
        ConfigError: a non-positive ``flush_interval_s`` or ``batch_size``.
        LedgerError: the engine cannot be created or the migration failed.
    """

    def __init__(
        self,
        db_url: str,
        *,
        flush_interval_s: float = 0.5,
        spool_path: str | Path | None = None,
        batch_size: int = 500,
        migrate: bool = True,
    ) -> None:
        if not flush_interval_s > 0:
            raise ConfigError(f"flush_interval_s must be > 0, got {flush_interval_s!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        self._url = db_url
        self._interval = float(flush_interval_s)
        self._batch_size = int(batch_size)
        self._spool_path = (
            Path(spool_path) if spool_path is not None else default_spool_path(db_url)
        )
        self._rejected_path = self._spool_path.with_name(
            self._spool_path.name.removesuffix(".jsonl") + ".rejected.jsonl"
        )
        self._spool_lock = threading.Lock()
        self._spool_count = self._prepare_spool()

        path = sqlite_file(db_url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._engine = create_ledger_engine(db_url)
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
        dialect = self._engine.dialect.name
        self._receipt_insert = _insert_ignoring(dialect, receipts_table, ["request_id"])
        self._reading_insert = _insert_ignoring(
            dialect, carbon_readings_table, ["zone", "time", "provider", "is_forecast"]
        )

        self._queue: queue.Queue[object] = queue.Queue()
        self._state_lock = threading.Lock()
        self._appended = 0
        self._handled = 0
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

    # ---------------------------------------------------------------- buffered writer

    def append(self, receipt: Receipt) -> None:
        """Queue a receipt for the background writer. Never blocks on the database, never raises.

        After :meth:`close`, the receipt is written straight to the spool file.
        """
        try:
            if not isinstance(receipt, Receipt):
                log.error("ledger: ignoring %r, which is not a Receipt", type(receipt).__name__)
                return
            with self._state_lock:
                closed = self._closed
                if not closed:
                    self._appended += 1
                    self._queue.put_nowait(receipt)
            if closed:
                self._spool([receipt])
                log.warning(
                    "ledger %s is closed: receipt %s spooled to %s",
                    self.url,
                    receipt.request_id,
                    self._spool_path,
                )
        except Exception:  # the request path must never fail because of the ledger
            log.exception("ledger: could not take receipt %s", getattr(receipt, "request_id", "?"))

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every receipt appended so far is committed or spooled.

        A flush also retries the spool at once, without waiting for the backoff.

        Returns:
            True if that happened within ``timeout_s``.
        """
        marker = _Flush()
        with self._state_lock:
            if self._closed or not self._thread.is_alive():
                return self._appended == self._handled
            self._queue.put_nowait(marker)
        return marker.done.wait(timeout_s)

    def pending(self) -> int:
        """Receipts appended but not yet committed or spooled."""
        with self._state_lock:
            return self._appended - self._handled

    def spooled(self) -> int:
        """Receipts waiting in the spool file."""
        return self._spool_count

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush, stop the writer and release the engine. Safe to call more than once."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put_nowait(_STOP)
        atexit.unregister(self._at_exit)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            # Disposing the engine under a busy writer would turn its batch into errors.
            log.warning(
                "ledger %s: writer still busy after %.1f s; %d receipts not yet written",
                self.url,
                timeout_s,
                self.pending(),
            )
            return
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
        batch: list[Receipt] = []
        deadline: float | None = None
        while True:
            timeout = self._interval if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if isinstance(item, Receipt):
                batch.append(item)
                if deadline is None:
                    deadline = time.monotonic() + self._interval
                if len(batch) < self._batch_size and time.monotonic() < deadline:
                    continue
                self._cycle(batch, force_replay=False)
            elif isinstance(item, _Flush):
                self._cycle(batch, force_replay=True)
                item.done.set()
            elif item is _STOP:
                # No forced replay on close: a down database would only make close() slow,
                # and whatever stays spooled is replayed by the next Ledger on this spool.
                self._cycle(batch, force_replay=False)
                return
            else:  # timer: commit a partial batch, retry the spool when due
                self._cycle(batch, force_replay=False)
            batch = []
            deadline = None

    def _cycle(self, batch: list[Receipt], *, force_replay: bool) -> None:
        """Commit ``batch`` (after the spool, if any), or spool it. Never raises."""
        try:
            if self._spool_count and not self._replay(force=force_replay):
                # Still failing: keep arrival order and don't hammer the database.
                if batch:
                    self._spool(batch)
            elif batch:
                try:
                    self._write(batch, replay=False)
                except (sa_exc.SQLAlchemyError, OSError) as e:
                    self._note_outage(e)
                    self._spool(batch)
                else:
                    self._note_recovery()
        except Exception:
            log.exception("ledger %s: unexpected error writing %d receipts", self.url, len(batch))
            with contextlib.suppress(Exception):
                self._spool(batch)
        finally:
            with self._state_lock:
                self._handled += len(batch)

    # ---------------------------------------------------------------- database writes

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self._db_lock, self._engine.begin() as conn:
            yield conn

    def _insert_receipts(self, receipts: Sequence[Receipt], *, replay: bool) -> None:
        """Insert in one transaction, skipping request_ids already stored (idempotent replay)."""
        with self._begin() as conn:
            ids = [r.request_id for r in receipts]
            existing: set[str] = set()
            for chunk in _chunks(ids, _LOOKUP_CHUNK):
                col = receipts_table.c.request_id
                existing.update(conn.scalars(select(col).where(col.in_(chunk))))
            rows: list[dict[str, Any]] = []
            for r in receipts:
                if r.request_id in existing:
                    continue
                existing.add(r.request_id)  # also drops repeats inside the batch
                rows.append({name: getattr(r, name) for name in RECEIPT_FIELDS})
            if rows:
                conn.execute(self._receipt_insert, rows)  # executemany
        skipped = len(receipts) - len(rows)
        if skipped and not replay:
            log.warning(
                "ledger %s: skipped %d receipts whose request_id is stored", self.url, skipped
            )

    def _write(self, receipts: Sequence[Receipt], *, replay: bool) -> None:
        """Insert ``receipts``; rows the database refuses on their own go to the rejected file.

        Raises:
            SQLAlchemyError: the database is unusable (the caller spools or keeps the batch).
        """
        try:
            self._insert_receipts(receipts, replay=replay)
            return
        except sa_exc.SQLAlchemyError as e:
            if not _is_row_error(e):
                raise
        # Some row is bad: insert one by one so that only the bad ones are set aside.
        for receipt in receipts:
            try:
                self._insert_receipts([receipt], replay=replay)
            except sa_exc.SQLAlchemyError as e:
                if not _is_row_error(e):
                    raise
                self._reject({**_json_dict(receipt), "_error": describe_error(e, self._url)})

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

    def _prepare_spool(self) -> int:
        """Count receipts left in the spool by an earlier run; end a torn last line."""
        try:
            data = self._spool_path.read_bytes()
        except FileNotFoundError:
            return 0
        except OSError as e:
            raise LedgerError(f"ledger spool {self._spool_path} cannot be read: {e}") from e
        if data and not data.endswith(b"\n"):
            # A crash mid-write left half a line; new lines must not be glued to it.
            with open(self._spool_path, "ab") as fh:
                fh.write(b"\n")
        if data.strip():
            log.info("ledger: %s holds receipts from an earlier run; replaying", self._spool_path)
        return sum(1 for line in data.splitlines() if line.strip())

    def _spool(self, receipts: Sequence[Receipt]) -> None:
        """Append receipts to the spool and fsync it."""
        if not receipts:
            return
        payload = "".join(_json_line(_json_dict(r)) for r in receipts).encode("utf-8")
        with self._spool_lock:
            try:
                self._spool_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self._spool_path, "ab") as fh:
                    fh.write(payload)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as e:
                # Last resort: the receipts go to the log rather than nowhere.
                log.error(
                    "ledger: cannot write spool %s (%s); receipts follow:\n%s",
                    self._spool_path,
                    e,
                    payload.decode("utf-8"),
                )
                return
            self._spool_count += len(receipts)

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
        with self._spool_lock:
            try:
                end = self._spool_path.stat().st_size
            except FileNotFoundError:
                self._spool_count = 0
                return 0
        # Read only up to ``end``: lines appended meanwhile stay for the next replay.
        receipts: list[Receipt] = []
        count = 0
        with open(self._spool_path, "rb") as fh:
            while fh.tell() < end:
                line = fh.readline()
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
                    self._write(receipts, replay=True)
                    count += len(receipts)
                    receipts = []
        if receipts:
            self._write(receipts, replay=True)
            count += len(receipts)
        self._drop_spool_head(end)
        return count

    def _drop_spool_head(self, end: int) -> None:
        """Remove the first ``end`` bytes (now in the database) from the spool."""
        with self._spool_lock:
            data = self._spool_path.read_bytes()
            rest = data[end:]
            if not rest:
                self._spool_path.unlink()
                self._spool_count = 0
                return
            tmp = self._spool_path.with_name(self._spool_path.name + ".tmp")
            with open(tmp, "wb") as fh:
                fh.write(rest)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._spool_path)
            self._spool_count = sum(1 for line in rest.splitlines() if line.strip())

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
        with ledger_errors(self._url, "storing carbon readings"), self._begin() as conn:
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
    "RECEIPT_FIELDS",
    "Ledger",
    "PolicyVersionRecord",
    "canonical_json",
    "default_spool_path",
    "params_sha256",
]
