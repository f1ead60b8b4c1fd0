"""The repository: every read and write of Bulwark's tables goes through here.

`Repository` answers queries (CLI, API); `Writer` is one transaction of the pipeline, in
which a batch's incidents, evidence, dead letters, checkpoints and positions land together.
Writes are idempotent: evidence and dead letters carry a key derived from the source position
that produced them, so processing a record twice stores it once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import (
    OPEN_STATUSES,
    Checkpoint,
    DeadLetterRow,
    Evidence,
    Incident,
    SourcePosition,
    utcnow,
)

PAYLOAD_LIMIT = 4096


def stable_key(*parts: object) -> str:
    """A fixed-length idempotency key for the given parts."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class IncidentFilter:
    model: str | None = None
    kind: str | None = None
    subject: str | None = None
    status: str | None = None
    severity: str | None = None
    since: float | None = None  # last_seen >= since (event time)
    until: float | None = None  # first_seen <= until (event time)


@dataclass(frozen=True, slots=True)
class DeadLetterInput:
    source: str
    partition: int
    offset: int
    reason: str
    payload: bytes
    received_at: float


class Repository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def list_incidents(
        self,
        where: IncidentFilter = IncidentFilter(),
        limit: int | None = None,
        after: tuple[float, int] | None = None,
    ) -> list[Incident]:
        """Newest (latest evidence) first; `after` is the (last_seen, id) of the previous page's
        last item, for cursor pagination."""
        query = _filtered(select(Incident), where)
        if after is not None:
            last_seen, incident_id = after
            query = query.where(
                or_(
                    Incident.last_seen < last_seen,
                    and_(Incident.last_seen == last_seen, Incident.id < incident_id),
                )
            )
        query = query.order_by(Incident.last_seen.desc(), Incident.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self.db.session() as session:
            return list(session.scalars(query))

    def count_incidents(self, where: IncidentFilter = IncidentFilter()) -> int:
        query = _filtered(select(func.count(Incident.id)), where)
        with self.db.session() as session:
            return int(session.scalar(query) or 0)

    def get_incident(self, incident_id: int) -> Incident | None:
        with self.db.session() as session:
            return session.get(Incident, incident_id)

    def evidence_of(self, incident_id: int) -> list[Evidence]:
        query = select(Evidence).where(Evidence.incident_id == incident_id).order_by(Evidence.ts)
        with self.db.session() as session:
            return list(session.scalars(query))

    def list_dead_letters(self, limit: int = 100) -> list[DeadLetterRow]:
        query = select(DeadLetterRow).order_by(DeadLetterRow.id.desc()).limit(limit)
        with self.db.session() as session:
            return list(session.scalars(query))

    def count_dead_letters(self) -> int:
        with self.db.session() as session:
            return int(session.scalar(select(func.count(DeadLetterRow.id))) or 0)

    def load_checkpoints(self, consumer: str, source: str, partition: int) -> dict[str, Checkpoint]:
        query = select(Checkpoint).where(
            Checkpoint.consumer == consumer,
            Checkpoint.source == source,
            Checkpoint.partition == partition,
        )
        with self.db.session() as session:
            return {row.model: row for row in session.scalars(query)}

    def load_position(self, consumer: str, source: str, partition: int) -> int | None:
        with self.db.session() as session:
            row = session.get(SourcePosition, (consumer, source, partition))
            return None if row is None else row.next_offset

    def set_status(self, incident_id: int, status: str) -> Incident | None:
        with self.db.session() as session:
            incident = session.get(Incident, incident_id)
            if incident is None:
                return None
            incident.status = status
            incident.resolved_at = utcnow() if status == "resolved" else None
            return incident


class Writer:
    """One pipeline transaction; see `Database.session` for commit/rollback."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def open_incident(self, model: str, kind: str, subject: str) -> Incident | None:
        query = select(Incident).where(
            Incident.model == model,
            Incident.kind == kind,
            Incident.subject == subject,
            Incident.status.in_(OPEN_STATUSES),
        )
        return self.session.scalars(query).first()

    def create_incident(self, **fields: Any) -> Incident | None:
        """Inserts an incident; None if another process opened one for the key meanwhile."""
        incident = Incident(**fields)
        try:
            with self.session.begin_nested():
                self.session.add(incident)
        except IntegrityError:
            return None
        return incident

    def latest_resolved(self, model: str, kind: str, subject: str) -> Incident | None:
        query = (
            select(Incident)
            .where(
                Incident.model == model,
                Incident.kind == kind,
                Incident.subject == subject,
                Incident.status == "resolved",
            )
            .order_by(Incident.id.desc())
        )
        return self.session.scalars(query).first()

    def has_evidence(self, key: str) -> bool:
        return self.session.scalar(select(Evidence.id).where(Evidence.key == key)) is not None

    def add_evidence(self, evidence: Evidence) -> bool:
        """Records the evidence unless its key is already stored; True if it was new."""
        if self.has_evidence(evidence.key):
            return False
        try:
            with self.session.begin_nested():
                self.session.add(evidence)
        except IntegrityError:
            return False
        return True

    def add_dead_letters(self, letters: Sequence[DeadLetterInput]) -> None:
        if not letters:
            return
        rows = [
            {
                "key": stable_key(
                    d.source, d.partition, d.offset, hashlib.sha256(d.payload).hexdigest()
                ),
                "received_at": d.received_at,
                "source": d.source,
                "partition": d.partition,
                "offset": d.offset,
                "reason": d.reason[:2000],
                "payload": d.payload[:PAYLOAD_LIMIT].decode("utf-8", errors="replace"),
            }
            for d in letters
        ]
        self._insert_ignoring_duplicates(DeadLetterRow, rows, "key")

    def save_checkpoints(
        self,
        consumer: str,
        source: str,
        partition: int,
        next_offset: int,
        states: dict[str, bytes],
    ) -> None:
        for model, state in states.items():
            self.session.merge(
                Checkpoint(
                    consumer=consumer,
                    source=source,
                    partition=partition,
                    model=model,
                    next_offset=next_offset,
                    state=state,
                )
            )

    def save_position(self, consumer: str, source: str, partition: int, next_offset: int) -> None:
        """The next offset to read; written in the same transaction as the checkpoints."""
        self.session.merge(
            SourcePosition(
                consumer=consumer, source=source, partition=partition, next_offset=next_offset
            )
        )

    def delete_checkpoints(self, consumer: str, source: str) -> None:
        self.session.execute(
            delete(Checkpoint).where(Checkpoint.consumer == consumer, Checkpoint.source == source)
        )

    def _insert_ignoring_duplicates(
        self, model: type, rows: Iterable[dict[str, Any]], key: str
    ) -> None:
        rows = list(rows)
        for start in range(0, len(rows), 500):  # stay under the drivers' parameter limits
            self._insert_chunk(model, rows[start : start + 500], key)

    def _insert_chunk(self, model: type, rows: list[dict[str, Any]], key: str) -> None:
        dialect = self.session.get_bind().dialect.name
        table = model.__table__  # type: ignore[attr-defined]
        if dialect == "postgresql":
            stmt = (
                postgresql.insert(table).values(rows).on_conflict_do_nothing(index_elements=[key])
            )
            self.session.execute(stmt)
        elif dialect == "sqlite":
            stmt = sqlite.insert(table).values(rows).on_conflict_do_nothing(index_elements=[key])
            self.session.execute(stmt)
        else:
            existing = set(
                self.session.scalars(
                    select(getattr(model, key)).where(
                        getattr(model, key).in_([r[key] for r in rows])
                    )
                )
            )
            self.session.add_all(model(**r) for r in rows if r[key] not in existing)


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _filtered(query: Select[Any], where: IncidentFilter) -> Select[Any]:
    for column, value in (
        (Incident.model, where.model),
        (Incident.kind, where.kind),
        (Incident.subject, where.subject),
        (Incident.status, where.status),
        (Incident.severity, where.severity),
    ):
        if value is not None:
            query = query.where(column == value)
    if where.since is not None:
        query = query.where(Incident.last_seen >= where.since)
    if where.until is not None:
        query = query.where(Incident.first_seen <= where.until)
    return query
