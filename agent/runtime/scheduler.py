"""Periodic jobs on one APScheduler 3 `BackgroundScheduler`, off the hot path.

Each job is a plain function that reads and writes through `storage` only. Jobs never overlap
themselves (`max_instances=1`), runs missed while the process was busy coalesce into one, and
a failing job is logged and runs again at its next interval. `build_scheduler` adds every
configured job: Evidently reports, auto-resolve, retention.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler

from agent.config import Settings
from storage.db import Database, DatabaseUnavailable

log = logging.getLogger(__name__)

REPORTS_JOB = "reports"
AUTO_RESOLVE_JOB = "auto-resolve"
RETENTION_JOB = "retention"


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
        except DatabaseUnavailable:  # an outage: the database handle logs its start and end
            log.debug("scheduled job %s skipped: database unreachable", name)
        except Exception:
            log.exception("scheduled job %s failed; it runs again in %.0fs", name, seconds)

    scheduler.add_job(run, "interval", seconds=seconds, id=name, name=name, replace_existing=True)


def build_scheduler(settings: Settings, db: Database) -> BackgroundScheduler:
    """A scheduler with every configured job added, not started (call `.start()`, and
    `.shutdown()` on exit)."""
    from agent.incidents import lifecycle, retention

    scheduler = make_scheduler()
    if settings.reports.enabled:
        add_interval_job(
            scheduler,
            lambda: _reports(settings, db),
            settings.reports.interval_minutes * 60,
            REPORTS_JOB,
        )
    api = settings.api
    if api.auto_resolve_after > 0:
        add_interval_job(
            scheduler,
            lambda: lifecycle.auto_resolve(db, settings.alerts, api.auto_resolve_after),
            api.auto_resolve_interval,
            AUTO_RESOLVE_JOB,
        )
    add_interval_job(
        scheduler,
        lambda: retention.prune(db, api.retention),
        api.retention.interval,
        RETENTION_JOB,
    )
    return scheduler


def _reports(settings: Settings, db: Database) -> None:
    from agent.reports import run_scheduled_reports  # Evidently is imported by the job only

    for outcome in run_scheduled_reports(settings, db):
        log.info(
            "report %d for model %s: %s, linked to incidents %s",
            outcome.report.id,
            outcome.report.model,
            outcome.report.html_path,
            outcome.incident_ids,
        )
