"""Incident status changes (acknowledge, resolve, reopen) and the notifications they cause.

Minimal by design: one transaction that changes the status and writes the outbox rows, so a
resolve is never recorded without its notification, nor notified without being recorded.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from agent.alerts.outbox import enqueue_status_change
from agent.config import AlertSettings
from storage.db import Database
from storage.models import Incident
from storage.repository import Writer

STATUSES = ("open", "acknowledged", "resolved")


def set_status(
    db: Database, alerts: AlertSettings, incident_id: int, status: str, now: float | None = None
) -> Incident | None:
    """The incident after the change, or None if there is no such incident. `now` (wall
    clock, default the current time) stamps the notifications."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")

    def write() -> Incident | None:
        with db.session() as session:
            changed = Writer(session).set_status(incident_id, status)
            if changed is None:
                return None
            incident, old = changed
            enqueue_status_change(session, alerts, incident, old, status, now)
            return incident

    try:
        return db.retrying(write)
    except IntegrityError:
        raise ValueError(
            f"cannot reopen incident {incident_id}: another incident is open for its "
            "model, kind and subject"
        ) from None
