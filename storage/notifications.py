"""Reads and writes of the alert outbox and of silences (the storage side of agent.alerts).

Every method works inside the caller's session, so outbox rows land in the same transaction
as the incident change that causes them, and a dispatcher's claim is one short transaction.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from storage.enums import (
    IncidentStatus,
    NotificationAction,
    NotificationReason,
    NotificationState,
)
from storage.models import Incident, Notification, Silence


@dataclass(frozen=True, slots=True)
class Pending:
    """A notification to queue: what the outbox row says, before it is a row."""

    channel: str
    action: NotificationAction
    reason: NotificationReason
    incident_id: int | None
    group_key: str
    dedup_key: str | None
    content: dict[str, Any]
    created_at: float  # wall clock
    next_attempt_at: float


class OutboxStore:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, pending: Sequence[Pending]) -> list[Notification]:
        """Queues the notifications (state pending, no attempt yet); returns their rows."""
        rows = [
            Notification(
                **{f.name: getattr(p, f.name) for f in fields(Pending)},
                state=NotificationState.PENDING,
                attempts=0,
            )
            for p in pending
        ]
        self.session.add_all(rows)
        self.session.flush()
        return rows

    def notified_channels(self, incident_id: int) -> set[str]:
        """Channels that were told about the incident (so a resolve goes only to them)."""
        query = select(Notification.channel).where(
            Notification.incident_id == incident_id,
            Notification.action == NotificationAction.TRIGGER,
        )
        return set(self.session.scalars(query))

    def pending_triggers(self, incident_id: int) -> list[Notification]:
        """The incident's triggers not sent yet (still waiting out group_wait, or retrying)."""
        query = select(Notification).where(
            Notification.incident_id == incident_id,
            Notification.action == NotificationAction.TRIGGER,
            Notification.state == NotificationState.PENDING,
        )
        return list(self.session.scalars(query))

    def claimable(self, now: float, limit: int = 1000) -> list[Notification]:
        """Pending rows not claimed by a live dispatcher, oldest first."""
        query = (
            select(Notification)
            .where(
                Notification.state == NotificationState.PENDING,
                (Notification.claimed_until.is_(None)) | (Notification.claimed_until < now),
            )
            .order_by(Notification.id)
            .limit(limit)
        )
        return list(self.session.scalars(query))

    def claim(self, ids: Sequence[int], now: float, until: float) -> bool:
        """Marks rows as being sent until `until`; False if another dispatcher got one first."""
        result = self.session.execute(
            update(Notification)
            .where(
                Notification.id.in_(ids),
                Notification.state == NotificationState.PENDING,
                (Notification.claimed_until.is_(None)) | (Notification.claimed_until < now),
            )
            .values(claimed_until=until)
            .execution_options(synchronize_session=False)
        )
        # An UPDATE's result is a CursorResult; Session.execute is typed as returning Result.
        return cast(CursorResult[Any], result).rowcount == len(ids)

    def get_many(self, ids: Sequence[int]) -> list[Notification]:
        query = select(Notification).where(Notification.id.in_(ids)).order_by(Notification.id)
        return list(self.session.scalars(query))

    def incidents(self, ids: set[int]) -> dict[int, Incident]:
        if not ids:
            return {}
        return {i.id: i for i in self.session.scalars(select(Incident).where(Incident.id.in_(ids)))}

    def repeat_due(self, before: float) -> list[tuple[Incident, str, Notification]]:
        """(open incident, channel, its latest trigger) where that trigger was settled before
        `before` and nothing is pending for the pair: candidates for a repeat notification."""
        latest = (
            select(func.max(Notification.id).label("id"))
            .where(
                Notification.action == NotificationAction.TRIGGER,
                Notification.incident_id.is_not(None),
            )
            .group_by(Notification.incident_id, Notification.channel)
            .subquery()
        )
        query = (
            select(Incident, Notification)
            .join(Notification, Notification.incident_id == Incident.id)
            .join(latest, latest.c.id == Notification.id)
            .where(
                Incident.status == IncidentStatus.OPEN,
                Notification.state.in_(
                    (
                        NotificationState.DELIVERED,
                        NotificationState.FAILED,
                        NotificationState.SILENCED,
                    )
                ),
                Notification.created_at < before,
            )
        )
        pending = {
            (row.incident_id, row.channel)
            for row in self.session.execute(
                select(Notification.incident_id, Notification.channel).where(
                    Notification.state == NotificationState.PENDING,
                    Notification.incident_id.is_not(None),
                )
            )
        }
        return [
            (incident, row.channel, row)
            for incident, row in self.session.execute(query)
            if (incident.id, row.channel) not in pending
        ]

    def list(
        self, limit: int = 100, state: NotificationState | None = None, after_id: int | None = None
    ) -> list[Notification]:
        """Newest first."""
        query = select(Notification).order_by(Notification.id.desc()).limit(limit)
        if state is not None:
            query = query.where(Notification.state == state)
        if after_id is not None:
            query = query.where(Notification.id > after_id)
        return list(self.session.scalars(query))

    def max_id(self) -> int:
        return int(self.session.scalar(select(func.max(Notification.id))) or 0)

    def count_states(self, after_id: int = 0) -> dict[str, int]:
        query = (
            select(Notification.state, func.count(Notification.id))
            .where(Notification.id > after_id)
            .group_by(Notification.state)
        )
        return {state: int(n) for state, n in self.session.execute(query)}

    # Silences

    def add_silence(
        self,
        *,
        reason: str,
        starts_at: float,
        ends_at: float,
        model: str | None = None,
        kind: str | None = None,
        subject: str | None = None,
        created_by: str | None = None,
    ) -> Silence:
        """Holds back the matching notifications (None matches anything) until `ends_at`."""
        silence = Silence(
            model=model,
            kind=kind,
            subject=subject,
            reason=reason,
            created_by=created_by,
            starts_at=starts_at,
            ends_at=ends_at,
        )
        self.session.add(silence)
        self.session.flush()
        return silence

    # builtins.list: below `def list` the bare name is that method to a type checker.
    def active_silences(self, now: float) -> builtins.list[Silence]:
        query = select(Silence).where(Silence.starts_at <= now, Silence.ends_at > now)
        return list(self.session.scalars(query))

    def list_silences(self, now: float, include_expired: bool = False) -> builtins.list[Silence]:
        query = select(Silence).order_by(Silence.id.desc())
        if not include_expired:
            query = query.where(Silence.ends_at > now)
        return list(self.session.scalars(query))

    def expire_silence(self, silence_id: int, now: float) -> Silence | None:
        silence = self.session.get(Silence, silence_id)
        if silence is not None and silence.ends_at > now:
            silence.ends_at = now
        return silence
