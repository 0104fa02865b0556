"""Checkpoint files: read, list, name, write atomically, and find the newest of a ledger.

The document format itself is :mod:`sprout.ledger.checkpoint`; this module only moves it
to and from disk, turning what is wrong with a file into a :class:`ConfigError` that names it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from sprout.errors import ConfigError
from sprout.ledger.checkpoint import Checkpoint, CheckpointFormatError, parse_checkpoint

log = logging.getLogger("sprout.ledger")


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file (the signature is checked by
    :func:`sprout.ledger.attest.check_checkpoints`).

    Raises:
        ConfigError: the file cannot be read, is not JSON or is not a checkpoint.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"checkpoint file {p} does not exist") from None
    except OSError as e:
        raise ConfigError(f"checkpoint file {p}: cannot read ({e.strerror or e})") from e
    try:
        return parse_checkpoint(data, f"checkpoint file {p}")
    except CheckpointFormatError as e:
        raise ConfigError(str(e)) from e


def checkpoint_files(paths: Sequence[str | Path]) -> list[Path]:
    """The checkpoint files ``paths`` name: files as given, directories' ``*.json`` sorted.

    Raises:
        ConfigError: a path that does not exist, or a directory with no checkpoint.
    """
    out: list[Path] = []
    for value in paths:
        p = Path(value)
        if p.is_dir():
            files = sorted(p.glob("*.json"))
            if not files:
                raise ConfigError(f"checkpoint directory {p} holds no *.json checkpoint")
            out += files
        elif p.exists():
            out.append(p)
        else:
            raise ConfigError(f"checkpoint file {p} does not exist")
    return out


def checkpoint_filename(cp: Checkpoint) -> str:
    """``checkpoint-<UTC time>.json``: names sort by time."""
    return f"checkpoint-{cp.taken_at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}.json"


def write_checkpoint(cp: Checkpoint, path: str | Path) -> Path:
    """Write ``cp`` to ``path`` atomically (a reader never sees half a file).

    Raises:
        ConfigError: the file cannot be written.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(cp.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"cannot write checkpoint {p} ({e.strerror or e})") from e
    return p


def latest_checkpoint(directory: str | Path, public_key: Any, database: str) -> Checkpoint | None:
    """The newest checkpoint in ``directory`` of ``database`` (a masked URL) that
    ``public_key`` signed; files that are not such a checkpoint are passed over."""
    d = Path(directory)
    if not d.is_dir():
        return None
    # Newest first: the names sort by time (checkpoint_filename).
    for path in sorted(d.glob("checkpoint-*.json"), reverse=True):
        try:
            cp = read_checkpoint(path)
        except ConfigError as e:
            log.warning("ledger checkpoint: skipping %s: %s", path, e)
            continue
        if cp.database == database and cp.signature_problem(public_key) is None:
            return cp
    return None


__all__ = [
    "checkpoint_filename",
    "checkpoint_files",
    "latest_checkpoint",
    "read_checkpoint",
    "write_checkpoint",
]
