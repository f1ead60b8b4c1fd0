"""Periodic jobs of the daemon, on one APScheduler 3 `BackgroundScheduler`.

The scheduler runs next to the pipeline, off the hot path: each job is a plain function of
(settings, database) that reads and writes through `storage` only. Jobs never overlap with
themselves (`max_instances=1`) and a run missed while the process was busy is run once, not
once per missed interval (`coalesce`). Add a job by writing an `add_<name>_job` function below
and calling it from `build_scheduler`.
"""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler

from agent.config import Settings
from storage.db import Database

log = logging.getLogger(__name__)

REPORTS_JOB = "reports"


def build_scheduler(settings: Settings, db: Database) -> BackgroundScheduler:
    """A scheduler with every configured job added, not started (call `.start()`, and
    `.shutdown()` on exit)."""
    scheduler = BackgroundScheduler(
        timezone="UTC",
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
    )
    add_reports_job(scheduler, settings, db)
    return scheduler


def add_reports_job(scheduler: BackgroundScheduler, settings: Settings, db: Database) -> None:
    """Evidently reports per model every `[reports] interval_minutes`, when enabled."""
    if not settings.reports.enabled:
        return
    scheduler.add_job(
        _reports,
        "interval",
        args=(settings, db),
        minutes=settings.reports.interval_minutes,
        id=REPORTS_JOB,
        name="Evidently reports per model",
        replace_existing=True,
    )


def _reports(settings: Settings, db: Database) -> None:
    from agent.reports import run_scheduled_reports  # Evidently is imported by the job only

    outcomes = run_scheduled_reports(settings, db)
    for outcome in outcomes:
        log.info(
            "report %d for model %s: %s, linked to incidents %s",
            outcome.report.id,
            outcome.report.model,
            outcome.report.html_path,
            outcome.incident_ids,
        )
