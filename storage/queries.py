"""The read side: `Repository` answers the queries of the CLI, the API and reports, each in
a session of its own (a read needs no caller's transaction).

Every write goes through a unit of work (storage/unit_of_work.py); the two reference writes
here are one-store transactions kept for their callers' convenience.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.enums import OPEN_STATUSES
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
)

if TYPE_CHECKING:
    from storage.unit_of_work import ReferenceInput


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


class Repository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Reference data ----------------------------------------------------------------------

    def add_reference(self, ref: ReferenceInput) -> Reference:
        from storage.unit_of_work import transaction

        with transaction(self.db) as uow:
            return uow.references.add(ref)

    def add_learned_reference(self, ref: ReferenceInput) -> Reference:
        """See `ReferenceStore.add_learned`."""
        from storage.unit_of_work import transaction

        with transaction(self.db) as uow:
            return uow.references.add_learned(ref)

    def find_reference(self, model: str, model_version: str | None = None) -> Reference | None:
        """The newest reference for this model version, else the model's newest, with sample."""
        from storage.unit_of_work import ReferenceStore

        with self.db.reading() as session:
            return ReferenceStore(session).find(model, model_version)

    def list_references(self, model: str | None = None) -> list[Reference]:
        query = select(Reference).order_by(Reference.model, Reference.id.desc())
        if model is not None:
            query = query.where(Reference.model == model)
        with self.db.reading() as session:
            return list(session.scalars(query))

    # Recent samples and reports ----------------------------------------------------------

    def recent_samples(self, model: str) -> list[RecentSample]:
        query = select(RecentSample).where(RecentSample.model == model)
        with self.db.reading() as session:
            return list(session.scalars(query))

    def load_recent_samples(self, source: str, partition: int) -> dict[str, RecentSample]:
        """The recent samples of one partition, per model (for a restored partition)."""
        query = select(RecentSample).where(
            RecentSample.source == source, RecentSample.partition == partition
        )
        with self.db.reading() as session:
            return {row.model: row for row in session.scalars(query)}

    def models_with_recent_samples(self) -> list[str]:
        query = select(RecentSample.model).distinct().order_by(RecentSample.model)
        with self.db.reading() as session:
            return list(session.scalars(query))

    def get_report(self, report_id: int) -> Report | None:
        with self.db.reading() as session:
            return session.get(Report, report_id)

    def latest_event_time(self) -> float | None:
        """The latest event time the database knows of: of the events counted per model, else
        of the latest evidence (what relative `--since 7d` counts back from)."""
        with self.db.reading() as session:
            latest = session.scalar(select(func.max(ModelStats.last_event_ts)))
            if latest is None:
                latest = session.scalar(select(func.max(Incident.last_seen)))
            return None if latest is None else float(latest)

    def list_reports(self, model: str | None = None, limit: int = 100) -> list[Report]:
        query = select(Report).order_by(Report.id.desc()).limit(limit)
        if model is not None:
            query = query.where(Report.model == model)
        with self.db.reading() as session:
            return list(session.scalars(query))

    def reports_of_incident(self, incident_id: int) -> list[Report]:
        query = (
            select(Report)
            .join(IncidentReport, IncidentReport.report_id == Report.id)
            .where(IncidentReport.incident_id == incident_id)
            .order_by(Report.id)
        )
        with self.db.reading() as session:
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
        with self.db.reading() as session:
            return list(session.scalars(query))

    def count_incidents(self, where: IncidentFilter = IncidentFilter()) -> int:
        query = _filtered(select(func.count(Incident.id)), where)
        with self.db.reading() as session:
            return int(session.scalar(query) or 0)

    def get_incident(self, incident_id: int) -> Incident | None:
        with self.db.reading() as session:
            return session.get(Incident, incident_id)

    def evidence_of(self, incident_id: int) -> list[Evidence]:
        query = select(Evidence).where(Evidence.incident_id == incident_id).order_by(Evidence.ts)
        with self.db.reading() as session:
            return list(session.scalars(query))

    def list_dead_letters(self, limit: int = 100) -> list[DeadLetterRow]:
        query = select(DeadLetterRow).order_by(DeadLetterRow.id.desc()).limit(limit)
        with self.db.reading() as session:
            return list(session.scalars(query))

    def count_dead_letters(self) -> int:
        with self.db.reading() as session:
            return int(session.scalar(select(func.count(DeadLetterRow.id))) or 0)

    def load_checkpoints(self, consumer: str, source: str, partition: int) -> dict[str, Checkpoint]:
        query = select(Checkpoint).where(
            Checkpoint.consumer == consumer,
            Checkpoint.source == source,
            Checkpoint.partition == partition,
        )
        with self.db.reading() as session:
            return {row.model: row for row in session.scalars(query)}

    def load_position(self, consumer: str, source: str, partition: int) -> int | None:
        with self.db.reading() as session:
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
        with self.db.reading() as session:
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
        with self.db.reading() as session:
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
        with self.db.reading() as session:
            return list(session.scalars(query))

    def model_stats(self) -> list[ModelStats]:
        with self.db.reading() as session:
            return list(session.scalars(select(ModelStats).order_by(ModelStats.model)))

    def open_incident_counts(self) -> list[tuple[str, str, str, int]]:
        """(model, kind, severity, count) of unresolved incidents."""
        query = (
            select(Incident.model, Incident.kind, Incident.severity, func.count(Incident.id))
            .where(Incident.status.in_(OPEN_STATUSES))
            .group_by(Incident.model, Incident.kind, Incident.severity)
        )
        with self.db.reading() as session:
            return [(m, k, s, int(n)) for m, k, s, n in session.execute(query)]

    def flagged_clients(self) -> dict[str, dict[str, float]]:
        """See `Writer.flagged_clients`."""
        with self.db.reading() as session:
            return flagged_clients_in(session)

    def ping(self) -> None:
        """Raises if the database cannot answer a trivial query."""
        with self.db.engine.connect() as conn:
            conn.execute(select(1))


def newest_reference_query(model: str, model_version: str | None) -> Select[Any]:
    """Newest first, a row of the given version ahead of every other version's rows."""
    query = select(Reference).where(Reference.model == model)
    if model_version:
        exact = (Reference.model_version == model_version).desc()
        return query.order_by(exact, Reference.id.desc())
    return query.order_by(Reference.id.desc())


def flagged_clients_in(session: Session) -> dict[str, dict[str, float]]:
    """Read in the caller's session: the read side's and the unit of work's (`IncidentStore`).
    Each client's time is `flagged_since` its incident's first evidence."""
    began = Incident.details["pattern_began"].as_float()
    query = select(Incident.model, Incident.subject, Incident.first_seen, began).where(
        Incident.kind == "suspicious_client", Incident.status.in_(OPEN_STATUSES)
    )
    flagged: dict[str, dict[str, float]] = {}
    for model, subject, first_seen, pattern_began in session.execute(query):
        flagged.setdefault(model, {})[subject] = flagged_since(first_seen, pattern_began)
    return flagged


def flagged_since(first_seen: float, pattern_began: object) -> float:
    """From when a flagged client's predictions are not the population's: when the pattern
    its finding describes began (`pattern_began`, the detector's dating: the first query
    after its last clean look, or its first query for the cumulative test), else the look
    that flagged it. An evasion bot flagged at its 20th query would otherwise leave 19
    probes in the population, enough to open a drift of their own (new values in a feature
    that is always 0)."""
    if isinstance(pattern_began, int | float) and pattern_began < first_seen:
        return float(pattern_began)
    return float(first_seen)


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
