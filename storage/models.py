"""SQLAlchemy 2.0 models: incidents, evidence, dead letters, checkpoints, positions,
reference data, recent samples and Evidently reports.

Portable across SQLite and PostgreSQL: epoch seconds as doubles for event time, JSON for
details, and idempotency keys as fixed-length hashes rather than long composite indexes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from storage.contract import (
    DeadLetterJSON,
    EvidenceJSON,
    IncidentJSON,
    NoteJSON,
    evidence_json,
    incident_json,
    note_json,
)
from storage.enums import (
    EnumText,
    IncidentStatus,
    NoteAction,
    NotificationAction,
    NotificationReason,
    NotificationState,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Incident(Base):
    """One problem of one model: at most one unresolved incident per (model, kind, subject)."""

    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(50))
    subject: Mapped[str] = mapped_column(String(500))
    severity: Mapped[str] = mapped_column(String(20))
    status: Mapped[IncidentStatus] = mapped_column(
        EnumText(IncidentStatus, 20), default=IncidentStatus.OPEN
    )
    title: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[float] = mapped_column(Double)  # event time of the first evidence
    last_seen: Mapped[float] = mapped_column(Double)  # event time of the latest evidence
    count: Mapped[int] = mapped_column(Integer, default=1)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    previous_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"), nullable=True)
    # The root incident this one was attributed to (agent/incidents/causes.py); None for a root.
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("incidents.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    evidence: Mapped[list[Evidence]] = relationship(
        back_populates="incident", order_by="Evidence.ts", lazy="raise"
    )
    # The incidents attributed to this root: loaded with it (one IN query per listing), so
    # `to_contract` can name them wherever the incident is read.
    related: Mapped[list[Incident]] = relationship(
        foreign_keys=[parent_id], order_by="Incident.id", lazy="selectin", join_depth=1
    )

    __table_args__ = (
        # The database itself keeps one unresolved incident per key, even across processes.
        Index(
            "uq_incidents_open_key",
            "model",
            "kind",
            "subject",
            unique=True,
            sqlite_where=text("status IN ('open', 'acknowledged')"),
            postgresql_where=text("status IN ('open', 'acknowledged')"),
        ),
        Index("ix_incidents_model_last_seen", "model", "last_seen"),
        Index("ix_incidents_last_seen", "last_seen"),
        Index("ix_incidents_parent", "parent_id"),
    )

    def to_contract(self) -> IncidentJSON:
        """The incident JSON of the contract (section 3): see storage/contract.py."""
        return incident_json(self)


class Evidence(Base):
    """One finding recorded on an incident; `key` makes recording it twice a no-op."""

    __tablename__ = "evidence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    detector: Mapped[str] = mapped_column(String(100))
    statistic: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Double)
    threshold: Mapped[float] = mapped_column(Double)
    effect_size: Mapped[float | None] = mapped_column(Double, nullable=True)
    support: Mapped[int] = mapped_column(Integer)
    severity: Mapped[str] = mapped_column(String(20))
    ts: Mapped[float] = mapped_column(Double)
    source: Mapped[str] = mapped_column(String(500))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    title: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    incident: Mapped[Incident] = relationship(back_populates="evidence")

    __table_args__ = (Index("ix_evidence_incident_ts", "incident_id", "ts"),)

    def to_contract(self) -> EvidenceJSON:
        return evidence_json(self)


class DeadLetterRow(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    received_at: Mapped[float] = mapped_column(Double)
    source: Mapped[str] = mapped_column(String(500))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_dead_letters_received_at", "received_at"),)

    def to_contract(self) -> DeadLetterJSON:
        return {
            "id": self.id,
            "received_at": self.received_at,
            "source": self.source,
            "partition": self.partition,
            "offset": self.offset,
            "reason": self.reason,
            "payload": self.payload,
        }


class Checkpoint(Base):
    """Detector state of one model on one partition, as of `next_offset`."""

    __tablename__ = "checkpoints"

    consumer: Mapped[str] = mapped_column(String(200), primary_key=True)
    source: Mapped[str] = mapped_column(String(500), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class SourcePosition(Base):
    """The next offset to read per (consumer, source, partition), written with checkpoints."""

    __tablename__ = "source_positions"

    consumer: Mapped[str] = mapped_column(String(200), primary_key=True)
    source: Mapped[str] = mapped_column(String(500), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Reference(Base):
    """A model's reference data: a bounded sample of prediction events plus summary stats.

    Versioned per model version (`model_version` "" means: any version). Rows are never
    updated; the newest row per (model, model_version) is the one in force, so the history of
    references stays inspectable.
    """

    __tablename__ = "reference_data"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(200), default="")
    origin: Mapped[str] = mapped_column(Text)  # "learned" or "file:<path>"
    rows: Mapped[int] = mapped_column(Integer)
    source_rows: Mapped[int] = mapped_column(BigInteger)  # rows available before sampling
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sample: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)  # see agent.samples
    # Learned references: per "partition:source", the offset after the last event taken.
    learned_until: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_reference_data_model_version", "model", "model_version", "id"),)

    def to_contract(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "model_version": self.model_version or None,
            "origin": self.origin,
            "rows": self.rows,
            "source_rows": self.source_rows,
            "created_at": self.created_at.isoformat(),
            "summary": self.summary or {},
        }


class RecentSample(Base):
    """The most recent events of one model on one partition, written with checkpoints so that
    a report built in another process sees the live window."""

    __tablename__ = "recent_samples"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    source: Mapped[str] = mapped_column(String(500), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    rows: Mapped[int] = mapped_column(Integer)
    start_ts: Mapped[float] = mapped_column(Double)
    end_ts: Mapped[float] = mapped_column(Double)
    sample: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Report(Base):
    """An Evidently report of one model: reference vs a window (in event time)."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(200))
    window_start: Mapped[float] = mapped_column(Double)
    window_end: Mapped[float] = mapped_column(Double)
    reference_id: Mapped[int | None] = mapped_column(
        ForeignKey("reference_data.id", ondelete="SET NULL"), nullable=True
    )
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    html_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_reports_model_window_end", "model", "window_end"),)

    def to_contract(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "window": {"start": self.window_start, "end": self.window_end},
            "reference_id": self.reference_id,
            "html_path": self.html_path,
            "created_at": self.created_at.isoformat(),
            "summary": self.summary or {},
        }


class IncidentReport(Base):
    """Links an incident to the reports whose window holds some of its evidence."""

    __tablename__ = "incident_reports"

    incident_id: Mapped[int] = mapped_column(
        ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True
    )
    report_id: Mapped[int] = mapped_column(
        ForeignKey("reports.id", ondelete="CASCADE"), primary_key=True
    )

    __table_args__ = (Index("ix_incident_reports_report", "report_id"),)


class IncidentNote(Base):
    """A note on an incident: who wrote it and when (wall clock), including the automatic ones
    that record each status change, so the incident's history reads as an audit trail."""

    __tablename__ = "incident_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    author: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    # "note" (written by someone) or the status change it records: "acknowledged", ...
    action: Mapped[NoteAction] = mapped_column(EnumText(NoteAction, 20), default=NoteAction.NOTE)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_incident_notes_incident", "incident_id", "id"),)

    def to_contract(self) -> NoteJSON:
        return note_json(self)


class ModelStats(Base):
    """Running totals per model, updated in each batch's transaction: what the per-model
    summary and event-time auto-resolve need without scanning events."""

    __tablename__ = "model_stats"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    predictions: Mapped[int] = mapped_column(BigInteger, default=0)
    labels: Mapped[int] = mapped_column(BigInteger, default=0)
    dead_letters: Mapped[int] = mapped_column(BigInteger, default=0)
    last_event_ts: Mapped[float | None] = mapped_column(Double, nullable=True)  # event time
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class PerformanceRow(Base):
    """One metric of one model version over one event-time window, from one partition.

    Written again (same `key`) whenever late labels change the window, so the latest value
    wins; readers combine partitions (see `Repository.performance_history`).
    """

    __tablename__ = "performance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(200))  # "" when events carry none
    source: Mapped[str] = mapped_column(String(500))
    partition: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[float] = mapped_column(Double)  # event time
    window_end: Mapped[float] = mapped_column(Double)
    metric: Mapped[str] = mapped_column(String(50))
    estimated: Mapped[bool] = mapped_column(Boolean)
    value: Mapped[float] = mapped_column(Double)
    ci_low: Mapped[float | None] = mapped_column(Double, nullable=True)
    ci_high: Mapped[float | None] = mapped_column(Double, nullable=True)
    n: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    __table_args__ = (Index("ix_performance_model_window", "model", "window_start"),)


class Notification(Base):
    """The durable outbox: one notification for one channel, written in the transaction of the
    incident change that causes it. Holds the channel's *name*, never its URL or key."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(100))
    action: Mapped[NotificationAction] = mapped_column(EnumText(NotificationAction, 20))
    reason: Mapped[NotificationReason] = mapped_column(EnumText(NotificationReason, 20))
    incident_id: Mapped[int | None] = mapped_column(
        ForeignKey("incidents.id", ondelete="CASCADE"), nullable=True
    )
    group_key: Mapped[str] = mapped_column(String(200))  # the model: grouped per channel
    dedup_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    content: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # incident snapshot
    state: Mapped[NotificationState] = mapped_column(
        EnumText(NotificationState, 20), default=NotificationState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Wall-clock epoch seconds: alerting is about now, not event time.
    created_at: Mapped[float] = mapped_column(Double)
    next_attempt_at: Mapped[float] = mapped_column(Double)
    claimed_until: Mapped[float | None] = mapped_column(Double, nullable=True)
    settled_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index("ix_notifications_state_id", "state", "id"),
        Index("ix_notifications_incident_channel", "incident_id", "channel"),
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "channel": self.channel,
            "action": self.action,
            "reason": self.reason,
            "incident_id": self.incident_id,
            "group": self.group_key,
            "dedup_key": self.dedup_key,
            "state": self.state,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "next_attempt_at": self.next_attempt_at,
            "settled_at": self.settled_at,
            "last_error": self.last_error,
        }


class Silence(Base):
    """Holds back notifications of matching incidents (None matches anything) until ends_at."""

    __tablename__ = "silences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    kind: Mapped[str | None] = mapped_column(String(50), nullable=True)
    subject: Mapped[str | None] = mapped_column(String(500), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    starts_at: Mapped[float] = mapped_column(Double)
    ends_at: Mapped[float] = mapped_column(Double)

    __table_args__ = (Index("ix_silences_ends_at", "ends_at"),)

    def matches(self, model: str, kind: str, subject: str, now: float) -> bool:
        return (
            self.starts_at <= now < self.ends_at
            and self.model in (None, model)
            and self.kind in (None, kind)
            and self.subject in (None, subject)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "kind": self.kind,
            "subject": self.subject,
            "reason": self.reason,
            "created_by": self.created_by,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
        }
