"""The ledger store: a buffered, hash-chaining receipt writer with a disk spool.

:class:`Ledger` is a facade; each job lives in its own module:

- :mod:`~sprout.ledger._writer`: :meth:`Ledger.append` only puts the receipt on an in-memory
  queue, so a request never waits for (or fails because of) the database; a daemon thread
  commits the queue in batches;
- :mod:`~sprout.ledger._insert`: each batch is validated, chained (every ledger instance
  writes its own hash chain, see :mod:`sprout.ledger.chain`), inserted, folded into the
  hourly rollups and recorded in the chain's head, all in one transaction; chain positions
  are assigned inside it, so a batch that fails takes no position and a receipt replayed
  later (or twice) chains like any other;
- :mod:`~sprout.ledger._spool`: a batch that cannot be committed is appended to a JSON-lines
  spool file and fsynced, and replayed later (receipts already stored are skipped: the key
  is ``(created_at, request_id)``); a receipt the database refuses on its own goes to a
  ``*.rejected.jsonl`` file beside it. Nothing is dropped silently;
- :mod:`~sprout.ledger._journal`: in ``durable`` mode (the default) :meth:`Ledger.append`
  first appends the receipt to a journal private to this ledger and returns once it is on
  disk (group commit); the journal of a dead process is adopted into the spool by the next
  ledger that starts beside it. In ``buffered`` mode a process killed with SIGKILL loses
  the receipts still in memory, at most those of the last flush interval (plus a batch
  being committed);
- :mod:`~sprout.ledger._rows`: the receipt row encoding and canonical JSON;
- :mod:`~sprout.ledger.readings`, :mod:`~sprout.ledger.versions`,
  :mod:`~sprout.ledger.receipts`, :mod:`~sprout.ledger.verdicts`,
  :mod:`~sprout.ledger.prompts`: the other tables, written and read synchronously.
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import weakref
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy.engine import Engine as SAEngine

from sprout.errors import ConfigError
from sprout.ledger import locks, prompts, receipts, verdicts, versions
from sprout.ledger._database import open_database
from sprout.ledger._insert import ChainedInsert
from sprout.ledger._journal import Journal, journal_path
from sprout.ledger._rows import (
    RECEIPT_FIELDS,
    Prepared,
    canonical_json,
    make_preparer,
    params_sha256,
)
from sprout.ledger._spool import Spool, default_spool_path
from sprout.ledger._writer import BatchWriter
from sprout.ledger.chain import new_chain_id
from sprout.ledger.migrate import mask_url
from sprout.ledger.readings import add_readings
from sprout.ledger.verify import VerifyResult, verify
from sprout.ledger.versions import PolicyVersionRecord
from sprout.readings import CarbonReading
from sprout.receipt import Receipt

#: ``buffered``: SIGKILL loses at most the last flush interval; ``durable``: nothing appended.
DURABILITY_MODES: tuple[str, ...] = ("buffered", "durable")


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
        self._durability = durability
        self._chain_id = new_chain_id()
        # The spool first: one it cannot read fails the ledger before an engine exists.
        self._spool = Spool(
            Path(spool_path) if spool_path is not None else default_spool_path(db_url),
            label=mask_url(db_url),
        )
        # Buffered mode already trades the last flush interval for speed; its commits need
        # not wait for the disk (a killed process still loses nothing committed). Durable
        # mode truncates its journal after a commit, so that commit must be on disk.
        self._db = open_database(
            db_url,
            sqlite_synchronous="NORMAL" if durability == "buffered" else "FULL",
            migrate=migrate,
        )
        self._inserter = ChainedInsert(self._db, self._chain_id)
        self._journal: Journal | None = None
        if durability == "durable":
            self._journal = Journal(journal_path(self._spool.path, secrets.token_hex(8)))
        self._writer = BatchWriter(
            db_url,
            spool=self._spool,
            journal=self._journal,
            prepare=make_preparer(self._db.engine.dialect),
            # Looked up on each call rather than bound now: the insert can be replaced on
            # the instance (tests play a hung database so), and the writer thread holds
            # this ledger alive until it is closed, so the exit hook below still finds it.
            insert=lambda rows, replay: self._insert_receipts(rows, replay=replay),
            interval_s=float(flush_interval_s),
            batch_size=int(batch_size),
        )
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
        return self._db.engine

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return self._db.label

    @property
    def spool_path(self) -> Path:
        """The spool file (it exists only while receipts wait in it)."""
        return self._spool.path

    @property
    def rejected_path(self) -> Path:
        """Where receipts the database refuses on their own are kept."""
        return self._spool.rejected_path

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
        self._writer.append(receipt)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every receipt appended so far is committed or spooled.

        A flush also retries the spool at once, without waiting for the backoff.

        Returns:
            True if that happened within ``timeout_s``.
        """
        return self._writer.flush(timeout_s)

    def pending(self) -> int:
        """Receipts appended but not yet committed or spooled."""
        return self._writer.pending()

    def spooled(self) -> int:
        """Receipts waiting in the spool file."""
        return self._spool.count

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush, stop the writer and release the engine. Safe to call more than once."""
        if not self._writer.stop():
            return
        atexit.unregister(self._at_exit)
        if not self._writer.join(timeout_s):
            # Disposing the engine under a busy writer would turn its batch into errors; the
            # journal (durable mode) stays for the next ledger to adopt.
            return
        if self._journal is not None:
            self._journal.close()
        self._spool.close()
        self._db.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _insert_receipts(self, rows: Sequence[Prepared], *, replay: bool) -> int:
        """The writer's one way into the database (see :class:`ChainedInsert`)."""
        return self._inserter.insert(rows, replay=replay)

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
        return add_readings(self._db, readings, fetched_at)

    def job_lock(
        self, name: str, *, wait_s: float = 0.0
    ) -> contextlib.AbstractContextManager[bool]:
        """The cluster-wide lock of job ``name`` on this database, for a ``with`` block that
        yields whether this process holds it (see :func:`sprout.ledger.locks.job_lock`).

        Raises:
            LedgerError: on entering: a bad name, or the database cannot be reached.
        """
        return locks.job_lock(self._db.engine, name, wait_s=wait_s)

    def save_policy_version(
        self, kind: str, params: dict[str, Any], metrics: dict[str, Any], note: str = ""
    ) -> int:
        """Store a trained policy; its params are hashed (SHA-256 of canonical JSON).

        Returns:
            The new version's id.

        Raises:
            LedgerError: params or metrics are not plain JSON data, or the write failed.
        """
        return versions.save_policy_version(self._db, kind, params, metrics, note)

    def latest_policy_version(self, kind: str | None = None) -> PolicyVersionRecord | None:
        """The most recently saved policy version (of ``kind``, if given), or None.

        Raises:
            LedgerError: the database cannot be read, or the stored params do not match their
                SHA-256 (the row was altered).
        """
        return versions.latest_policy_version(self._db, kind)

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
        return receipts.receipts(self._db, since, until, limit)

    def count_receipts(self) -> int:
        """Number of stored receipts (not counting queued or spooled ones).

        Raises:
            LedgerError: the database cannot be read.
        """
        return receipts.count_receipts(self._db)

    def find_receipt(self, request_id: str, created_at: datetime) -> Receipt | None:
        """The stored receipt with this id and time (its unique key), or None.

        Raises:
            LedgerError: the database cannot be read.
        """
        return receipts.find_receipt(self._db, request_id, created_at)

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
        return verdicts.add_verdict(
            self._db,
            receipt,
            preferred_directive,
            judge=judge,
            protocol=protocol,
            detail=detail,
            created_at=created_at,
        )

    def verdicts(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Stored verdicts (rows as dicts) on requests made in ``[since, until)``, in order.

        Raises:
            LedgerError: the database cannot be read.
        """
        return verdicts.verdicts(self._db, since, until)

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
        return prompts.add_sampled_prompt(
            self._db, request_id, prompt, created_at=created_at, tenant=tenant, purpose=purpose
        )

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
        return prompts.sampled_prompts(
            self._db, pending=pending, since=since, purpose=purpose, limit=limit
        )

    def verify(self) -> VerifyResult:
        """Check every hash chain of this database: see :func:`sprout.ledger.verify.verify`.

        Receipts still queued are not included: :meth:`flush` first.
        """
        with self._db.lock:
            return verify(self._db.url, engine=self._db.engine)


__all__ = [
    "DURABILITY_MODES",
    "RECEIPT_FIELDS",
    "Ledger",
    "PolicyVersionRecord",
    "canonical_json",
    "default_spool_path",
    "params_sha256",
]
