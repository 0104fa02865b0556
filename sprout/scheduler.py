"""APScheduler 3.x setup shared by Sprout's jobs (carbon polling today; judging and
retraining later).

Small helpers around the scheduler rather than a framework: :func:`create_scheduler` (a
background or a blocking scheduler in UTC with a bounded thread pool), :func:`add_interval_job`
and :func:`add_cron_job` (one instance of a job at a time, missed runs coalesced;
:func:`cron_fields` reads a crontab line),
:func:`start_scheduler` / :func:`stop_scheduler` / :func:`remove_job` (idempotent), and
:func:`run_blocking` (the foreground loop of a command, stopped by Ctrl-C or SIGTERM).
APScheduler is imported inside the functions: importing this module starts nothing.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sprout.errors import ConfigError

if TYPE_CHECKING:
    from apscheduler.job import Job
    from apscheduler.schedulers.base import BaseScheduler

log = logging.getLogger("sprout.scheduler")

#: Worker threads of a scheduler's default executor.
DEFAULT_MAX_WORKERS = 2


def create_scheduler(
    *, blocking: bool = False, max_workers: int = DEFAULT_MAX_WORKERS
) -> BaseScheduler:
    """A new, not yet started scheduler in UTC.

    Args:
        blocking: a ``BlockingScheduler`` (runs in the calling thread, for commands such as
            ``sprout poll``) instead of a ``BackgroundScheduler`` (a daemon thread, for
            jobs beside an app or the proxy).
        max_workers: threads that run jobs.
    """
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler

    options: dict[str, Any] = {
        "executors": {"default": ThreadPoolExecutor(max_workers)},
        # A job that is still running or was missed runs once, not in a pile-up.
        "job_defaults": {"coalesce": True, "max_instances": 1},
        "timezone": UTC,
    }
    if blocking:
        return BlockingScheduler(**options)
    return BackgroundScheduler(daemon=True, **options)


def add_interval_job(
    scheduler: BaseScheduler,
    func: Callable[..., Any],
    *,
    interval_s: float,
    job_id: str,
    name: str | None = None,
    run_now: bool = True,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    jitter_s: float | None = None,
) -> Job:
    """Run ``func(*args, **kwargs)`` every ``interval_s`` seconds; replaces a job of that id.

    Args:
        scheduler: the scheduler (started or not).
        func: the job; exceptions it raises are logged by APScheduler.
        interval_s: seconds between runs (> 0).
        job_id: the job's id (unique per scheduler).
        name: a readable name (default: the id).
        run_now: run the first time at once rather than after one interval.
        args: positional arguments of ``func``.
        kwargs: keyword arguments of ``func``.
        jitter_s: spread each run by up to this many seconds (replicas polling one API).

    Raises:
        ValueError: for a non-positive interval.
    """
    from apscheduler.triggers.interval import IntervalTrigger

    if not interval_s > 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
    trigger = IntervalTrigger(seconds=interval_s, timezone=UTC, jitter=jitter_s)
    extra: dict[str, Any] = {"next_run_time": datetime.now(UTC)} if run_now else {}
    return scheduler.add_job(
        func,
        trigger,
        args=list(args),
        kwargs=dict(kwargs or {}),
        id=job_id,
        name=name or job_id,
        replace_existing=True,
        misfire_grace_time=max(1, int(interval_s)),
        **extra,
    )


def add_cron_job(
    scheduler: BaseScheduler,
    func: Callable[..., Any],
    *,
    job_id: str,
    name: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    **cron: Any,
) -> Job:
    """Run ``func`` on a cron schedule in UTC, e.g. ``hour=3, minute=0``.

    ``cron`` takes APScheduler's ``CronTrigger`` fields (``year``, ``month``, ``day``,
    ``week``, ``day_of_week``, ``hour``, ``minute``, ``second``).
    """
    from apscheduler.triggers.cron import CronTrigger

    return scheduler.add_job(
        func,
        CronTrigger(timezone=UTC, **cron),
        args=list(args),
        kwargs=dict(kwargs or {}),
        id=job_id,
        name=name or job_id,
        replace_existing=True,
    )


def cron_fields(expression: str, *, setting: str = "cron") -> dict[str, str]:
    """A five-field crontab line (``minute hour day month day_of_week``, UTC) as
    :func:`add_cron_job` fields.

    Raises:
        ConfigError: not five fields, or a field APScheduler rejects (naming ``setting``).
    """
    from apscheduler.triggers.cron import CronTrigger

    parts = expression.split()
    names = ("minute", "hour", "day", "month", "day_of_week")
    if len(parts) != len(names):
        raise ConfigError(
            f"{setting} {expression!r}: expected 5 fields (minute hour day month day_of_week)"
        )
    fields = dict(zip(names, parts, strict=True))
    try:
        CronTrigger(timezone=UTC, **fields)
    except ValueError as e:
        raise ConfigError(f"{setting} {expression!r}: {e}") from e
    return fields


def start_scheduler(scheduler: BaseScheduler) -> None:
    """Start a background scheduler unless it is running already."""
    if not scheduler.running:
        scheduler.start()


def stop_scheduler(scheduler: BaseScheduler, *, wait: bool = True) -> None:
    """Shut a scheduler down, waiting for running jobs if ``wait``; idempotent."""
    from apscheduler.schedulers import SchedulerNotRunningError

    with contextlib.suppress(SchedulerNotRunningError):
        scheduler.shutdown(wait=wait)


def remove_job(scheduler: BaseScheduler, job_id: str) -> None:
    """Remove a job if it is there."""
    from apscheduler.jobstores.base import JobLookupError

    with contextlib.suppress(JobLookupError):
        scheduler.remove_job(job_id)


class _Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler (a BaseException, like Ctrl-C's
    KeyboardInterrupt, so that no ``except Exception`` on the way swallows it)."""


def run_blocking(scheduler: BaseScheduler) -> None:
    """Run a blocking scheduler in this thread until it is shut down, Ctrl-C or SIGTERM.

    Running jobs are waited for before returning.
    """
    with _raise_on_sigterm():
        try:
            scheduler.start()
        except (KeyboardInterrupt, _Terminated) as e:
            log.info(
                "%s; stopping the scheduler",
                "SIGTERM" if isinstance(e, _Terminated) else "interrupted",
            )
        finally:
            stop_scheduler(scheduler, wait=True)


@contextlib.contextmanager
def _raise_on_sigterm() -> Iterator[None]:
    # Signal handlers can only be installed from the main thread. The handler only raises:
    # taking the scheduler's locks inside it could deadlock with the code it interrupted.
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
