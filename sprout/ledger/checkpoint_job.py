"""Taking checkpoints into files, once or on a schedule (``sprout ledger checkpoint``).

:func:`checkpoint_once` takes one (:func:`sprout.ledger.attest.take_checkpoint`), starting
from the newest checkpoint of the same ledger and key in the directory, and writes it.
:func:`checkpoint_job` and :func:`schedule_checkpoints` run it on a schedule (setting
``ledger_checkpoint_cron``) into ``ledger_checkpoint_dir``, under the ``checkpoint`` job lock.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from sprout.errors import ConfigError, LedgerError
from sprout.ledger.attest import take_checkpoint
from sprout.ledger.checkpoint import Checkpoint
from sprout.ledger.checkpoint_files import checkpoint_filename, latest_checkpoint, write_checkpoint
from sprout.ledger.keys import signing_key
from sprout.ledger.locks import job_lock
from sprout.ledger.migrate import mask_url
from sprout.scheduler import add_cron_job, cron_fields

if TYPE_CHECKING:
    from apscheduler.job import Job
    from apscheduler.schedulers.base import BaseScheduler

log = logging.getLogger("sprout.ledger")

#: The scheduled job's id and its cluster-wide lock.
JOB_ID, LOCK_NAME = "sprout-ledger-checkpoint", "checkpoint"


def checkpoint_once(
    settings: Any,
    *,
    key: Any,
    directory: str | Path | None = None,
    output: str | Path | None = None,
    full: bool = False,
    engine: Engine | None = None,
) -> tuple[Checkpoint, list[Path]]:
    """Take a checkpoint of ``settings.db_url`` and write it.

    Args:
        settings: the settings (``db_url``).
        key: the ``Ed25519PrivateKey``.
        directory: a directory of checkpoints (written as
            :func:`~sprout.ledger.checkpoint_files.checkpoint_filename`); the newest one
            there of this ledger and key is the starting point unless ``full``.
        output: a file to write it to as well.
        full: recompute every chain from its first row.
        engine: an existing engine for the ledger.

    Returns:
        The checkpoint and the files written.
    """
    directory = directory or None  # "" (an unset setting) is no directory
    previous = None
    if directory is not None and not full:
        previous = latest_checkpoint(directory, key.public_key(), mask_url(settings.db_url))
    cp = take_checkpoint(settings.db_url, key, previous=previous, engine=engine)
    written = []
    if directory is not None:
        written.append(write_checkpoint(cp, Path(directory) / checkpoint_filename(cp)))
    if output is not None:
        written.append(write_checkpoint(cp, output))
    return cp, written


def checkpoint_job(settings: Any, *, key: Any | None = None) -> Checkpoint | None:
    """One scheduled run: a checkpoint into ``settings.ledger_checkpoint_dir``, unless
    another replica holds the ``checkpoint`` job lock (then None). Never raises for a
    failed run (it is logged; the next run tries again)."""
    if not settings.ledger_checkpoint_dir:
        log.error("ledger checkpoint: no ledger_checkpoint_dir is set; nothing written")
        return None
    try:
        with job_lock(settings.db_url, LOCK_NAME) as acquired:
            if not acquired:
                log.info("ledger checkpoint: another process holds the job lock; skipped")
                return None
            signer = key if key is not None else signing_key(settings)
            cp, written = checkpoint_once(
                settings, key=signer, directory=settings.ledger_checkpoint_dir
            )
    except (ConfigError, LedgerError) as e:
        log.error("ledger checkpoint failed: %s", e)
        return None
    log.info(
        "ledger checkpoint: %d chains, %d receipts, key %s -> %s",
        len(cp.chains),
        cp.receipts,
        cp.key_id,
        ", ".join(map(str, written)),
    )
    return cp


def schedule_checkpoints(scheduler: BaseScheduler, settings: Any, *, key: Any = None) -> Job:
    """Add :func:`checkpoint_job` to ``scheduler`` on ``settings.ledger_checkpoint_cron``.

    Raises:
        ConfigError: no ``ledger_checkpoint_dir``, no usable signing key (checked now rather
            than at the first run), or a bad cron line.
    """
    if not settings.ledger_checkpoint_dir:
        raise ConfigError(
            "scheduled checkpoints need a directory: set ledger_checkpoint_dir "
            "(SPROUT_LEDGER_CHECKPOINT_DIR) or give --dir"
        )
    signer = key if key is not None else signing_key(settings)
    fields = cron_fields(settings.ledger_checkpoint_cron, setting="ledger_checkpoint_cron")
    return add_cron_job(
        scheduler,
        checkpoint_job,
        job_id=JOB_ID,
        name="ledger checkpoint",
        args=(settings,),
        kwargs={"key": signer},
        **fields,
    )


__all__ = [
    "JOB_ID",
    "LOCK_NAME",
    "checkpoint_job",
    "checkpoint_once",
    "schedule_checkpoints",
]
