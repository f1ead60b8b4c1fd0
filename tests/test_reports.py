"""Evidently reports: stored summary, HTML on disk, links to incidents, CLI, scheduler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import ReportSettings
from agent.reports import (
    ReportError,
    Window,
    build_report,
    parse_window,
    reports_dir,
    run_scheduled_reports,
)
from agent.runtime.scheduler import REPORTS_JOB, build_scheduler
from storage.db import Database
from storage.models import Incident
from storage.queries import IncidentFilter, Repository
from tests.conftest import run_cli
from tests.refdata import START, events, replay, settings_for


def test_parse_window() -> None:
    assert parse_window("1h") == Window(seconds=3600)
    assert parse_window("30m") == Window(seconds=1800)
    assert parse_window("2d") == Window(seconds=172_800)
    assert parse_window("5000") == Window(events=5000)
    assert parse_window("5000 events") == Window(events=5000)
    for bad in ("", "1 week", "-1h", "0", "2.5 events"):
        with pytest.raises(ReportError, match="--window"):
            parse_window(bad)


def _drifted_model(database: Database, tmp_path: Path):
    """A learned reference, then a mean shift of `amount`: its feature_drift incident, and every
    incident of the model (the shift may also show as input_anomaly or data_quality)."""
    settings = settings_for(database.url, learn_events=2000, recent_events=2000)
    settings = settings.model_copy(update={"reports": ReportSettings(dir=tmp_path / "reports")})
    lines = events(2000, seed=61) + events(2000, seed=62, shift=1.5, start=START + 2000)
    replay(settings, database, lines, consumer="r", name="src")
    incidents = Repository(database).list_incidents(IncidentFilter(model="fraud"))
    (incident,) = [i for i in incidents if i.kind == "feature_drift"]
    assert incident.subject == "amount"
    return settings, incident, incidents


def _with_evidence_since(incidents: list[Incident], start: float) -> list[int]:
    """Ids of the incidents whose latest evidence is at or after `start` (the recent window
    ends at the last event, so these are the incidents with evidence inside it)."""
    return sorted(i.id for i in incidents if i.last_seen >= start)


def test_report_is_stored_written_and_linked_to_the_incident(
    database: Database, tmp_path: Path
) -> None:
    settings, incident, incidents = _drifted_model(database, tmp_path)
    repository = Repository(database)

    (outcome,) = run_scheduled_reports(settings, database)
    report = outcome.report
    assert report.model == "fraud"
    assert (report.window_start, report.window_end) == (START + 2000, START + 3999)
    # Every incident of the model is detected after the reference, inside the window.
    assert sorted(outcome.incident_ids) == sorted(i.id for i in incidents)
    assert incident.id in outcome.incident_ids
    assert [r.id for r in repository.reports_of_incident(incident.id)] == [report.id]

    html = Path(report.html_path)
    assert html.parent == tmp_path / "reports" and html.stat().st_size > 10_000
    assert "<html" in html.read_text()[:2000].lower()

    stored = repository.list_reports("fraud")[0].to_contract()
    drift = stored["summary"]["drift"]["columns"]
    assert drift["amount"]["drifted"] is True
    assert drift["age"]["drifted"] is False and drift["country"]["drifted"] is False
    assert {"prediction", "scores.1"} <= drift.keys()
    assert stored["summary"]["rows"] == {"reference": 2000, "current": 2000}
    assert stored["summary"]["columns"]["amount"]["mean"] == pytest.approx(13, abs=0.3)
    assert stored["summary"]["reference"]["origin"] == "learned"

    # No new predictions since: the scheduled job does not repeat the same report.
    assert run_scheduled_reports(settings, database) == []
    # A window before the drift's evidence links nothing.
    early = build_report(settings, database, "fraud", Window(events=1))
    assert early is not None and early.report.window_start == START + 3999
    assert sorted(early.incident_ids) == _with_evidence_since(incidents, START + 3999)


def test_report_command(sqlite_url: str, tmp_path: Path) -> None:
    database = Database(sqlite_url)
    _, _, incidents = _drifted_model(database, tmp_path)
    out = tmp_path / "fraud.html"
    result = run_cli(
        "report", "fraud", "--window", "1000", "--out", str(out), "--db", sqlite_url, "-f", "json"
    )
    assert result.returncode == 0, result.stderr
    item = json.loads(result.stdout)
    assert item["html_path"] == str(out.resolve()) and out.stat().st_size > 10_000
    assert item["summary"]["window"]["events"] == 1000
    assert item["window"] == {"start": START + 3000, "end": START + 3999}
    assert item["summary"]["drift"]["columns"]["amount"]["drifted"] is True
    assert sorted(item["incidents"]) == _with_evidence_since(incidents, START + 3000)

    missing = run_cli("report", "nobody", "--db", sqlite_url)
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines() == [
        "error: no recent predictions of model 'nobody' are stored yet (the pipeline writes "
        "them with its checkpoints)"
    ]


def test_scheduler_has_the_reports_job_when_enabled(sqlite_url: str, tmp_path: Path) -> None:
    database = Database(sqlite_url)
    settings = settings_for(sqlite_url).model_copy(
        update={"reports": ReportSettings(interval_minutes=15)}
    )
    job = build_scheduler(settings, database).get_job(REPORTS_JOB)
    assert job is not None and job.trigger.interval.total_seconds() == 900
    disabled = settings.model_copy(update={"reports": ReportSettings(enabled=False)})
    assert build_scheduler(disabled, database).get_job(REPORTS_JOB) is None
    # Reports land next to the SQLite file unless configured.
    assert reports_dir(settings, database) == tmp_path / "reports"
