"""The repository: every read and write of Bulwark's tables goes through here.

`Repository` answers queries (CLI, API); `Writer` is one transaction of the pipeline, in
which a batch's incidents, evidence, dead letters, checkpoints and positions land together.
Writes are idempotent: evidence and dead letters carry a key derived from the source position
that produced them, so processing a record twice stores it once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, and_, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, undefer

from storage.db import Database
from storage.models import (
    OPEN_STATUSES,
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

if TYPE_CHECKING:
    from detectors.base import MetricPoint

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
    roots_only: bool = False  # only incidents not attributed to another (parent_id null)


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


class Repository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Reference data ----------------------------------------------------------------------

    def add_reference(self, ref: ReferenceInput) -> Reference:
        with self.db.session() as session:
            row = Reference(**asdict(ref))
            session.add(row)
            session.flush()
            return row

    def add_learned_reference(self, ref: ReferenceInput) -> Reference:
        """Stores a reference learned from the stream unless the model got one meanwhile (from
        a file, or learned by another process); returns the one in force either way."""
        with self.db.session() as session:
            existing = session.scalars(
                _newest_reference(ref.model, ref.model_version).options(undefer(Reference.sample))
            ).first()
            if existing is not None:
                return existing
            row = Reference(**asdict(ref))
            session.add(row)
            session.flush()
            return row

    def find_reference(self, model: str, model_version: str | None = None) -> Reference | None:
        """The newest reference for this model version, else the model's newest, with sample."""
        with self.db.session() as session:
            query = _newest_reference(model, model_version).options(undefer(Reference.sample))
            return session.scalars(query).first()

    def list_references(self, model: str | None = None) -> list[Reference]:
        query = select(Reference).order_by(Reference.model, Reference.id.desc())
        if model is not None:
            query = query.where(Reference.model == model)
        with self.db.session() as session:
            return list(session.scalars(query))

    # Recent samples and reports ----------------------------------------------------------

    def recent_samples(self, model: str) -> list[RecentSample]:
        query = select(RecentSample).where(RecentSample.model == model)
        with self.db.session() as session:
            return list(session.scalars(query))

    def load_recent_samples(self, source: str, partition: int) -> dict[str, RecentSample]:
        """The recent samples of one partition, per model (for a restored partition)."""
        query = select(RecentSample).where(
            RecentSample.source == source, RecentSample.partition == partition
        )
        with self.db.session() as session:
            return {row.model: row for row in session.scalars(query)}

    def models_with_recent_samples(self) -> list[str]:
        query = select(RecentSample.model).distinct().order_by(RecentSample.model)
        with self.db.session() as session:
            return list(session.scalars(query))

    def add_report(
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
        with self.db.session() as session:
            report = Report(
                model=model,
                window_start=start,
                window_end=end,
                reference_id=reference_id,
                summary=summary,
                html_path=html_path,
            )
            session.add(report)
            session.flush()
            incident_ids = list(
                session.scalars(
                    select(Evidence.incident_id)
                    .join(Incident, Incident.id == Evidence.incident_id)
                    .where(Incident.model == model, Evidence.ts >= start, Evidence.ts <= end)
                    .distinct()
                    .order_by(Evidence.incident_id)
                )
            )
            session.add_all(
                IncidentReport(incident_id=i, report_id=report.id) for i in incident_ids
            )
            return report, incident_ids

    def get_report(self, report_id: int) -> Report | None:
        with self.db.session() as session:
            return session.get(Report, report_id)

    def latest_event_time(self) -> float | None:
        """The latest event time the database knows of: of the events counted per model, else
        of the latest evidence (what relative `--since 7d` counts back from)."""
        with self.db.session() as session:
            latest = session.scalar(select(func.max(ModelStats.last_event_ts)))
            if latest is None:
                latest = session.scalar(select(func.max(Incident.last_seen)))
            return None if latest is None else float(latest)

    def list_reports(self, model: str | None = None, limit: int = 100) -> list[Report]:
        query = select(Report).order_by(Report.id.desc()).limit(limit)
        if model is not None:
            query = query.where(Report.model == model)
        with self.db.session() as session:
            return list(session.scalars(query))

    def reports_of_incident(self, incident_id: int) -> list[Report]:
        query = (
            select(Report)
            .join(IncidentReport, IncidentReport.report_id == Report.id)
            .where(IncidentReport.incident_id == incident_id)
            .order_by(Report.id)
        )
        with self.db.session() as session:
            return list(session.scalars(query))

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

    def performance_history(
        self,
        model: str,
        model_version: str | None = None,
        metric: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[dict[str, Any]]:
        """A model's metric values per window, oldest first, partitions combined.

        Rows of one window from several partitions are combined weighted by `n`: exact for
        the mean-type metrics (accuracy, MAE, bias, log-loss, Brier, coverage, delay), and
        for RMSE through its mean square; an approximation for precision, recall and F1.
        Confidence intervals are only shown when one partition holds the whole window.
        """
        query = select(PerformanceRow).where(PerformanceRow.model == model)
        if model_version is not None:
            query = query.where(PerformanceRow.model_version == model_version)
        if metric is not None:
            query = query.where(PerformanceRow.metric == metric)
        if since is not None:
            query = query.where(PerformanceRow.window_end >= since)
        if until is not None:
            query = query.where(PerformanceRow.window_start <= until)
        with self.db.session() as session:
            rows = list(session.scalars(query))
        groups: dict[tuple[str, float, float, str, bool], list[PerformanceRow]] = {}
        for row in rows:
            key = (row.model_version, row.window_start, row.window_end, row.metric, row.estimated)
            groups.setdefault(key, []).append(row)
        out = []
        for (version, start, end, name, estimated), parts in groups.items():
            n = sum(r.n for r in parts)
            if len(parts) == 1:
                value, low, high = parts[0].value, parts[0].ci_low, parts[0].ci_high
            else:
                weights = n or 1
                if name == "rmse":
                    value = (sum(r.n * r.value**2 for r in parts) / weights) ** 0.5
                else:
                    value = sum(r.n * r.value for r in parts) / weights
                low = high = None
            out.append(
                {
                    "model": model,
                    "model_version": version,
                    "window_start": start,
                    "window_end": end,
                    "metric": name,
                    "estimated": estimated,
                    "value": value,
                    "ci_low": low,
                    "ci_high": high,
                    "n": n,
                }
            )
        out.sort(key=lambda r: (r["window_start"], r["model_version"], r["estimated"], r["metric"]))
        return out

    def notes_of(self, incident_id: int) -> list[IncidentNote]:
        query = (
            select(IncidentNote)
            .where(IncidentNote.incident_id == incident_id)
            .order_by(IncidentNote.id)
        )
        with self.db.session() as session:
            return list(session.scalars(query))

    def list_dead_letters_page(
        self, limit: int, before_id: int | None = None, source: str | None = None
    ) -> list[DeadLetterRow]:
        """Newest first; `before_id` is the last id of the previous page."""
        query = select(DeadLetterRow)
        if before_id is not None:
            query = query.where(DeadLetterRow.id < before_id)
        if source is not None:
            query = query.where(DeadLetterRow.source == source)
        query = query.order_by(DeadLetterRow.id.desc()).limit(limit)
        with self.db.session() as session:
            return list(session.scalars(query))

    def model_stats(self) -> list[ModelStats]:
        with self.db.session() as session:
            return list(session.scalars(select(ModelStats).order_by(ModelStats.model)))

    def open_incident_counts(self) -> list[tuple[str, str, str, int]]:
        """(model, kind, severity, count) of unresolved incidents."""
        query = (
            select(Incident.model, Incident.kind, Incident.severity, func.count(Incident.id))
            .where(Incident.status.in_(OPEN_STATUSES))
            .group_by(Incident.model, Incident.kind, Incident.severity)
        )
        with self.db.session() as session:
            return [(m, k, s, int(n)) for m, k, s, n in session.execute(query)]

    def flagged_clients(self) -> dict[str, dict[str, float]]:
        """See `Writer.flagged_clients`."""
        with self.db.session() as session:
            return _flagged_clients(session)

    def ping(self) -> None:
        """Raises if the database cannot answer a trivial query."""
        with self.db.engine.connect() as conn:
            conn.execute(select(1))

    def prune(
        self,
        evidence_before: float | None,
        dead_letters_before: float | None,
        reports_before: float | None = None,
    ) -> tuple[dict[str, int], list[str]]:
        """Deletes evidence of resolved incidents recorded before `evidence_before`, dead
        letters received before `dead_letters_before` and reports created before
        `reports_before` (epoch seconds, wall clock; None keeps). Evidence of open or
        acknowledged incidents is never touched. Returns the counts and the HTML paths of the
        deleted reports, for the caller to remove from disk."""
        deleted: dict[str, int] = {"evidence": 0, "dead_letters": 0, "reports": 0}
        html_paths: list[str] = []
        with self.db.session() as session:
            if evidence_before is not None:
                resolved = select(Incident.id).where(Incident.status == "resolved")
                result = session.execute(
                    delete(Evidence).where(
                        Evidence.created_at < datetime.fromtimestamp(evidence_before, UTC),
                        Evidence.incident_id.in_(resolved),
                    )
                )
                deleted["evidence"] = int(result.rowcount or 0)
            if dead_letters_before is not None:
                result = session.execute(
                    delete(DeadLetterRow).where(DeadLetterRow.received_at < dead_letters_before)
                )
                deleted["dead_letters"] = int(result.rowcount or 0)
            if reports_before is not None:
                old = Report.created_at < datetime.fromtimestamp(reports_before, UTC)
                html_paths = [p for p in session.scalars(select(Report.html_path).where(old)) if p]
                result = session.execute(delete(Report).where(old))
                deleted["reports"] = int(result.rowcount or 0)
        return deleted, html_paths


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


class Writer:
    """One pipeline transaction; see `Database.session` for commit/rollback."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def incident_for_update(self, incident_id: int) -> Incident | None:
        """The incident, row-locked on PostgreSQL so two status changes cannot interleave."""
        query = select(Incident).where(Incident.id == incident_id).with_for_update()
        return self.session.scalars(query).first()

    def add_note(self, incident_id: int, author: str, text: str, action: str) -> IncidentNote:
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

    def model_event_time(self, model: str) -> float | None:
        return self.session.scalar(
            select(ModelStats.last_event_ts).where(ModelStats.model == model)
        )

    def bump_model_stats(
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
        return _flagged_clients(self.session)

    def unresolved_incidents(self, model: str) -> list[Incident]:
        """The model's open and acknowledged incidents, oldest first (for agent.causes)."""
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

    def save_checkpoints(
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

    def save_performance(self, points: Sequence[MetricPoint]) -> None:
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


def _newest_reference(model: str, model_version: str | None) -> Select[Any]:
    """Newest first, a row of the given version ahead of every other version's rows."""
    query = select(Reference).where(Reference.model == model)
    if model_version:
        exact = (Reference.model_version == model_version).desc()
        return query.order_by(exact, Reference.id.desc())
    return query.order_by(Reference.id.desc())


def _flagged_clients(session: Session) -> dict[str, dict[str, float]]:
    query = select(Incident.model, Incident.subject, Incident.first_seen).where(
        Incident.kind == "suspicious_client", Incident.status.in_(OPEN_STATUSES)
    )
    flagged: dict[str, dict[str, float]] = {}
    for model, subject, first_seen in session.execute(query):
        flagged.setdefault(model, {})[subject] = float(first_seen)
    return flagged


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
    if where.roots_only:
        query = query.where(Incident.parent_id.is_(None))
    return query
