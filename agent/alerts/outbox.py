"""The durable outbox: turning incident changes into notification rows.

Every function here takes the unit of work of the transaction that changes the incident, so
the notification commits (or rolls back) with the change: a crash can delay a notification
but never lose it, and never send one for a change that did not happen.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from agent.alerts.routing import channels_for
from agent.alerts.wording import headline
from agent.config import AlertSettings
from agent.incidents.causes import Link
from agent.incidents.manager import Change, IncidentChange
from storage.contract import incident_json
from storage.enums import (
    IncidentStatus,
    NotificationAction,
    NotificationReason,
    NotificationState,
)
from storage.models import Incident, Notification
from storage.notifications import Pending
from storage.unit_of_work import UnitOfWork, stable_key

# Incident changes that notify: an update of an open incident waits for the repeat interval.
_CHANGE_REASONS = {
    Change.OPENED: NotificationReason.OPENED,
    Change.ESCALATED: NotificationReason.ESCALATED,
}
MAX_RELATED = 50  # related incidents a notification lists (the newest); the rest by id


def dedup_key(incident: Incident) -> str:
    """PagerDuty's dedup_key: fixed per incident, so retries and restarts never page twice."""
    return (
        f"bulwark-{incident.id}-{stable_key(incident.model, incident.kind, incident.subject)[:16]}"
    )


def enqueue_changes(
    uow: UnitOfWork,
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
    store = uow.outbox
    for link in links:
        for row in store.pending_triggers(link.child.id):
            row.state, row.settled_at = NotificationState.SILENCED, now
            row.last_error = f"related to incident #{link.root.id}: {link.rule}"
    reasons: dict[int, tuple[Incident, NotificationReason]] = {}
    for change in changes:
        reason = _CHANGE_REASONS.get(change.change)
        if reason is None or change.incident.parent_id is not None:
            continue
        known = reasons.get(change.incident.id)
        if known is None or known[1] != NotificationReason.OPENED:
            reasons[change.incident.id] = (change.incident, reason)
    rows = store.add(
        [
            _pending(incident, channel, NotificationAction.TRIGGER, reason, now, alerts.group_wait)
            for incident, reason in reasons.values()
            for channel in channels_for(alerts, incident.model, incident.kind, incident.severity)
        ]
    )
    for root in {link.root.id: link.root for link in links}.values():
        for row in store.pending_triggers(root.id):
            row.content = notification_content(root)
    return rows


def enqueue_status_change(
    uow: UnitOfWork,
    alerts: AlertSettings,
    incident: Incident,
    old_status: IncidentStatus,
    new_status: IncidentStatus,
    now: float | None = None,
) -> list[Notification]:
    """Outbox rows for an acknowledge, resolve or reopen. Call it inside the transaction that
    changes the status. Acknowledge and resolve go only to channels that were told about the
    incident (a backfilled incident, never notified, resolves silently)."""
    if old_status == new_status:
        return []
    now = time.time() if now is None else now
    if new_status == IncidentStatus.OPEN:
        action, reason = NotificationAction.TRIGGER, NotificationReason.REOPENED
        channels = channels_for(alerts, incident.model, incident.kind, incident.severity)
        if incident.parent_id is not None:
            channels = []  # listed on its root's notifications, never paging on its own
    elif new_status == IncidentStatus.ACKNOWLEDGED:
        action, reason = NotificationAction.ACKNOWLEDGE, NotificationReason.ACKNOWLEDGED
        channels = _notified(uow, alerts, incident)
    elif new_status == IncidentStatus.RESOLVED:
        action, reason = NotificationAction.RESOLVE, NotificationReason.RESOLVED
        channels = _notified(uow, alerts, incident)
    else:
        raise ValueError(f"unknown incident status {new_status!r}")
    return uow.outbox.add([_pending(incident, c, action, reason, now, 0.0) for c in channels])


def _notified(uow: UnitOfWork, alerts: AlertSettings, incident: Incident) -> list[str]:
    """The still-configured channels that were told about the incident (so a resolve goes
    only to them)."""
    notified = uow.outbox.notified_channels(incident.id)
    return sorted(c for c in notified if c in alerts.channels)


def enqueue_repeats(uow: UnitOfWork, alerts: AlertSettings, now: float | None = None) -> int:
    """A repeat trigger for each open (not acknowledged) incident whose latest notification on
    a still-configured channel is older than the repeat interval."""
    now = time.time() if now is None else now
    store = uow.outbox
    rows = store.add(
        [
            _pending(incident, channel, NotificationAction.TRIGGER, NotificationReason.REPEAT, now)
            for incident, channel, _last in store.repeat_due(now - alerts.repeat_interval)
            if channel in alerts.channels and incident.parent_id is None
        ]
    )
    return len(rows)


def enqueue_test(
    uow: UnitOfWork, channel: str, resolve: bool = False, now: float | None = None
) -> list[Notification]:
    """A test trigger; with `resolve` (PagerDuty) a resolve follows, so the test alert does
    not stay open on the receiver's side."""
    now = time.time() if now is None else now
    actions = [NotificationAction.TRIGGER]
    if resolve:
        actions.append(NotificationAction.RESOLVE)
    return uow.outbox.add(
        [
            Pending(
                channel=channel,
                action=action,
                reason=NotificationReason.TEST,
                incident_id=None,
                group_key="test",
                dedup_key=f"bulwark-test-{int(now * 1000)}",
                content={"title": "Bulwark test notification", "severity": "info"},
                created_at=now,
                next_attempt_at=now,
            )
            for action in actions
        ]
    )


def notification_content(incident: Incident) -> dict[str, Any]:
    """What a notification carries: the incident JSON of the contract and, for a root, a
    short line per related incident (what channels list under it)."""
    content: dict[str, Any] = dict(incident_json(incident))
    if incident.parent_id is None and incident.related:
        content["related"] = [
            {
                "id": r.id,
                "kind": r.kind,
                "subject": r.subject,
                "severity": r.severity,
                "status": r.status,
                "title": r.title,
                "headline": headline(dict(incident_json(r))),
            }
            for r in incident.related[-MAX_RELATED:]
        ]
    return content


def _pending(
    incident: Incident,
    channel: str,
    action: NotificationAction,
    reason: NotificationReason,
    now: float,
    wait: float = 0.0,
) -> Pending:
    """A notification of the incident to queue now, due `wait` seconds from now."""
    return Pending(
        channel=channel,
        action=action,
        reason=reason,
        incident_id=incident.id,
        group_key=incident.model,
        dedup_key=dedup_key(incident),
        content=notification_content(incident),
        created_at=now,
        next_attempt_at=now + wait,
    )
