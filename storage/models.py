"""SQLAlchemy 2.0 models: incidents, their evidence, dead letters, checkpoints, positions.

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

OPEN_STATUSES = ("open", "acknowledged")


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
    status: Mapped[str] = mapped_column(String(20), default="open")
    title: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[float] = mapped_column(Double)  # event time of the first evidence
    last_seen: Mapped[float] = mapped_column(Double)  # event time of the latest evidence
    count: Mapped[int] = mapped_column(Integer, default=1)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    previous_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    evidence: Mapped[list[Evidence]] = relationship(
        back_populates="incident", order_by="Evidence.ts", lazy="raise"
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
    )

    def to_contract(self) -> dict[str, Any]:
        """The incident JSON of the contract (section 3)."""
        return {
            "id": self.id,
            "model": self.model,
            "kind": self.kind,
            "subject": self.subject,
            "severity": self.severity,
            "status": self.status,
            "title": self.title,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "count": self.count,
            "details": self.details or {},
        }


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

    def to_contract(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "detector": self.detector,
            "statistic": self.statistic,
            "value": self.value,
            "threshold": self.threshold,
            "effect_size": self.effect_size,
            "support": self.support,
            "severity": self.severity,
            "title": self.title,
            "position": {"source": self.source, "partition": self.partition, "offset": self.offset},
            "details": self.details or {},
        }


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

    def to_contract(self) -> dict[str, Any]:
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
