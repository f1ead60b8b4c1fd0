"""The unit of work: one transaction, and the stores that write Bulwark's tables inside it.

SQLAlchemy 2.0 style: the caller owns the session for the length of one transaction
(`transaction`, or `run` which also retries while the database is unreachable), and every
store of a `UnitOfWork` works inside that one session, so whatever a change writes (an
incident, its evidence and note, the notifications it causes, checkpoints and positions)
commits or rolls back together. Agent code does not open sessions nor build rows itself.
Writes are idempotent: evidence and dead letters carry a key derived from the source position
that produced them, so processing a record twice stores it once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import CursorResult, Result, case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, undefer

from storage.db import Database
from storage.enums import OPEN_STATUSES, IncidentStatus, NoteAction
from storage.models import (
    Checkpoint,
    DeadLetterRow,
    Evidence,
    Incident,
    IncidentNote,
    IncidentReport,
    ModelStats,
    PerformanceRow,
    RecentSample,
    Reference,
    Report,
    SourcePosition,
    utcnow,
)
from storage.notifications import OutboxStore
from storage.queries import flagged_clients_in, newest_reference_query

if TYPE_CHECKING:
    from detectors.base import MetricPoint

T = TypeVar("T")
PAYLOAD_LIMIT = 4096


def stable_key(*parts: object) -> str:
    """A fixed-length idempotency key for the given parts."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class DeadLetterInput:
    source: str
    partition: int
    offset: int
    reason: str
    payload: bytes
    received_at: float


@dataclass(frozen=True, slots=True)
class ReferenceInput:
    model: str
    model_version: str  # "" for any version
    origin: str
    rows: int
    source_rows: int
    summary: dict[str, Any]
    sample: bytes
    learned_until: dict[str, int] | None = None  # see Reference.learned_until


def storable_text(text: str) -> str:
    """Text every backend stores: NUL (which PostgreSQL refuses) and lone surrogates (which
    no UTF-8 encoder takes) become U+FFFD, as invalid UTF-8 bytes of a payload already do."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    return text


class Store:
    """A store works inside the session of its unit of work, never its own."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _conflict_insert(self) -> Any:
        """The dialect's INSERT with ON CONFLICT (PostgreSQL, SQLite), or None elsewhere."""
        dialect = self.session.get_bind().dialect.name
        return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)

    def _upsert(
        self,
        model: type,
        rows: list[dict[str, Any]],
        keys: tuple[str, ...],
        changing: tuple[str, ...],
    ) -> bool:
        """INSERT ... ON CONFLICT (keys) DO UPDATE, in chunks, where the dialect has it
        (PostgreSQL, SQLite): one statement, and the old row (a checkpoint's state blob, say)
        is never read back. Returns False elsewhere: the caller reads, then writes."""
        insert = self._conflict_insert()
        if insert is None:
            return False
        table = model.__table__  # type: ignore[attr-defined]
        for start in range(0, len(rows), 500):  # stay under the drivers' parameter limits
            stmt = insert(table).values(rows[start : start + 500])
            stmt = stmt.on_conflict_do_update(
                index_elements=list(keys), set_={c: stmt.excluded[c] for c in changing}
            )
            self.session.execute(stmt)
        return True

    def _insert_ignoring_duplicates(
        self, model: type, rows: Iterable[dict[str, Any]], key: str
    ) -> None:
        rows = list(rows)
        for start in range(0, len(rows), 500):  # stay under the drivers' parameter limits
            self._insert_chunk(model, rows[start : start + 500], key)

    def _insert_chunk(self, model: type, rows: list[dict[str, Any]], key: str) -> None:
        insert = self._conflict_insert()
        if insert is not None:
            table = model.__table__  # type: ignore[attr-defined]
            stmt = insert(table).values(rows).on_conflict_do_nothing(index_elements=[key])
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


class IncidentStore(Store):
    """Incidents, their evidence and their notes."""

    def incident_for_update(self, incident_id: int) -> Incident | None:
        """The incident, row-locked on PostgreSQL so two status changes cannot interleave."""
        query = select(Incident).where(Incident.id == incident_id).with_for_update()
        return self.session.scalars(query).first()

    def add_note(
        self, incident_id: int, author: str, text: str, action: NoteAction
    ) -> IncidentNote:
        note = IncidentNote(incident_id=incident_id, author=author, text=text, action=action)
        self.session.add(note)
        self.session.flush()
        return note

    def quiet_incidents(self, default_now: float, quiet_for: float) -> list[Incident]:
        """Unresolved incidents without evidence for `quiet_for` seconds of their model's event
        time (the latest event seen of the model), or of `default_now` for a model never seen."""
        now = func.coalesce(ModelStats.last_event_ts, default_now)
        query = (
            select(Incident)
            .outerjoin(ModelStats, ModelStats.model == Incident.model)
            .where(Incident.status.in_(OPEN_STATUSES), Incident.last_seen <= now - quiet_for)
            .order_by(Incident.id)
            .with_for_update(of=Incident)
        )
        return list(self.session.scalars(query))

    def open_incident(self, model: str, kind: str, subject: str) -> Incident | None:
        query = select(Incident).where(
            Incident.model == model,
            Incident.kind == kind,
            Incident.subject == subject,
            Incident.status.in_(OPEN_STATUSES),
        )
        return self.session.scalars(query).first()

    def flagged_clients(self) -> dict[str, dict[str, float]]:
        """Per model, the subjects of its unresolved `suspicious_client` incidents -> the event
        time of their first evidence (the pipeline keeps their later predictions out of the
        population-level detectors)."""
        return flagged_clients_in(self.session)

    def unresolved_incidents(self, model: str) -> list[Incident]:
        """The model's open and acknowledged incidents, oldest first (agent.incidents.causes)."""
        query = (
            select(Incident)
            .where(Incident.model == model, Incident.status.in_(OPEN_STATUSES))
            .order_by(Incident.id)
        )
        return list(self.session.scalars(query))

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
                Incident.status == IncidentStatus.RESOLVED,
            )
            .order_by(Incident.id.desc())
        )
        return self.session.scalars(query).first()

    def has_evidence(self, key: str) -> bool:
        return self.session.scalar(select(Evidence.id).where(Evidence.key == key)) is not None

    def add_evidence(self, key: str, incident_id: int, **fields: Any) -> bool:
        """Records evidence (the `Evidence` columns) on the incident unless its key is already
        stored; True if it was new."""
        if self.has_evidence(key):
            return False
        evidence = Evidence(key=key, incident_id=incident_id, **fields)
        try:
            with self.session.begin_nested():
                self.session.add(evidence)
        except IntegrityError:
            return False
        return True

    def prune_evidence(self, before: float) -> int:
        """Deletes the evidence of resolved incidents recorded before `before` (epoch seconds,
        wall clock); evidence of open or acknowledged incidents is never touched."""
        resolved = select(Incident.id).where(Incident.status == IncidentStatus.RESOLVED)
        return _deleted(
            self.session.execute(
                delete(Evidence).where(
                    Evidence.created_at < datetime.fromtimestamp(before, UTC),
                    Evidence.incident_id.in_(resolved),
                )
            )
        )


class ModelStatsStore(Store):
    """Running totals per model (counts and the latest event time)."""

    def event_time(self, model: str) -> float | None:
        return self.session.scalar(
            select(ModelStats.last_event_ts).where(ModelStats.model == model)
        )

    def bump(
        self,
        model: str,
        predictions: int,
        labels: int,
        dead_letters: int,
        last_event_ts: float | None,
    ) -> None:
        """Adds a batch's counts to the model's running totals (atomic increments, so several
        processes can share a model)."""
        self._insert_ignoring_duplicates(
            ModelStats,
            [
                {
                    "model": model,
                    "predictions": 0,
                    "labels": 0,
                    "dead_letters": 0,
                    "last_event_ts": None,
                    "updated_at": utcnow(),
                }
            ],
            "model",
        )
        values: dict[str, Any] = {
            "predictions": ModelStats.predictions + predictions,
            "labels": ModelStats.labels + labels,
            "dead_letters": ModelStats.dead_letters + dead_letters,
            "updated_at": utcnow(),
        }
        if last_event_ts is not None:
            values["last_event_ts"] = case(
                (ModelStats.last_event_ts.is_(None), last_event_ts),
                (ModelStats.last_event_ts < last_event_ts, last_event_ts),
                else_=ModelStats.last_event_ts,
            )
        self.session.execute(update(ModelStats).where(ModelStats.model == model).values(values))


class DeadLetterStore(Store):
    def add(self, letters: Sequence[DeadLetterInput]) -> None:
        if not letters:
            return
        rows = [
            {
                "key": stable_key(
                    storable_text(d.source),
                    d.partition,
                    d.offset,
                    hashlib.sha256(d.payload).hexdigest(),
                ),
                "received_at": d.received_at,
                "source": storable_text(d.source[:500]),
                "partition": d.partition,
                "offset": d.offset,
                "reason": storable_text(d.reason[:2000]),
                "payload": storable_text(d.payload[:PAYLOAD_LIMIT].decode("utf-8", "replace")),
            }
            for d in letters
        ]
        self._insert_ignoring_duplicates(DeadLetterRow, rows, "key")

    def prune(self, before: float) -> int:
        """Deletes the dead letters received before `before` (epoch seconds, wall clock)."""
        query = delete(DeadLetterRow).where(DeadLetterRow.received_at < before)
        return _deleted(self.session.execute(query))


class CheckpointStore(Store):
    """Detector checkpoints, source positions and recent samples: written together."""

    def save(
        self,
        consumer: str,
        source: str,
        partition: int,
        next_offset: int,
        states: dict[str, bytes],
    ) -> None:
        rows = [
            {
                "consumer": consumer,
                "source": source,
                "partition": partition,
                "model": model,
                "next_offset": next_offset,
                "state": state,
                "updated_at": utcnow(),
            }
            for model, state in states.items()
        ]
        keys = ("consumer", "source", "partition", "model")
        if not self._upsert(Checkpoint, rows, keys, ("next_offset", "state", "updated_at")):
            for row in rows:
                self.session.merge(Checkpoint(**row))

    def save_position(self, consumer: str, source: str, partition: int, next_offset: int) -> None:
        """The next offset to read; written in the same transaction as the checkpoints."""
        self.session.merge(
            SourcePosition(
                consumer=consumer, source=source, partition=partition, next_offset=next_offset
            )
        )

    def save_recent_sample(
        self,
        model: str,
        source: str,
        partition: int,
        rows: int,
        window: tuple[float, float],
        sample: bytes,
    ) -> None:
        self.session.merge(
            RecentSample(
                model=model,
                source=source,
                partition=partition,
                rows=rows,
                start_ts=window[0],
                end_ts=window[1],
                sample=sample,
            )
        )

    def delete(self, consumer: str, source: str) -> None:
        self.session.execute(
            delete(Checkpoint).where(Checkpoint.consumer == consumer, Checkpoint.source == source)
        )


class PerformanceStore(Store):
    def save(self, points: Sequence[MetricPoint]) -> None:
        """Upserts metric points: one row per (model, version, partition, window, metric)."""
        if not points:
            return
        rows = [
            {
                "key": stable_key(*p.row),
                "model": p.model,
                "model_version": p.model_version,
                "source": p.source,
                "partition": p.partition,
                "window_start": p.window_start,
                "window_end": p.window_end,
                "metric": p.metric,
                "estimated": p.estimated,
                "value": p.value,
                "ci_low": p.ci_low,
                "ci_high": p.ci_high,
                "n": p.n,
                "updated_at": utcnow(),
            }
            for p in points
        ]
        # The latest point of a key wins, also within one call.
        latest = list({r["key"]: r for r in rows}.values())
        changing = ("window_end", "value", "ci_low", "ci_high", "n", "updated_at")
        if self._upsert(PerformanceRow, latest, ("key",), changing):
            return
        for row in latest:
            existing = self.session.scalars(
                select(PerformanceRow).where(PerformanceRow.key == row["key"])
            ).first()
            if existing is None:
                self.session.add(PerformanceRow(**row))
            else:
                for column in changing:
                    setattr(existing, column, row[column])


class ReferenceStore(Store):
    def add(self, ref: ReferenceInput) -> Reference:
        row = Reference(**asdict(ref))
        self.session.add(row)
        self.session.flush()
        return row

    def add_learned(self, ref: ReferenceInput) -> Reference:
        """Stores a reference learned from the stream unless the model got one meanwhile (from
        a file, or learned by another process); returns the one in force either way."""
        existing = self.find(ref.model, ref.model_version)
        return existing if existing is not None else self.add(ref)

    def find(self, model: str, model_version: str | None = None) -> Reference | None:
        """The newest reference for this model version, else the model's newest, with sample."""
        query = newest_reference_query(model, model_version).options(undefer(Reference.sample))
        return self.session.scalars(query).first()


class ReportStore(Store):
    """Evidently reports and their links to incidents."""

    def add(
        self,
        model: str,
        window: tuple[float, float],
        reference_id: int | None,
        summary: dict[str, Any],
        html_path: str | None,
    ) -> tuple[Report, list[int]]:
        """Stores a report and links it to the model's incidents that have evidence inside the
        window; returns the report and the linked incident ids."""
        start, end = window
        report = Report(
            model=model,
            window_start=start,
            window_end=end,
            reference_id=reference_id,
            summary=summary,
            html_path=html_path,
        )
        self.session.add(report)
        self.session.flush()
        incident_ids = list(
            self.session.scalars(
                select(Evidence.incident_id)
                .join(Incident, Incident.id == Evidence.incident_id)
                .where(Incident.model == model, Evidence.ts >= start, Evidence.ts <= end)
                .distinct()
                .order_by(Evidence.incident_id)
            )
        )
        self.session.add_all(
            IncidentReport(incident_id=i, report_id=report.id) for i in incident_ids
        )
        return report, incident_ids

    def prune(self, before: float) -> tuple[int, list[str]]:
        """Deletes the reports created before `before` (epoch seconds, wall clock); returns how
        many, and their HTML paths for the caller to remove from disk."""
        old = Report.created_at < datetime.fromtimestamp(before, UTC)
        html_paths = [p for p in self.session.scalars(select(Report.html_path).where(old)) if p]
        return _deleted(self.session.execute(delete(Report).where(old))), html_paths


class UnitOfWork:
    """The stores of one transaction, all over the caller's session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.incidents = IncidentStore(session)
        self.outbox = OutboxStore(session)
        self.checkpoints = CheckpointStore(session)
        self.references = ReferenceStore(session)
        self.performance = PerformanceStore(session)
        self.model_stats = ModelStatsStore(session)
        self.dead_letters = DeadLetterStore(session)
        self.reports = ReportStore(session)

    def flush(self) -> None:
        self.session.flush()


@contextmanager
def transaction(db: Database) -> Iterator[UnitOfWork]:
    """One unit of work: commits on success, rolls back on error."""
    with db.session() as session:
        yield UnitOfWork(session)


def _deleted(result: Result[Any]) -> int:
    """Rows a DELETE removed: its result is a CursorResult, though Session.execute is typed as
    returning Result."""
    return int(cast(CursorResult[Any], result).rowcount or 0)


def run(db: Database, work: Callable[[UnitOfWork], T], attempts: int | None = None) -> T:
    """`work` in one transaction, the whole transaction retried while the database is
    unreachable (see `Database.retrying`)."""

    def attempt() -> T:
        with transaction(db) as uow:
            return work(uow)

    return db.retrying(attempt, attempts)
