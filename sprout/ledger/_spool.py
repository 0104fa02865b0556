"""The spool: receipts that could not be committed, on disk until a replay stores them.

When a batch cannot be committed (database down, locked, table missing...) it is appended to
a JSON-lines spool file and fsynced; later replays insert the spool (receipts already stored
are skipped) and remove it once it is in. Processes that share a spool file take turns on it
through a file lock. A receipt the database would refuse on its own is moved to a
``*.rejected.jsonl`` file beside the spool instead of holding up the rest. The journals of
dead durable ledgers beside the spool are adopted into it. Nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sprout.errors import LedgerError
from sprout.ledger._rows import json_line
from sprout.ledger.migrate import sqlite_file
from sprout.receipt import Receipt

try:  # POSIX: processes sharing a spool file take turns through flock
    import fcntl
except ImportError:  # pragma: no cover - Windows: the spool is guarded per process only
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("sprout.ledger")

#: Longest wait for another process's turn on the shared spool (its replay is bounded by the
#: database timeouts).
_SPOOL_LOCK_WAIT_S = 60.0


def default_spool_path(db_url: str) -> Path:
    """``<file>.spool.jsonl`` beside a SQLite file, else ``sprout-ledger.spool.jsonl`` in cwd."""
    path = sqlite_file(db_url)
    if path is None:
        return Path.cwd() / "sprout-ledger.spool.jsonl"
    return path.with_name(path.name + ".spool.jsonl")


def rejected_path_for(spool: Path) -> Path:
    """Where a ledger on ``spool`` sets refused receipts aside."""
    return spool.with_name(spool.name.removesuffix(".jsonl") + ".rejected.jsonl")


class Spool:
    """A spool file, its lock and its file of rejected receipts.

    Args:
        path: the spool file (it exists only while receipts wait in it).
        label: who writes it, for log lines (the ledger's masked URL).

    Raises:
        LedgerError: a spool left by an earlier run cannot be read.
    """

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.rejected_path = rejected_path_for(path)
        self._label = label
        self._lock = threading.RLock()
        self._depth = 0
        self._lock_fd = -1
        #: Receipts waiting in the spool file.
        self.count = self._prepare()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """This process's turn on the spool: a thread lock, then the shared file lock.

        Raises:
            OSError: the file lock could not be had within ``_SPOOL_LOCK_WAIT_S``.
        """
        with self._lock:
            outermost = self._depth == 0
            if outermost and fcntl is not None:
                if self._lock_fd < 0:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._lock_fd = os.open(
                        self.path.with_name(self.path.name + ".lock"),
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
                                f"spool {self.path} stayed locked by another process "
                                f"for {_SPOOL_LOCK_WAIT_S:.0f} s"
                            ) from None
                        time.sleep(delay)
                        delay = min(delay * 2, 0.2)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if outermost and fcntl is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _prepare(self) -> int:
        """Count receipts left in the spool by an earlier run; end a torn last line."""
        if not self.path.exists():
            return 0  # (no lock file is made for nothing)
        try:
            with self.guard():
                try:
                    data = self.path.read_bytes()
                except FileNotFoundError:
                    return 0
                if data and not data.endswith(b"\n"):
                    # A crash mid-write left half a line; new lines must not be glued to it.
                    with open(self.path, "ab") as fh:
                        fh.write(b"\n")
        except OSError as e:
            raise LedgerError(f"ledger spool {self.path} cannot be read: {e}") from e
        if data.strip():
            log.info("ledger: %s holds receipts from an earlier run; replaying", self.path)
        return sum(1 for line in data.splitlines() if line.strip())

    def append(self, records: Sequence[dict[str, Any]]) -> bool:
        """Append receipt records to the spool and fsync it; False if that failed."""
        if not records:
            return True
        payload = "".join(json_line(r) for r in records).encode("utf-8")
        try:
            with self.guard():
                self._append_payload(payload, len(records))
        except OSError as e:
            # Last resort: the receipts go to the log rather than nowhere.
            log.error(
                "ledger: cannot write spool %s (%s); receipts follow:\n%s",
                self.path,
                e,
                payload.decode("utf-8"),
            )
            return False
        return True

    def _append_payload(self, payload: bytes, lines: int) -> None:
        """Append and fsync (the caller holds the spool guard)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        self.count += lines

    def reject(self, record: dict[str, Any]) -> None:
        """Set a record the database refuses aside in the rejected file (and log it)."""
        log.error(
            "ledger %s: %s set aside (%s); kept in %s",
            self._label,
            f"receipt {record['request_id']}" if "request_id" in record else "spool line",
            record.get("_error"),
            self.rejected_path,
        )
        line = json_line(record).encode("utf-8")
        with self._lock:
            self.rejected_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.rejected_path, "ab") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

    def replay(self, write: Callable[[list[Receipt]], None], batch_size: int) -> int:
        """Hand the spool's receipts to ``write`` in batches and remove the spool.

        The spool stays locked throughout, so that no other process appends to (or replays)
        it meanwhile; a failure (``write`` raising) leaves it whole, and what was committed
        is skipped next time. Unreadable lines are set aside.

        Returns:
            The number of receipts handed over.
        """
        with self.guard():
            count = 0
            receipts: list[Receipt] = []
            if not self.path.exists():
                self.count = 0
                return 0
            with open(self.path, "rb") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    try:
                        receipts.append(Receipt.from_json_dict(json.loads(line)))
                    except (ValueError, TypeError, KeyError) as e:
                        self.reject(
                            {
                                "_error": f"unreadable spool line: {e!r}",
                                "_line": line.decode("utf-8", "replace"),
                            }
                        )
                        continue
                    if len(receipts) >= batch_size:
                        write(receipts)
                        count += len(receipts)
                        receipts = []
                if receipts:
                    write(receipts)
                    count += len(receipts)
            self.path.unlink(missing_ok=True)
            self.count = 0
            return count

    def adopt_orphan_journals(self, own: Path | None) -> int:
        """Move the journals of dead durable ledgers beside this spool into the spool.

        A journal's owner holds a ``flock`` on it while alive, so a journal whose lock can
        be taken is an orphan. Adopted lines are replayed like spooled ones (stored
        receipts skipped). Never raises.

        Args:
            own: the caller's own journal, left alone.

        Returns:
            The number of lines adopted.
        """
        if fcntl is None:
            return 0
        adopted = 0
        try:
            candidates = sorted(self.path.parent.glob(self.path.name + ".journal-*"))
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
                    with self.guard():
                        self._append_payload(data, lines)
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

    def close(self) -> None:
        """Release the shared lock file (the spool itself stays for the next ledger)."""
        with self._lock:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1


__all__ = ["Spool", "default_spool_path", "rejected_path_for"]
