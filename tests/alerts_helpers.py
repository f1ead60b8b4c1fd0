"""Shared pieces of the alerting tests: a settable clock, findings, and recording them the
way the pipeline does (incident change and outbox rows in one transaction)."""

from __future__ import annotations

import time
from typing import Any

from agent.alerts.outbox import enqueue_changes
from agent.config import AlertSettings
from agent.incidents.manager import IncidentChange, IncidentManager
from detectors.base import Finding, Kind, Severity
from storage.db import Database
from storage.models import Notification
from storage.notifications import OutboxStore
from storage.unit_of_work import UnitOfWork
from streams.events import Position
from tests.receivers import Receiver


class Clock:
    """Wall clock for the dispatcher that tests move forward by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


_offset = iter(range(10**9))


def finding(
    model: str = "fraud",
    kind: str = "feature_drift",
    subject: str = "amount",
    severity: str = "warning",
    ts: float = 1767225600.0,
) -> Finding:
    return Finding(
        model=model,
        kind=Kind(kind),
        subject=subject,
        severity=Severity(severity),
        ts=ts,
        position=Position("test", 0, next(_offset)),
        detector="numeric_drift",
        statistic="cusum",
        value=7.25,
        threshold=5.0,
        effect_size=0.42,
        support=1500,
        title=f"{subject} drifted",
    )


def record(
    db: Database, alerts: AlertSettings, findings: list[Finding], now: float | None = None
) -> list[IncidentChange]:
    with db.session() as session:
        uow = UnitOfWork(session)
        changes = IncidentManager().apply(uow, findings)
        enqueue_changes(uow, alerts, changes, now)
        return changes


def alert_settings(receivers: dict[str, Receiver], **overrides: Any) -> AlertSettings:
    channels = {}
    for name, r in receivers.items():
        if r.kind == "pagerduty":
            channels[name] = {"type": "pagerduty", "url": r.url, "routing_key": r.routing_key}
        elif r.kind == "webhook":
            channels[name] = {"type": "webhook", "url": r.url, "secret": r.secret}
        else:
            channels[name] = {"type": "slack", "url": r.url}
    values: dict[str, Any] = {
        "channels": channels,
        "group_wait": 0,
        "backoff_initial": 1,
        "backoff_max": 8,
        "timeout": 2,
        "give_up_after": 3600,
        "incident_url": "https://bulwark.example/incidents/{id}",
        **overrides,
    }
    return AlertSettings.model_validate(values)


def outbox(db: Database) -> list[Notification]:
    with db.session() as session:
        return sorted(OutboxStore(session).list(limit=100_000), key=lambda n: n.id)
