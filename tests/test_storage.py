"""Storage and the incident manager, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy.exc import IntegrityError

from agent.config import AlertSettings
from agent.incidents import lifecycle
from agent.incidents.manager import Change, IncidentManager
from detectors.base import Finding, Kind, Severity
from storage.db import Database, DatabaseError
from storage.models import Incident
from storage.queries import IncidentFilter, Repository
from storage.unit_of_work import DeadLetterInput, UnitOfWork
from streams.events import Position


def finding(
    subject: str = "amount",
    offset: int = 10,
    ts: float = 1000.0,
    severity: Severity = Severity.WARNING,
    model: str = "fraud",
) -> Finding:
    return Finding(
        model=model,
        kind=Kind.FEATURE_DRIFT,
        subject=subject,
        severity=severity,
        ts=ts,
        position=Position("events.jsonl", 0, offset),
        detector="numeric_drift",
        statistic="cusum_mean_shift",
        value=9.5,
        threshold=8.2,
        effect_size=0.6,
        support=400,
        title=f"{subject}: mean shifted up",
        details={"k": 0.88},
    )


def apply(database: Database, findings: list[Finding]) -> list:
    with database.session() as session:
        return IncidentManager().apply(UnitOfWork(session), findings)


def test_one_open_incident_per_key_collects_the_evidence(database: Database) -> None:
    changes = apply(
        database,
        [
            finding(offset=10, ts=1000),
            finding(offset=20, ts=2000),
            finding("age", offset=30, ts=1500),
        ],
    )
    assert [c.change for c in changes] == [Change.OPENED, Change.OPENED, Change.UPDATED]
    repo = Repository(database)
    amount = repo.list_incidents(IncidentFilter(subject="amount"))
    assert len(amount) == 1
    incident = amount[0].to_contract()
    assert (incident["count"], incident["first_seen"], incident["last_seen"]) == (2, 1000, 2000)
    assert incident["status"] == "open" and incident["kind"] == "feature_drift"
    assert [e.ts for e in repo.evidence_of(incident["id"])] == [1000, 2000]


def test_the_same_finding_twice_changes_nothing(database: Database) -> None:
    apply(database, [finding(offset=10), finding(offset=20, ts=2000)])
    again = apply(database, [finding(offset=10), finding(offset=20, ts=2000)])
    assert again == []
    (incident,) = Repository(database).list_incidents()
    assert incident.count == 2
    assert len(Repository(database).evidence_of(incident.id)) == 2


def test_higher_severity_escalates(database: Database) -> None:
    changes = apply(database, [finding(offset=1), finding(offset=2, severity=Severity.CRITICAL)])
    assert [c.change for c in changes] == [Change.OPENED, Change.ESCALATED]
    assert Repository(database).list_incidents()[0].severity == "critical"


def test_title_is_the_opening_or_escalating_findings_and_details_the_latest(
    database: Database,
) -> None:
    spread = replace(finding(offset=2, ts=2000), title="amount: spread narrowed", value=7.0)
    apply(database, [finding(offset=1), spread])
    (incident,) = Repository(database).list_incidents()
    assert incident.title == "amount: mean shifted up" and incident.details["value"] == 7.0
    critical = replace(spread, position=Position("events.jsonl", 0, 3), severity=Severity.CRITICAL)
    apply(database, [critical])
    (incident,) = Repository(database).list_incidents()
    assert (incident.title, incident.severity) == ("amount: spread narrowed", "critical")


def test_the_database_refuses_a_second_open_incident_for_a_key(database: Database) -> None:
    apply(database, [finding()])
    fields = dict(
        model="fraud",
        kind="feature_drift",
        subject="amount",
        severity="warning",
        status="open",
        title="t",
        first_seen=1.0,
        last_seen=1.0,
        count=1,
        details={},
    )
    with pytest.raises(IntegrityError), database.session() as session:
        session.add(Incident(**fields))
    with database.session() as session:  # a resolved one with the same key is fine
        session.add(Incident(**{**fields, "status": "resolved"}))


def test_evidence_after_resolution_opens_a_new_linked_incident(database: Database) -> None:
    apply(database, [finding(offset=1)])
    repo = Repository(database)
    (first,) = repo.list_incidents()
    lifecycle.set_status(database, AlertSettings(), first.id, "resolved")
    (change,) = apply(database, [finding(offset=2, ts=5000)])
    assert change.change == Change.OPENED
    assert change.incident.id != first.id and change.incident.previous_id == first.id


def test_filters_and_cursor_pagination(database: Database) -> None:
    apply(
        database,
        [finding(f"f{i}", offset=i, ts=1000 + i) for i in range(5)]
        + [finding("x", offset=99, ts=999, model="churn")],
    )
    repo = Repository(database)
    assert [i.subject for i in repo.list_incidents(IncidentFilter(model="fraud"))] == [
        "f4",
        "f3",
        "f2",
        "f1",
        "f0",
    ]
    assert repo.count_incidents(IncidentFilter(since=1003)) == 2
    page = repo.list_incidents(limit=2)
    rest = repo.list_incidents(after=(page[-1].last_seen, page[-1].id))
    assert [i.subject for i in page + rest] == ["f4", "f3", "f2", "f1", "f0", "x"]


def test_dead_letters_are_stored_once_newest_first(database: Database) -> None:
    letters = [
        DeadLetterInput("in.jsonl", 0, i, f"reason {i}", b"{bad" * (i + 1), 100.0 + i)
        for i in range(3)
    ]
    for _ in range(2):  # re-processing the same records stores nothing new
        with database.session() as session:
            UnitOfWork(session).dead_letters.add(letters)
    rows = [r.to_contract() for r in Repository(database).list_dead_letters()]
    assert [r["offset"] for r in rows] == [2, 1, 0]
    assert rows[0]["reason"] == "reason 2" and rows[0]["payload"] == "{bad{bad{bad"


def test_checkpoints_round_trip_and_overwrite(database: Database) -> None:
    for offset, state in ((100, b"old"), (250, b"new")):
        with database.session() as session:
            writer = UnitOfWork(session)
            writer.checkpoints.save("group", "topic", 3, offset, {"fraud": state})
            writer.checkpoints.save_position("group", "topic", 3, offset)
    repo = Repository(database)
    rows = repo.load_checkpoints("group", "topic", 3)
    assert rows["fraud"].state == b"new" and rows["fraud"].next_offset == 250
    assert repo.load_position("group", "topic", 3) == 250
    assert repo.load_checkpoints("group", "topic", 4) == {}


def test_unreachable_database_is_retried_then_reported_in_one_line() -> None:
    db = Database("postgresql+psycopg://nobody:secret@127.0.0.1:9/none")
    with pytest.raises(DatabaseError) as raised:
        db.retrying(db.is_current, attempts=2, first_delay=0.01)
    message = str(raised.value)
    assert "unreachable after 2 attempts" in message
    assert "secret" not in message and "\n" not in message


def test_a_flagged_client_counts_from_when_its_pattern_began(database: Database) -> None:
    """The flagged set (open `suspicious_client` incidents) dates each client from the
    `pattern_began` of its finding where that is earlier than the flagging look, else from
    the look: read through a JSON path, on SQLite and PostgreSQL alike."""

    def flag(client: str, ts: float, began: float | None) -> Finding:
        details = {} if began is None else {"pattern_began": began}
        return replace(
            finding(client, ts=ts, model="m"),
            kind=Kind.SUSPICIOUS_CLIENT,
            detector="query_patterns",
            details=details,
        )

    apply(
        database,
        [flag("bot", 1000.0, 962.0), flag("late", 1000.0, 1200.0), flag("old", 900.0, None)],
    )
    assert Repository(database).flagged_clients() == {
        "m": {"bot": 962.0, "late": 1000.0, "old": 900.0}
    }
