"""The pipeline: raw records -> decode -> columnar batches -> monitors -> incidents -> storage.

Shared by `replay`, `demo` and the daemon. This is the per-batch flow; the detectors of each
(state key, model) live in `monitors`, each model's reference in `references`, their
checkpoints in `checkpoints`. A batch that found something (or has counts due) is stored in
one transaction: dead letters, incidents and evidence, links between incidents, the outbox
rows of the notifications they cause, model totals and performance points.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from agent.alerts.outbox import enqueue_changes, enqueue_status_change
from agent.config import Settings
from agent.incidents import causes
from agent.incidents.manager import Change, IncidentChange, IncidentManager
from agent.observability.metrics import ModelCounts
from agent.reference import ActiveReference
from agent.runtime.checkpoints import Checkpoints
from agent.runtime.monitors import ModelMonitor, Monitors
from agent.runtime.references import References
from agent.samples import ReferenceCollector
from detectors.base import Finding, MetricPoint
from detectors.stream_stall import StreamStallDetector
from storage.db import Database
from storage.enums import IncidentStatus
from storage.queries import Repository
from storage.unit_of_work import DeadLetterInput, UnitOfWork, run
from streams.batch import PartitionKey, StateKeyFn, own_partition, split_batch
from streams.decode import decode_batch
from streams.events import DeadLetter, RawRecord

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Stats:
    records: int = 0
    predictions: int = 0
    labels: int = 0
    dead_letters: int = 0
    findings: int = 0
    changes: Counter[str] = field(default_factory=Counter)
    events_by_model: Counter[str] = field(default_factory=Counter)
    busy_seconds: float = 0.0

    @property
    def events(self) -> int:
        return self.predictions + self.labels


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        consumer: str,
        notify: bool = False,
        state_key: StateKeyFn = own_partition,
        on_dead_letters: Callable[[list[DeadLetter]], None] | None = None,
    ) -> None:
        """`notify`: write outbox rows for incident changes (off for backfills and the demo,
        which must page nobody, now or later). `on_dead_letters` sees each batch's dead
        letters once they are stored (the daemon forwards them to a dead-letter topic)."""
        self.settings = settings
        self.notify = notify
        self.db = db
        self.repository = Repository(db)
        self.consumer = consumer
        self.state_key = state_key
        self.on_dead_letters = on_dead_letters
        self.incidents = IncidentManager()
        self.refs = References(settings, db)
        self.registry = Monitors(settings, self.refs)
        self.checkpoints = Checkpoints(db, consumer, state_key, self.registry, self.refs)
        self.stats = Stats()
        self.limits = settings.ingest.limits()
        self.clocks = settings.ingest.clocks()  # each stream's clock, for the decoder
        # (state key, model) -> wall time its events last arrived (the daemon's stall check).
        self.arrivals: dict[tuple[str, int, str], float] = {}
        self.counts = ModelCounts()  # metrics, and per-model totals not stored yet
        # Performance points not stored yet, the latest per stored row (a window's point is
        # re-emitted whenever late labels change it): written with the model totals.
        self.points: dict[tuple[object, ...], MetricPoint] = {}

    @property
    def monitors(self) -> dict[PartitionKey, dict[str, ModelMonitor]]:
        """Per state key, per model: the monitors of this process."""
        return self.registry.by_key

    @property
    def references(self) -> dict[str, ActiveReference | None]:
        """Per model: the reference in force (None while it is being learned)."""
        return self.refs.in_force

    @property
    def collectors(self) -> dict[str, ReferenceCollector]:
        return self.refs.collectors

    def process(
        self, records: list[RawRecord], wall_now: float | None = None
    ) -> list[IncidentChange]:
        """Runs one batch through detectors and stores what it produced in one transaction.
        `wall_now` (the daemon's clock) rejects records from the future; replay has none."""
        started = time.perf_counter()
        decoded = decode_batch(
            records, self.settings.max_record_bytes, self.limits, self.clocks, wall_now
        )
        exclude_flagged = self.settings.causes.exclude_flagged_clients
        if self.registry.flagged is None and exclude_flagged:
            self.registry.set_flagged(self.db.retrying(self.repository.flagged_clients))
        findings: list[Finding] = []
        for (source, partition, model), batch in split_batch(decoded, self.state_key).items():
            detect_started = time.perf_counter()
            version = next((v for v in batch.model_versions if v is not None), None)
            monitor = self.registry.get((source, partition), model, version)
            suspects = partial(self.registry.suspects, key=(source, partition))
            start = self.refs.judged_from(model, batch, self.registry.set_reference, suspects)
            findings.extend(monitor.update(batch, start))
            if wall_now is not None and len(batch):  # predictions (labels alone: no)
                self.arrivals[(source, partition, model)] = wall_now
            for point in monitor.metrics():
                self.points[point.row] = point
            self.stats.events_by_model[model] += len(batch)
            self.counts.add(batch, time.perf_counter() - detect_started)
        letters = dead_letter_rows(decoded.dead_letters)
        changes: list[IncidentChange] = []
        self.counts.add_dead_letters(decoded.dead_letters)
        self.counts.end_batch()
        # Model totals and performance points ride along with a batch that writes anyway, or
        # go every `counts.store_every` seconds: a quiet batch pays for no transaction.
        if findings or letters or self.counts.due():
            flagged: dict[str, dict[str, float]] = {}

            def write(uow: UnitOfWork) -> list[IncidentChange]:
                uow.dead_letters.add(letters)
                self._store_totals(uow)
                applied = self._record(uow, findings)
                if exclude_flagged:
                    flagged.clear()
                    flagged.update(uow.incidents.flagged_clients())
                return applied

            changes = run(self.db, write)
            if exclude_flagged:
                self.registry.set_flagged(flagged)
            self._totals_stored()
        if letters and self.on_dead_letters is not None:
            self.on_dead_letters(decoded.dead_letters)
        self.stats.records += len(records)
        self.stats.predictions += len(decoded.predictions)
        self.stats.labels += len(decoded.labels)
        self.stats.dead_letters += len(decoded.dead_letters)
        self.stats.findings += len(findings)
        self.stats.changes.update(str(c.change) for c in changes)
        self.stats.busy_seconds += time.perf_counter() - started
        return changes

    def _store_totals(self, uow: UnitOfWork) -> None:
        """The model totals and performance points not stored yet (`_totals_stored` after
        the commit)."""
        self.counts.store(uow)
        uow.performance.save(list(self.points.values()))

    def _totals_stored(self) -> None:
        self.counts.stored()
        self.points.clear()

    def _record(self, uow: UnitOfWork, findings: list[Finding]) -> list[IncidentChange]:
        """Findings -> incidents, and (with `notify`) their notifications, in the same
        transaction, so the outbox row commits with the change. An incident opened and
        resolved by the same batch (a stall found only when the events returned) was over
        when found: it is recorded, and notifies nobody."""
        applied = self.incidents.apply(uow, findings)
        links = causes.link(uow, {c.incident.model for c in applied}, self.settings.causes)
        if self.notify:
            alerts = self.settings.alerts
            resolved = {c.incident.id for c in applied if c.change == Change.RESOLVED}
            opened = {c.incident.id for c in applied if c.change == Change.OPENED}
            over = resolved & opened
            fresh = [c for c in applied if c.incident.id not in over]
            enqueue_changes(uow, alerts, fresh, links=links)
            for change in applied:
                if change.change == Change.RESOLVED and change.incident.id not in over:
                    enqueue_status_change(
                        uow, alerts, change.incident, IncidentStatus.OPEN, IncidentStatus.RESOLVED
                    )
        return applied

    def check_stalls(self, wall_now: float) -> list[IncidentChange]:
        """The daemon's wall-clock half of `stream_stalled`: each stream silent for longer
        than its stall threshold since its events last arrived (or since this process began
        watching it) opens the incident now; its first event back resolves it. Detectors
        still never read the clock: they are told the silence."""
        findings = []
        for key, model, monitor in self.registry.all():
            arrived = self.arrivals.setdefault((*key, model), wall_now)
            for detector in monitor.detectors:
                if isinstance(detector, StreamStallDetector):
                    finding = detector.silent_for(wall_now - arrived)
                    if finding is not None:
                        findings.append(finding)
        if not findings:
            return []
        changes = run(self.db, lambda uow: self._record(uow, findings))
        self.stats.findings += len(findings)
        self.stats.changes.update(str(c.change) for c in changes)
        return changes

    def store_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Stores records that never reached the decoder (a Kafka message too large to fetch)
        as dead letters, idempotent by position like every other."""
        rows = dead_letter_rows(letters)
        run(self.db, lambda uow: uow.dead_letters.add(rows))
        self.counts.add_dead_letters(letters)
        self.stats.dead_letters += len(letters)
        if self.on_dead_letters is not None:
            self.on_dead_letters(letters)

    def checkpoint(self, next_offsets: dict[PartitionKey, int]) -> None:
        """Saves the detector state behind the given (source, partition)s with the next offset
        of each, and with them the model totals and performance points not stored yet (see
        `Checkpoints.save`)."""
        self.checkpoints.save(next_offsets, also=self._store_totals)
        self._totals_stored()

    def restore_partition(self, source: str, partition: int) -> int | None:
        """Loads the detector state and recent predictions (source, partition) feeds; returns
        the stored next offset of (source, partition), if any."""
        return self.checkpoints.restore(source, partition)

    def drop_partition(self, source: str, partition: int) -> None:
        """Forgets the detector state (source, partition) feeds (it moved to another process),
        and its performance points not stored yet: the new owner replays their events. A
        model none of whose partitions are left here also leaves its reference being learned
        (`References.release`)."""
        key = self.state_key(source, partition)
        dropped = set(self.registry.of_key(key))
        self.registry.drop(key)
        for model in dropped - {model for _, model, _ in self.registry.all()}:
            self.refs.release(model)
        self.clocks.forget(source, partition)
        self.arrivals = {k: t for k, t in self.arrivals.items() if k[:2] != key}
        self.points = {k: p for k, p in self.points.items() if (p.source, p.partition) != key}

    @property
    def incidents_opened(self) -> int:
        return self.stats.changes[Change.OPENED]


def dead_letter_rows(letters: list[DeadLetter]) -> list[DeadLetterInput]:
    """Dead letters as the rows storage keeps (keyed by their source position)."""
    return [
        DeadLetterInput(
            source=d.position.source,
            partition=d.position.partition,
            offset=d.position.offset,
            reason=d.reason,
            payload=d.payload,
            received_at=d.received_at,
        )
        for d in letters
    ]
