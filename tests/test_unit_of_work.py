"""The unit of work: what one change writes commits or rolls back as one, and the enum
columns read back as members that serialise to the same text as before."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import text

from agent.alerts.outbox import enqueue_changes
from agent.config import AlertSettings
from agent.incidents import lifecycle
from agent.incidents.manager import IncidentManager
from storage.contract import incident_json
from storage.db import Database
from storage.enums import IncidentStatus, NoteAction, NotificationAction, NotificationState
from storage.models import Incident, IncidentNote, Notification
from storage.queries import Repository
from storage.unit_of_work import UnitOfWork, run, transaction
from tests.alerts_helpers import finding

ALERTS = AlertSettings.model_validate(
    {
        "channels": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/h", "secret": "s"}},
        "group_wait": 0,
    }
)


class Boom(RuntimeError):
    pass


def record(uow: UnitOfWork) -> list[int]:
    changes = IncidentManager().apply(uow, [finding(subject="amount")])
    enqueue_changes(uow, ALERTS, changes, now=1.0)
    return [c.incident.id for c in changes]


def test_an_incident_and_its_notifications_roll_back_together(database: Database) -> None:
    def fails(uow: UnitOfWork) -> None:
        record(uow)
        uow.flush()
        raise Boom

    with pytest.raises(Boom):
        run(database, fails)
    with database.session() as session:
        assert session.query(Incident).count() == 0
        assert session.query(Notification).count() == 0
    (opened,) = run(database, record)
    with transaction(database) as uow:
        (row,) = uow.outbox.list()
        assert row.incident_id == opened
        assert (row.action, row.state) == (NotificationAction.TRIGGER, NotificationState.PENDING)


def test_sqlite_transactions_that_read_then_write_neither_fail_nor_lose_updates(
    sqlite_url: str,
) -> None:
    """Threads sharing one SQLite file, each reading a counter and writing it back plus one:
    pysqlite's own transaction control lost updates (its SELECT ran outside the
    transaction), and a deferred BEGIN failed as "database is locked"."""
    database = Database(sqlite_url)
    with database.session() as session:
        session.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        session.execute(text("INSERT INTO counter VALUES (0)"))
    errors: list[BaseException] = []

    def increment(times: int) -> None:
        for _ in range(times):
            try:
                with database.session() as session:
                    n = session.execute(text("SELECT n FROM counter")).scalar_one()
                    session.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
            except Exception as exc:  # counted: the assertion shows them
                errors.append(exc)

    threads = [threading.Thread(target=increment, args=(100,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with database.session() as session:
        assert (session.execute(text("SELECT n FROM counter")).scalar_one(), errors) == (400, [])
    database.dispose()


def test_a_sqlite_read_neither_waits_for_nor_blocks_the_writer(sqlite_url: str) -> None:
    """While a writer holds SQLite's write lock, a read-only session reads the last committed
    snapshot at once, and the writer commits while that read is still open."""
    database = Database(sqlite_url)
    with database.session() as session:
        session.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        session.execute(text("INSERT INTO counter VALUES (0)"))
    with database.session() as writer:
        writer.execute(text("UPDATE counter SET n = 1"))
        reader_saw: list[int] = []

        def read() -> None:
            with database.reading() as reader:
                reader_saw.append(reader.execute(text("SELECT n FROM counter")).scalar_one())

        thread = threading.Thread(target=read)
        thread.start()
        thread.join(timeout=10)  # a reader taking the write lock would wait the 30 s timeout
        assert (thread.is_alive(), reader_saw) == (False, [0])
    with database.reading() as reader:
        reader.execute(text("SELECT n FROM counter")).scalar_one()
        with database.session() as writer:
            writer.execute(text("UPDATE counter SET n = 2"))
    with database.reading() as reader:
        assert reader.execute(text("SELECT n FROM counter")).scalar_one() == 2
    database.dispose()


def test_statuses_read_back_as_members_and_serialise_as_before(database: Database) -> None:
    (opened,) = run(database, record)
    lifecycle.set_status(database, ALERTS, opened, "acknowledged", author="ops", now=2.0)
    incident = Repository(database).get_incident(opened)
    assert incident is not None and incident.status is IncidentStatus.ACKNOWLEDGED
    assert json.loads(json.dumps(incident_json(incident)))["status"] == "acknowledged"
    with database.session() as session:
        stored = session.execute(text("SELECT status FROM incidents")).scalar_one()
        actions = [n.action for n in session.query(IncidentNote).order_by(IncidentNote.id)]
        states = {n.action: n.state for n in session.query(Notification)}
    assert stored == "acknowledged" and type(stored) is str  # the column holds the text
    assert actions == [NoteAction.ACKNOWLEDGED]
    assert states == {"trigger": "pending", "acknowledge": "pending"}


def test_a_value_no_member_names_reads_back_as_text(database: Database) -> None:
    """A value written by a newer version is shown, not refused."""
    (opened,) = run(database, record)
    with database.session() as session:
        session.execute(text("UPDATE notifications SET reason = 'snoozed'"))
    with transaction(database) as uow:
        (row,) = uow.outbox.list()
    assert row.reason == "snoozed" and row.incident_id == opened
