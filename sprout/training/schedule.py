"""The scheduled retrain: :func:`schedule_retrain` adds the job to an APScheduler 3.x
scheduler on a crontab expression (see :mod:`sprout.scheduler`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sprout.scheduler import add_cron_job, cron_fields

if TYPE_CHECKING:
    from apscheduler.job import Job
    from apscheduler.schedulers.base import BaseScheduler


def parse_cron(expression: str) -> dict[str, str]:
    """The ``retrain_cron`` setting's crontab line (UTC) as APScheduler ``CronTrigger`` fields.

    Raises:
        ConfigError: not five fields, or a field APScheduler rejects (naming the setting).
    """
    return cron_fields(expression, setting="retrain cron")


def schedule_retrain(
    scheduler: BaseScheduler,
    job: Callable[[], Any],
    cron: str,
    *,
    job_id: str = "sprout-retrain",
) -> Job:
    """Run ``job`` (e.g. a :func:`~sprout.training.retrain.retrain` call) on ``cron`` (UTC)
    in ``scheduler``.

    One run at a time; missed runs are coalesced (see :mod:`sprout.scheduler`).
    """
    fields: dict[str, Any] = dict(parse_cron(cron))
    return add_cron_job(
        scheduler, job, job_id=job_id, name="retrain the contextual policy", **fields
    )
