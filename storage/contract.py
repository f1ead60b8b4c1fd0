"""The incident JSON of the contract (docs/contract.md section 3), defined once.

Storage's read model: the shapes (TypedDicts, which the API's OpenAPI spec is written from)
and the one function per shape that builds it from a row. The API, the CLI and the
notifications' content all go through these (the models' `to_contract()` call them).

No `from __future__ import annotations` here: the API framework reads these TypedDicts'
annotations at runtime.
"""

from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from storage.models import Evidence, Incident, IncidentNote


class Position(TypedDict):
    source: str
    partition: int
    offset: int


class IncidentJSON(TypedDict):
    """The contract's incident JSON (section 3)."""

    id: int
    model: str
    kind: str
    subject: str
    severity: str
    status: str
    title: str
    first_seen: float
    last_seen: float
    count: int
    details: dict[str, Any]
    parent_id: int | None  # the root incident it was attributed to; null for a root
    related: list[int]  # a root's attributed incidents (empty for the others)
    related_ids: list[int]  # the same list, under the name the API used first


class IncidentOut(IncidentJSON):
    """The incident JSON plus the incident it follows, if any (what the API serves)."""

    previous_id: int | None


class EvidenceJSON(TypedDict):
    id: int
    ts: float
    detector: str
    statistic: str
    value: float
    threshold: float
    effect_size: float | None
    support: int
    severity: str
    title: str
    position: Position
    details: dict[str, Any]


class DeadLetterJSON(TypedDict):
    id: int
    received_at: float
    source: str
    partition: int
    offset: int
    reason: str
    payload: str


class NoteJSON(TypedDict):
    id: int
    author: str
    text: str
    action: str
    created_at: float


def incident_json(incident: "Incident") -> IncidentJSON:
    """The incident JSON of the contract."""
    related = [r.id for r in incident.related] if incident.parent_id is None else []
    return {
        "id": incident.id,
        "model": incident.model,
        "kind": incident.kind,
        "subject": incident.subject,
        "severity": incident.severity,
        "status": incident.status,
        "title": incident.title,
        "first_seen": incident.first_seen,
        "last_seen": incident.last_seen,
        "count": incident.count,
        "details": incident.details or {},
        "parent_id": incident.parent_id,
        # `related` is the contract's name (shared/CONTRACT.md); `related_ids` the same list
        # under the name the API and page used first.
        "related": related,
        "related_ids": related,
    }


def incident_out(incident: "Incident") -> IncidentOut:
    """The incident JSON with the incident it follows (the API's incident)."""
    return {**incident_json(incident), "previous_id": incident.previous_id}


def evidence_json(evidence: "Evidence") -> EvidenceJSON:
    return {
        "id": evidence.id,
        "ts": evidence.ts,
        "detector": evidence.detector,
        "statistic": evidence.statistic,
        "value": evidence.value,
        "threshold": evidence.threshold,
        "effect_size": evidence.effect_size,
        "support": evidence.support,
        "severity": evidence.severity,
        "title": evidence.title,
        "position": {
            "source": evidence.source,
            "partition": evidence.partition,
            "offset": evidence.offset,
        },
        "details": evidence.details or {},
    }


def note_json(note: "IncidentNote") -> NoteJSON:
    return {
        "id": note.id,
        "author": note.author,
        "text": note.text,
        "action": note.action,
        "created_at": note.created_at.timestamp(),
    }
