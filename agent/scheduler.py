"""Background jobs on an APScheduler BackgroundScheduler: small and generic on purpose.

Jobs never overlap themselves and missed runs coalesce into one, so a slow database delays a
job instead of piling runs up. A failing job is logged and retried at its next run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)


def make_scheduler() -> BackgroundScheduler:
    return BackgroundScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone="UTC",
    )


def add_interval_job(
    scheduler: BackgroundScheduler, job: Callable[[], object], seconds: float, name: str
) -> None:
    """Runs `job` every `seconds` (the first run one interval after the scheduler starts)."""

    def run() -> None:
        try:
            job()
        except Exception:
            log.exception("scheduled job %s failed; it runs again in %.0fs", name, seconds)

    scheduler.add_job(run, "interval", seconds=seconds, id=name, name=name, replace_existing=True)
