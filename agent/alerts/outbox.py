"""The durable outbox: turning incident changes into notification rows.

Every function here takes the session of the transaction that changes the incident, so the
notification commits (or rolls back) with the change: a crash can delay a notification but
never lose it, and never send one for a change that did not happen.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from agent.alerts.routing import channels_for
from agent.alerts.wording import headline
from agent.causes import Link
from agent.config import AlertSettings
from agent.incidents import Change, IncidentChange
from storage.models import Incident, Notification
from storage.notifications import SILENCED, OutboxStore
from storage.repository import stable_key

# Incident changes that notify: an update of an open incident waits for the repeat interval.
_CHANGE_REASONS = {Change.OPENED: "opened", Change.ESCALATED: "escalated"}
MAX_RELATED = 50  # related incidents a notification lists (the newest); the rest by id


def dedup_key(incident: Incident) -> str:
    """PagerDuty's dedup_key: fixed per incident, so retries and restarts never page twice."""
    return (
        f"bulwark-{incident.id}-{stable_key(incident.model, incident.kind, incident.subject)[:16]}"
    )


def enqueue_changes(
    session: Session,
    alerts: AlertSettings,
    changes: Sequence[IncidentChange],
    now: float | None = None,
    links: Sequence[Link] = (),
) -> list[Notification]:
    """Outbox rows for a batch's incident changes: one trigger per routed channel for each
    root incident opened or escalated (an incident opened and escalated in one batch notifies
    once, as of the end of the batch). An incident attributed to a root (`links`, or earlier)
    never notifies on its own: its triggers still waiting are held back, and it is listed on
    its root's notifications, including those of the root still waiting."""
    now = time.time() if now is None else now
    store = OutboxStore(session)
    for link in links:
        for row in store.pending_triggers(link.child.id):
            row.state, row.settled_at = SILENCED, now
            row.last_error = f"related to incident #{link.root.id}: {link.rule}"
    reasons: dict[int, tuple[Incident, str]] = {}
    for change in changes:
        reason = _CHANGE_REASONS.get(change.change)
        if reason is None or change.incident.parent_id is not None:
            continue
        known = reasons.get(change.incident.id)
        if known is None or known[1] != "opened":
            reasons[change.incident.id] = (change.incident, reason)
    rows = [
        _row(incident, channel, "trigger", reason, now, now + alerts.group_wait)
        for incident, reason in reasons.values()
        for channel in channels_for(alerts, incident.model, incident.kind, incident.severity)
    ]
    store.add(rows)
    for root in {link.root.id: link.root for link in links}.values():
        for row in store.pending_triggers(root.id):
            row.content = notification_content(root)
    return rows


def enqueue_status_change(
    session: Session,
    alerts: AlertSettings,
    incident: Incident,
    old_status: str,
    new_status: str,
    now: float | None = None,
) -> list[Notification]:
    """Outbox rows for an acknowledge, resolve or reopen. Call it inside the transaction that
    changes the status. Acknowledge and resolve go only to channels that were told about the
    incident (a backfilled incident, never notified, resolves silently)."""
    if old_status == new_status:
        return []
    now = time.time() if now is None else now
    if new_status == "open":
        action, reason = "trigger", "reopened"
        channels = channels_for(alerts, incident.model, incident.kind, incident.severity)
        if incident.parent_id is not None:
            channels = []  # listed on its root's notifications, never paging on its own
    elif new_status in ("acknowledged", "resolved"):
        action = "acknowledge" if new_status == "acknowledged" else "resolve"
        reason = new_status
        notified = OutboxStore(session).notified_channels(incident.id)
        channels = sorted(c for c in notified if c in alerts.channels)
    else:
        raise ValueError(f"unknown incident status {new_status!r}")
    rows = [_row(incident, c, action, reason, now, now) for c in channels]
    OutboxStore(session).add(rows)
    return rows


def enqueue_repeats(session: Session, alerts: AlertSettings, now: float | None = None) -> int:
    """A repeat trigger for each open (not acknowledged) incident whose latest notification on
    a still-configured channel is older than the repeat interval."""
    now = time.time() if now is None else now
    store = OutboxStore(session)
    rows = [
        _row(incident, channel, "trigger", "repeat", now, now)
        for incident, channel, _last in store.repeat_due(now - alerts.repeat_interval)
        if channel in alerts.channels and incident.parent_id is None
    ]
    store.add(rows)
    return len(rows)


def enqueue_test(
    session: Session, channel: str, resolve: bool = False, now: float | None = None
) -> list[Notification]:
    """A test trigger; with `resolve` (PagerDuty) a resolve follows, so the test alert does
    not stay open on the receiver's side."""
    now = time.time() if now is None else now
    actions = ["trigger", "resolve"] if resolve else ["trigger"]
    rows = [
        Notification(
            channel=channel,
            action=action,
            reason="test",
            incident_id=None,
            group_key="test",
            dedup_key=f"bulwark-test-{int(now * 1000)}",
            content={"title": "Bulwark test notification", "severity": "info"},
            state="pending",
            attempts=0,
            created_at=now,
            next_attempt_at=now,
        )
        for action in actions
    ]
    OutboxStore(session).add(rows)
    return rows


def notification_content(incident: Incident) -> dict[str, Any]:
    """What a notification carries: the incident JSON of the contract and, for a root, a
    short line per related incident (what channels list under it)."""
    content = incident.to_contract()
    if incident.parent_id is None and incident.related:
        content["related"] = [
            {
                "id": r.id,
                "kind": r.kind,
                "subject": r.subject,
                "severity": r.severity,
                "status": r.status,
                "title": r.title,
                "headline": headline(r.to_contract()),
            }
            for r in incident.related[-MAX_RELATED:]
        ]
    return content


def _row(
    incident: Incident, channel: str, action: str, reason: str, now: float, due: float
) -> Notification:
    return Notification(
        channel=channel,
        action=action,
        reason=reason,
        incident_id=incident.id,
        group_key=incident.model,
        dedup_key=dedup_key(incident),
        content=notification_content(incident),
        state="pending",
        attempts=0,
        created_at=now,
        next_attempt_at=due,
    )
