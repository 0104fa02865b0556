"""The batching writer: receipts queued in memory, committed in batches by a daemon thread.

:meth:`BatchWriter.append` only puts the receipt on an in-memory queue (after syncing it to
the journal in durable mode), so a request never waits for (or fails because of) the
database. The writer thread commits the queue in batches, one per flush interval or sooner
when a batch is full or a flush is asked for. A batch that cannot be committed goes to the
spool, which is replayed with a backoff while the database stays down; receipts the database
refuses on their own are set aside in the spool's rejected file.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import exc as sa_exc

from sprout.ledger._insert import is_row_error
from sprout.ledger._journal import Journal
from sprout.ledger._rows import InvalidReceipt, Prepared, json_dict, json_line, prepared_record
from sprout.ledger._spool import Spool
from sprout.ledger.migrate import describe_error, mask_url
from sprout.receipt import Receipt

log = logging.getLogger("sprout.ledger")

#: Longest wait between two replay attempts while the database stays down.
_MAX_BACKOFF_S = 30.0
#: While a backlog waits, an appender yields the GIL to the writer every this many receipts.
_YIELD_EVERY = 128
#: How often a running ledger looks for journals left by dead processes.
_ADOPT_EVERY_S = 30.0

#: A queued receipt: (its prepared form, None, end of its journal line or 0), or, for one
#: that cannot be stored, (the receipt, why, end). Only the prepared form is kept (not the
#: Receipt): a tuple of atoms, which the cyclic GC stops tracking, where a queue of Receipts
#: would be walked by every collection while it is long.
_Item = tuple[Any, "InvalidReceipt | None", int]
#: Chain and insert prepared receipts: ``(rows, replay) -> inserted``; raises
#: ``SQLAlchemyError`` (see :meth:`sprout.ledger._insert.ChainedInsert.insert`).
InsertRows = Callable[[Sequence[Prepared], bool], int]


class _Flush:
    """Queue marker: the writer sets ``done`` once everything queued before it is handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class BatchWriter:
    """Queues receipts and commits them from its own thread (started here).

    Args:
        url: the database URL (masked in log lines).
        spool: where batches go while the database is unusable.
        journal: the durable journal (None: buffered mode).
        prepare: validates and converts a receipt (see
            :func:`sprout.ledger._rows.make_preparer`).
        insert: chains and inserts prepared receipts.
        interval_s: longest time a receipt waits in memory before its batch commits.
        batch_size: receipts per insert; a full batch commits without waiting.
    """

    def __init__(
        self,
        url: str,
        *,
        spool: Spool,
        journal: Journal | None,
        prepare: Callable[[Receipt], Prepared],
        insert: InsertRows,
        interval_s: float,
        batch_size: int,
    ) -> None:
        self._url = url
        self._label = mask_url(url)
        self._spool = spool
        self._journal = journal
        self._prepare = prepare
        self._insert = insert
        self._interval = interval_s
        self._batch_size = batch_size
        self._next_adopt = 0.0
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

    # ---------------------------------------------------------------- appenders' side

    def append(self, receipt: Receipt) -> None:
        """Queue a receipt for the writer thread. Never waits on the database, never raises.

        The receipt is validated and converted here, in the caller's thread (CPU only), so
        that this work overlaps the writer's database time. In durable mode the receipt is
        first fsynced to the journal. Once stopped, it goes straight to the spool file.
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
                self._spool.append([json_dict(receipt)])
                log.warning(
                    "ledger %s is closed: receipt %s spooled to %s",
                    self._label,
                    receipt.request_id,
                    self._spool.path,
                )
        except Exception:  # the request path must never fail because of the ledger
            log.exception("ledger: could not take receipt %s", getattr(receipt, "request_id", "?"))

    def _item(self, receipt: Receipt, end: int) -> _Item:
        """The queue item of ``receipt``: prepared, or set aside with the reason."""
        try:
            return self._prepare(receipt), None, end
        except InvalidReceipt as e:
            return receipt, e, end
        except Exception as e:  # not a Receipt as the dataclass declares it
            return receipt, InvalidReceipt(repr(e)), end

    def _append_durable(self, receipt: Receipt, item: _Item) -> None:
        assert self._journal is not None
        line = json_line(json_dict(receipt)).encode("utf-8")
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
            self._spool.append([json_dict(receipt)])

    def flush(self, timeout_s: float) -> bool:
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

    def stop(self) -> bool:
        """Ask the thread to commit what is queued and end; False if asked already."""
        with self._state_lock:
            if self._closed:
                return False
            self._closed = True
            self._pending.append(_STOP)
            self._markers += 1
        self._wake.set()
        return True

    def join(self, timeout_s: float) -> bool:
        """Wait for the thread to end after :meth:`stop`; False (logged) if it is still busy."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning(
                "ledger %s: writer still busy after %.1f s; %d receipts not yet written",
                self._label,
                timeout_s,
                self.pending(),
            )
            return False
        return True

    # ---------------------------------------------------------------- writer thread

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
            if self._spool.count and not self._replay(force=force_replay):
                # Still failing: keep arrival order and don't hammer the database.
                safe = self._spool.append([self._record(item) for item in batch])
            elif batch:
                rows: list[Prepared] = []
                for item in batch:
                    if item[1] is None:
                        rows.append(item[0])
                    else:
                        self._spool.reject(
                            {**json_dict(item[0]), "_error": f"invalid receipt: {item[1]}"}
                        )
                try:
                    self._write(rows, replay=False)
                except (sa_exc.SQLAlchemyError, OSError) as e:
                    self._note_outage(e)
                    safe = self._spool.append([prepared_record(row) for row in rows])
                else:
                    safe = True
                    self._note_recovery()
            else:
                safe = True
        except Exception:
            log.exception(
                "ledger %s: unexpected error writing %d receipts", self._label, len(batch)
            )
            with contextlib.suppress(Exception):
                safe = self._spool.append([self._record(item) for item in batch])
        finally:
            with self._state_lock:
                self._in_flight = 0
            if self._journal is not None and batch:
                end = batch[-1][2]
                try:
                    self._journal.handled(end, safe and end >= 0)
                except OSError as e:
                    log.error("ledger: journal %s: %s", self._journal.path, e)

    def _record(self, item: _Item) -> dict[str, Any]:
        """The JSON record (spool line) of a queue item."""
        return prepared_record(item[0]) if item[1] is None else json_dict(item[0])

    def _write(self, rows: Sequence[Prepared], *, replay: bool) -> None:
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
            self._insert(rows, replay)
            return
        except sa_exc.SQLAlchemyError as e:
            if not is_row_error(e):
                raise
        # Some row is refused all the same: one by one, so that only the bad ones are set aside
        # (each in its own transaction, so a refused row takes no chain position).
        for row in rows:
            try:
                self._insert([row], True)
            except sa_exc.SQLAlchemyError as e:
                if not is_row_error(e):
                    raise
                self._spool.reject({**prepared_record(row), "_error": describe_error(e, self._url)})

    def _note_outage(self, error: BaseException) -> None:
        what = describe_error(error, self._url)
        if what != self._outage:
            log.warning(
                "ledger %s: write failed (%s); receipts are spooled to %s and replayed later",
                self._label,
                what,
                self._spool.path,
            )
        self._outage = what
        self._next_replay = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)

    def _note_recovery(self) -> None:
        if self._outage is not None:
            log.info("ledger %s: writes succeed again", self._label)
        self._outage = None
        self._backoff = self._interval
        self._next_replay = 0.0

    # ---------------------------------------------------------------- spool replay

    def _replay(self, *, force: bool) -> bool:
        """Try to move the spool into the database; True when the spool is empty after."""
        if not force and time.monotonic() < self._next_replay:
            return False
        try:
            replayed = self._spool.replay(self._write_replayed, self._batch_size)
        except (sa_exc.SQLAlchemyError, OSError) as e:
            self._note_outage(e)
            return False
        self._note_recovery()
        if replayed:
            log.info("ledger %s: replayed %d spooled receipts", self._label, replayed)
        return True

    def _write_replayed(self, receipts: Sequence[Receipt]) -> None:
        """Insert spooled receipts (stored ones skipped); invalid ones are set aside."""
        rows = []
        for receipt in receipts:
            item = self._item(receipt, 0)
            if item[1] is None:
                rows.append(item[0])
            else:
                self._spool.reject({**json_dict(receipt), "_error": f"invalid receipt: {item[1]}"})
        self._write(rows, replay=True)

    def _adopt_orphan_journals(self) -> None:
        """Adopt dead ledgers' journals into the spool now, and again in ``_ADOPT_EVERY_S``."""
        self._next_adopt = time.monotonic() + _ADOPT_EVERY_S
        self._spool.adopt_orphan_journals(None if self._journal is None else self._journal.path)


__all__ = ["BatchWriter", "InsertRows"]
