"""The background jobs of run and serve: registered as configured, failures logged not raised."""

from __future__ import annotations

import logging
import threading

import pytest

from agent.runtime.scheduler import add_interval_job, build_scheduler, make_scheduler
from storage.db import Database
from tests.api_helpers import api_settings


def test_jobs_follow_the_config(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    settings = api_settings(sqlite_url, auto_resolve_interval=30.0)
    jobs = {
        job.id: job.trigger.interval.total_seconds()
        for job in build_scheduler(settings, db).get_jobs()
    }
    assert jobs == {"reports": 3600.0, "auto-resolve": 30.0, "retention": 3600.0}
    quiet = api_settings(sqlite_url, auto_resolve_after=0.0).model_copy(
        update={"reports": settings.reports.model_copy(update={"enabled": False})}
    )
    assert [job.id for job in build_scheduler(quiet, db).get_jobs()] == ["retention"]
    db.dispose()


def test_a_failing_job_is_logged_and_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    twice = threading.Event()

    def job() -> None:
        runs.append(1)
        if len(runs) >= 2:
            twice.set()
        raise RuntimeError("database away")

    scheduler = make_scheduler()
    add_interval_job(scheduler, job, 0.2, "flaky")
    with caplog.at_level(logging.ERROR, logger="agent.runtime.scheduler"):
        scheduler.start()
        try:
            assert twice.wait(10), "the job did not run again after failing"
        finally:
            scheduler.shutdown(wait=True)
    assert any("scheduled job flaky failed" in r.getMessage() for r in caplog.records)
