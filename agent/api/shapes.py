"""Response and request shapes, for the OpenAPI spec: the handlers return plain dicts of these.

No `from __future__ import annotations` in this package: Litestar reads the handlers'
annotations at runtime to validate parameters and to write the OpenAPI spec.
"""

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from storage.contract import DeadLetterJSON as DeadLetterOut
from storage.contract import EvidenceJSON as EvidenceOut
from storage.contract import IncidentOut
from storage.contract import NoteJSON as NoteOut

# The contract's shapes, defined once in storage.
__all__ = ["DeadLetterOut", "EvidenceOut", "IncidentOut", "NoteOut"]

Status = Literal["open", "acknowledged", "resolved"]
SeverityName = Literal["info", "warning", "critical"]


class IncidentPage(TypedDict):
    items: list[IncidentOut]
    next_cursor: str | None


class IncidentDetail(IncidentOut):
    resolved_at: float | None
    evidence: list[EvidenceOut]
    notes: list[NoteOut]
    links: dict[str, Any]


class ModelSummary(TypedDict):
    model: str
    open_incidents: dict[str, int]
    last_event_ts: float | None
    events_seen: dict[str, int]
    dead_letters: int


class ModelList(TypedDict):
    items: list[ModelSummary]


class Role(TypedDict):
    role: str


class PerformancePoint(TypedDict):
    model: str
    model_version: str
    window_start: float
    window_end: float
    metric: str
    estimated: bool
    value: float
    ci_low: float | None
    ci_high: float | None
    n: int


class PerformancePage(TypedDict):
    items: list[PerformancePoint]


class DeadLetterPage(TypedDict):
    items: list[DeadLetterOut]
    next_cursor: str | None


@dataclass
class StatusChangeBody:
    """Optional body of acknowledge / resolve / reopen."""

    author: str | None = None  # who did it; default: the kind of token used
    note: str | None = None  # why; recorded as the note of the change


@dataclass
class NoteBody:
    text: str
    author: str | None = None
