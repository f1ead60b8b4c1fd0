"""Incident lifecycle: acknowledge, resolve, reopen, notes and auto-resolve.

The one place where an incident's status changes after it was opened (opening and updating
from evidence is agent/incidents/manager.py). Each change runs in one unit of work that also
records a note saying who changed what, and calls `on_status_change` — the hook for anything
that must happen atomically with the change (e.g. queueing notifications in the outbox).

A root incident's related incidents (agent/incidents/causes.py) follow it: acknowledging,
resolving or reopening a root applies the same change, in the same transaction, to each of its
related incidents the change is allowed from (a note on each names the root; a related
incident is not reopened while a newer incident of its key is open). Auto-resolve judges
every incident on its own evidence and does not cascade.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from agent.alerts.outbox import enqueue_status_change
from agent.config import AlertSettings
from storage.db import Database
from storage.enums import OPEN_STATUSES, IncidentStatus, NoteAction
from storage.models import Incident, IncidentNote, utcnow
from storage.unit_of_work import UnitOfWork, run

log = logging.getLogger(__name__)

AUTO_RESOLVER = "bulwark"
NOTE_LIMIT = 10_000


class LifecycleError(ValueError):
    """A change that is not possible; the message says why."""


class NotFound(LifecycleError):
    """No incident with that id."""


class Conflict(LifecycleError):
    """The change does not apply to the incident's current status."""


@dataclass(frozen=True, slots=True)
class Transition:
    action: NoteAction  # the verb recorded in the note
    to: IncidentStatus  # the status after the change
    allowed_from: tuple[IncidentStatus, ...]


ACKNOWLEDGE = Transition(
    NoteAction.ACKNOWLEDGED, IncidentStatus.ACKNOWLEDGED, (IncidentStatus.OPEN,)
)
RESOLVE = Transition(NoteAction.RESOLVED, IncidentStatus.RESOLVED, OPEN_STATUSES)
REOPEN = Transition(
    NoteAction.REOPENED,
    IncidentStatus.OPEN,
    (IncidentStatus.RESOLVED, IncidentStatus.ACKNOWLEDGED),
)
TRANSITIONS = {"acknowledge": ACKNOWLEDGE, "resolve": RESOLVE, "reopen": REOPEN}
BY_STATUS = {t.to: t for t in (ACKNOWLEDGE, RESOLVE, REOPEN)}


def on_status_change(
    uow: UnitOfWork,
    alerts: AlertSettings,
    incident: Incident,
    previous: IncidentStatus,
    now: float | None,
) -> None:
    """Called inside the transaction of every status change, after it is applied: whatever
    must commit or roll back with the change (the outbox rows of its notifications)."""
    enqueue_status_change(uow, alerts, incident, previous, incident.status, now)


def change_status(
    db: Database,
    alerts: AlertSettings,
    incident_id: int,
    transition: Transition,
    author: str,
    text: str = "",
    now: float | None = None,
) -> Incident:
    """Applies one transition in one transaction; raises NotFound or Conflict. `now` (wall
    clock, default the current time) stamps the notifications it queues."""

    def work(uow: UnitOfWork) -> Incident:
        incident = uow.incidents.incident_for_update(incident_id)
        if incident is None:
            raise NotFound(f"no incident with id {incident_id}")
        _apply(uow, alerts, incident, transition, author, text, now)
        if incident.parent_id is None:
            _cascade(uow, alerts, incident, transition, author, text, now)
        return incident

    try:
        return run(db, work)
    except IntegrityError:
        # Reopening while a newer incident of the same key is open: the unique index refuses.
        raise Conflict(
            f"incident {incident_id} cannot be reopened: a newer incident for the same "
            "model, kind and subject is open"
        ) from None


def set_status(
    db: Database,
    alerts: AlertSettings,
    incident_id: int,
    status: IncidentStatus | str,
    author: str = "cli",
    now: float | None = None,
) -> Incident:
    """`change_status` by target status: "acknowledged", "resolved" or "open" (reopen)."""
    if status not in BY_STATUS:
        raise LifecycleError(f"status must be one of {', '.join(BY_STATUS)}, not {status!r}")
    transition = BY_STATUS[IncidentStatus(status)]
    return change_status(db, alerts, incident_id, transition, author, now=now)


def _apply(
    uow: UnitOfWork,
    alerts: AlertSettings,
    incident: Incident,
    transition: Transition,
    author: str,
    text: str,
    now: float | None,
) -> IncidentNote:
    previous = incident.status
    if previous not in transition.allowed_from:
        raise Conflict(
            f"incident {incident.id} is {previous}; it can be {transition.action} only when "
            f"{' or '.join(transition.allowed_from)}"
        )
    incident.status = transition.to
    incident.resolved_at = utcnow() if transition.to == IncidentStatus.RESOLVED else None
    uow.flush()  # let the unique index of open incidents speak now
    note = uow.incidents.add_note(
        incident.id, author, _note_text(text) or transition.action, transition.action
    )
    on_status_change(uow, alerts, incident, previous, now)
    return note


def _cascade(
    uow: UnitOfWork,
    alerts: AlertSettings,
    root: Incident,
    transition: Transition,
    author: str,
    text: str,
    now: float | None,
) -> None:
    """Applies a root's change to its related incidents where it is allowed."""
    for related_id in [r.id for r in root.related]:
        related = uow.incidents.incident_for_update(related_id)
        if related is None or related.status not in transition.allowed_from:
            continue
        if (
            transition.to == IncidentStatus.OPEN
            and related.status == IncidentStatus.RESOLVED
            and uow.incidents.open_incident(related.model, related.kind, related.subject)
            is not None
        ):
            continue  # a newer incident of its key is open: this one stays resolved
        said = f"{transition.action} with its root #{root.id}"
        words = _note_text(text)
        note = f"{said}: {words}" if words else said
        _apply(uow, alerts, related, transition, author, note, now)


def add_note(db: Database, incident_id: int, author: str, text: str) -> IncidentNote:
    text = _note_text(text)
    if not text:
        raise LifecycleError("a note needs some text")

    def work(uow: UnitOfWork) -> IncidentNote:
        if uow.incidents.incident_for_update(incident_id) is None:
            raise NotFound(f"no incident with id {incident_id}")
        return uow.incidents.add_note(incident_id, author, text, NoteAction.NOTE)

    return run(db, work)


def auto_resolve(
    db: Database, alerts: AlertSettings, quiet_for: float, wall_now: float | None = None
) -> list[int]:
    """Resolves every unresolved incident whose model has run `quiet_for` seconds of event
    time past the incident's latest evidence. A model no event was counted for falls back to
    the wall clock. Returns the ids resolved. `quiet_for` 0 disables."""
    if quiet_for <= 0:
        return []
    wall_now = time.time() if wall_now is None else wall_now

    def work(uow: UnitOfWork) -> list[int]:
        resolved = []
        for incident in uow.incidents.quiet_incidents(wall_now, quiet_for):
            now = uow.model_stats.event_time(incident.model)
            clock = "event time" if now is not None else "wall-clock time"
            quiet = (now if now is not None else wall_now) - incident.last_seen
            text = (
                f"auto-resolved: no new evidence for {_duration(quiet)} of {clock} "
                f"(auto_resolve_after is {_duration(quiet_for)})"
            )
            _apply(uow, alerts, incident, RESOLVE, AUTO_RESOLVER, text, None)
            resolved.append(incident.id)
        return resolved

    resolved = run(db, work)
    if resolved:
        log.info("auto-resolved %d incident(s): %s", len(resolved), resolved)
    return resolved


def _note_text(text: str) -> str:
    return text.strip()[:NOTE_LIMIT]


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
