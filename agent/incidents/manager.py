"""Findings -> incidents: one unresolved incident per (model, kind, subject).

The only place that decides whether a finding opens, updates or escalates an incident.
Each finding is recorded as evidence under a key derived from its source position, so a
finding seen again (replay, crash recovery, a second process) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agent.incidents.causes import kept_link_details
from detectors.base import Finding, Severity
from storage.enums import IncidentStatus, NoteAction
from storage.models import Incident, utcnow
from storage.unit_of_work import IncidentStore, UnitOfWork, stable_key


class Change(StrEnum):
    OPENED = "opened"
    UPDATED = "updated"
    ESCALATED = "escalated"
    RESOLVED = "resolved"  # by a finding that says the condition is over


# The author of the notes of incidents a detector resolves.
AUTHOR = "bulwark"


@dataclass(frozen=True, slots=True)
class IncidentChange:
    incident: Incident
    change: Change
    finding: Finding


def evidence_key(finding: Finding) -> str:
    p = finding.position
    return stable_key(
        finding.model,
        finding.kind,
        finding.subject,
        finding.detector,
        finding.statistic,
        p.source,
        p.partition,
        p.offset,
    )


def _measured(finding: Finding) -> dict[str, Any]:
    """What was measured: shown in an incident's details and stored with its evidence."""
    return {
        "detector": finding.detector,
        "statistic": finding.statistic,
        "value": finding.value,
        "threshold": finding.threshold,
        "effect_size": finding.effect_size,
        "support": finding.support,
    }


def finding_summary(finding: Finding) -> dict[str, Any]:
    """What an incident's `details` shows of its latest evidence."""
    return {**_measured(finding), **finding.details}


class IncidentManager:
    def apply(self, uow: UnitOfWork, findings: list[Finding]) -> list[IncidentChange]:
        """Records findings (in event-time order) inside the unit of work's transaction."""
        store = uow.incidents
        changes = []
        for finding in sorted(findings, key=lambda f: f.ts):
            key = evidence_key(finding)
            if store.has_evidence(key):
                continue
            if finding.resolves:
                incident = store.open_incident(finding.model, finding.kind, finding.subject)
                if incident is None:
                    continue  # nothing unresolved (someone resolved it): nothing to do
                self._update(incident, finding)
                if store.add_evidence(key, incident.id, **_evidence(finding)):
                    incident.status = IncidentStatus.RESOLVED
                    incident.resolved_at = utcnow()
                    uow.flush()
                    store.add_note(incident.id, AUTHOR, finding.title, NoteAction.RESOLVED)
                    changes.append(IncidentChange(incident, Change.RESOLVED, finding))
                continue
            incident, change = self._incident_for(store, finding)
            if store.add_evidence(key, incident.id, **_evidence(finding)):
                changes.append(IncidentChange(incident, change, finding))
        return changes

    def _incident_for(self, store: IncidentStore, finding: Finding) -> tuple[Incident, Change]:
        incident = store.open_incident(finding.model, finding.kind, finding.subject)
        if incident is None:
            previous = store.latest_resolved(finding.model, finding.kind, finding.subject)
            incident = store.create_incident(
                model=finding.model,
                kind=str(finding.kind),
                subject=finding.subject,
                severity=str(finding.severity),
                status=IncidentStatus.OPEN,
                title=finding.title,
                first_seen=finding.ts,
                last_seen=finding.ts,
                count=1,
                details=finding_summary(finding),
                previous_id=previous.id if previous else None,
            )
            if incident is not None:
                return incident, Change.OPENED
            # Another process opened it between our read and our insert: update theirs.
            incident = store.open_incident(finding.model, finding.kind, finding.subject)
            assert incident is not None
        return incident, self._update(incident, finding)

    @staticmethod
    def _update(incident: Incident, finding: Finding) -> Change:
        """Counts the finding in; `details` follow the latest evidence, the title only a
        finding that escalates (it names what the incident is about, and what was alerted:
        a drift opened as "mean shifted up" keeps that headline when a later finding of the
        same feature is about its spread)."""
        incident.count += 1
        incident.first_seen = min(incident.first_seen, finding.ts)
        incident.last_seen = max(incident.last_seen, finding.ts)
        # What links it to other incidents is not evidence: it stays (agent/incidents/causes.py).
        incident.details = {**finding_summary(finding), **kept_link_details(incident.details)}
        if finding.severity.rank > Severity(incident.severity).rank:
            incident.severity = str(finding.severity)
            incident.title = finding.title
            return Change.ESCALATED
        return Change.UPDATED


def _evidence(finding: Finding) -> dict[str, Any]:
    """The evidence columns of a finding."""
    return {
        **_measured(finding),
        "severity": str(finding.severity),
        "ts": finding.ts,
        "source": finding.position.source,
        "partition": finding.position.partition,
        "offset": finding.position.offset,
        "title": finding.title,
        "details": finding.details,
    }
