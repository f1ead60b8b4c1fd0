"""The closed vocabularies stored in text columns, as enums (one definition each).

They are `StrEnum`s: a member equals its text, so what is stored, served and compared is the
same string as before; `EnumText` columns hand members back on read. The columns stay plain
VARCHARs (no database enum type, no migration).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class IncidentStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


# Unresolved: at most one per (model, kind, subject) (the unique index uq_incidents_open_key).
OPEN_STATUSES = (IncidentStatus.OPEN, IncidentStatus.ACKNOWLEDGED)


class NotificationState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    SILENCED = "silenced"


class NotificationAction(StrEnum):
    """PagerDuty's actions; Slack and webhooks say the same."""

    TRIGGER = "trigger"
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"


class NotificationReason(StrEnum):
    OPENED = "opened"
    ESCALATED = "escalated"
    REPEAT = "repeat"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    TEST = "test"


class NoteAction(StrEnum):
    """What an incident note records: words someone wrote, or a status change."""

    NOTE = "note"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    REOPENED = "reopened"


E = TypeVar("E", bound=StrEnum)


class EnumText(TypeDecorator[E]):
    """A VARCHAR holding an enum's values: members in, members out (a value the enum does not
    know, written by a newer version, is read back as plain text rather than refused)."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[E], length: int) -> None:
        super().__init__(length)
        self.enum = enum
        self.length = length

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        try:
            return self.enum(value)
        except ValueError:
            return value
