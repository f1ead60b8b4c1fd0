"""The pipeline: raw records -> decode -> columnar batches -> detectors -> incidents -> storage.

Shared by `replay`, `demo` and the daemon. Detector state is per (state key, model), where the
state key of a record's (source, partition) is given by `state_key`: the partition itself for
files, one key per partition number across topics for Kafka. A partition can move between
processes: `checkpoint` saves its state together with the next offset of every (source,
partition) that state covers, and `restore_partition` picks it up elsewhere.

Reference data is the pipeline's business, in one place: a model's stored reference is looked
up once per process (then cached) and handed to every detector through `set_reference`; with
none stored, the pipeline collects the model's first `detectors.reference_size` predictions,
stores them as the reference (so restarts, other processes and reports reuse them) and hands
them over. Detectors that take a reference see only the events after it. Each monitor also
keeps the model's most recent predictions, written with checkpoints for reports.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.alerts.outbox import enqueue_changes
from agent.config import Settings
from agent.incidents import Change, IncidentChange, IncidentManager
from agent.metrics import ModelCounts
from agent.reference import ActiveReference, decode_learned_until, encode_learned_until
from agent.samples import RecentWindow, ReferenceCollector, Sample
from detectors.base import Detector, Finding, MetricPoint
from detectors.registry import build_detectors
from storage.db import Database
from storage.models import Reference
from storage.repository import DeadLetterInput, ReferenceInput, Repository, Writer
from streams.batch import ModelBatch, PartitionKey, StateKeyFn, own_partition, split_batch
from streams.decode import decode_batch
from streams.events import DeadLetter, RawRecord

log = logging.getLogger(__name__)

# In a monitor snapshot: the reference its state is built on, and the model version of the
# events it first saw (which chose that reference).
REFERENCE_KEY = "__reference_id__"
VERSION_KEY = "__model_version__"
# A reference still being learned when the checkpoint was taken: resumed, not skipped, so a
# restarted process judges exactly the events the first one would have.
COLLECTOR_KEY = "__reference_collector__"


class ModelMonitor:
    """The detectors of one model on one partition, and its recent predictions."""

    def __init__(
        self, detectors: list[Detector], recent_events: int, model_version: str | None
    ) -> None:
        self.detectors = detectors
        self.model_version = model_version
        # Detectors that override `set_reference` judge events against a reference.
        self.referenced = [d for d in detectors if _takes_reference(d)]
        self.reference: ActiveReference | None = None
        self.recent = RecentWindow(recent_events)

    def set_reference(self, reference: ActiveReference) -> None:
        batch = reference.batch()
        for detector in self.referenced:
            detector.set_reference(batch)
        self.reference = reference

    def update(self, batch: ModelBatch, reference_start: int) -> list[Finding]:
        """Feeds every detector; reference-based ones only from `reference_start` on (the
        events before it are the reference itself, or the reference is still being learned)."""
        findings: list[Finding] = []
        for detector in self.detectors:
            if detector in self.referenced:
                if reference_start >= len(batch):
                    continue
                part = batch if reference_start == 0 else batch.since(reference_start)
                findings.extend(detector.update(part))
            else:
                findings.extend(detector.update(batch))
        self.recent.add(batch)
        return findings

    def metrics(self) -> list[MetricPoint]:
        points: list[MetricPoint] = []
        for detector in self.detectors:
            points.extend(detector.metrics())
        return points

    def snapshot(self, collector: ReferenceCollector | None = None) -> bytes:
        states: dict[str, object] = {d.name: d.snapshot() for d in self.detectors}
        states[REFERENCE_KEY] = self.reference.id if self.reference else None
        states[VERSION_KEY] = self.model_version
        if self.reference is None and collector is not None:
            states[COLLECTOR_KEY] = collector
        return pickle.dumps(states)

    @staticmethod
    def checkpointed_version(data: bytes) -> str | None:
        return pickle.loads(data).get(VERSION_KEY)

    def restore(self, data: bytes) -> ReferenceCollector | None:
        """Restores the detectors; returns the reference collection to resume, if the state
        was checkpointed while the reference was still being learned."""
        states = pickle.loads(data)
        reconfigured = [
            detector
            for detector in self.detectors
            if detector.name in states and not detector.restore(states[detector.name])
        ]
        for detector in reconfigured:
            log.warning(
                "model %s: the %s detector's settings changed since its checkpoint; it starts "
                "again with the new ones (what it had learned from the stream is dropped)",
                detector.model,
                detector.name,
            )
        collector = states.get(COLLECTOR_KEY)
        if collector is not None:
            self.reference = None  # judged from where the resumed collection ends, as before
            return collector
        if self.reference is not None and states.get(REFERENCE_KEY) != self.reference.id:
            # The state was built on another (older, or no) reference: the stored one wins.
            self.set_reference(self.reference)
        elif self.reference is not None:
            for detector in self.referenced:
                if detector in reconfigured:  # rebuilt at once from the (cached) reference batch
                    detector.set_reference(self.reference.batch())
        return None


def _takes_reference(detector: Detector) -> bool:
    return type(detector).set_reference is not Detector.set_reference


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
        self.monitors: dict[PartitionKey, dict[str, ModelMonitor]] = {}
        # Per model: the reference in force (None: none stored, being learned by a collector).
        self.references: dict[str, ActiveReference | None] = {}
        self.collectors: dict[str, ReferenceCollector] = {}
        self.stats = Stats()
        self.counts = ModelCounts()  # metrics, and per-model totals not stored yet
        # Performance points not stored yet, the latest per stored row (a window's point is
        # re-emitted whenever late labels change it): written with the model totals.
        self.points: dict[tuple[object, ...], MetricPoint] = {}

    def process(self, records: list[RawRecord]) -> list[IncidentChange]:
        """Runs one batch through detectors and stores what it produced in one transaction."""
        started = time.perf_counter()
        decoded = decode_batch(records, self.settings.max_record_bytes)
        findings: list[Finding] = []
        for (source, partition, model), batch in split_batch(decoded, self.state_key).items():
            detect_started = time.perf_counter()
            version = next((v for v in batch.model_versions if v is not None), None)
            monitor = self._monitor(source, partition, model, version)
            findings.extend(monitor.update(batch, self._reference_start(model, batch)))
            for point in monitor.metrics():
                self.points[point.row] = point
            self.stats.events_by_model[model] += len(batch)
            self.counts.add(batch, time.perf_counter() - detect_started)
        letters = [
            DeadLetterInput(
                source=d.position.source,
                partition=d.position.partition,
                offset=d.position.offset,
                reason=d.reason,
                payload=d.payload,
                received_at=d.received_at,
            )
            for d in decoded.dead_letters
        ]
        changes: list[IncidentChange] = []
        self.counts.add_dead_letters(decoded.dead_letters)
        self.counts.end_batch()
        # Model totals and performance points ride along with a batch that writes anyway, or
        # go every `counts.store_every` seconds: a quiet batch pays for no transaction.
        if findings or letters or self.counts.due():
            points = list(self.points.values())

            def write() -> list[IncidentChange]:
                with self.db.session() as session:
                    writer = Writer(session)
                    writer.add_dead_letters(letters)
                    self.counts.store(writer)
                    writer.save_performance(points)
                    applied = self.incidents.apply(writer, findings)
                    if self.notify:  # same transaction: the outbox row commits with the change
                        enqueue_changes(session, self.settings.alerts, applied)
                    return applied

            changes = self.db.retrying(write)
            self.counts.stored()
            self.points.clear()
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

    def store_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Stores records that never reached the decoder (a Kafka message too large to fetch)
        as dead letters, idempotent by position like every other."""
        rows = [
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

        def write() -> None:
            with self.db.session() as session:
                Writer(session).add_dead_letters(rows)

        self.db.retrying(write)
        self.counts.add_dead_letters(letters)
        self.stats.dead_letters += len(letters)
        if self.on_dead_letters is not None:
            self.on_dead_letters(letters)

    def _monitor(
        self, source: str, partition: int, model: str, version: str | None = None
    ) -> ModelMonitor:
        models = self.monitors.setdefault((source, partition), {})
        monitor = models.get(model)
        if monitor is None:
            monitor = ModelMonitor(
                build_detectors(model, self.settings.detectors_for(model)),
                self.settings.reference.recent_events,
                version,
            )
            reference = self._reference(model, version)
            if reference is not None:
                monitor.set_reference(reference)
            models[model] = monitor
        return monitor

    def _reference(self, model: str, version: str | None) -> ActiveReference | None:
        """The model's reference in force, read from the database once per process."""
        if model not in self.references:
            row = self.db.retrying(lambda: self.repository.find_reference(model, version))
            self.references[model] = None if row is None else _active(row)
        return self.references[model]

    def _reference_start(self, model: str, batch: ModelBatch) -> int:
        """Index of the batch's first event that reference-based detectors should judge."""
        reference = self.references.get(model)
        if reference is not None:
            return reference.judged_from(batch)
        collector = self.collectors.get(model)
        if collector is None:
            collector = self.collectors[model] = ReferenceCollector(
                self.settings.detectors_for(model).reference_size
            )
        taken = collector.add(batch)
        if not collector.complete:
            return len(batch)
        reference = self._store_learned(model, collector)
        del self.collectors[model]
        self.references[model] = reference
        for models in self.monitors.values():
            if model in models:
                models[model].set_reference(reference)
        # Another process may have learned the reference in force: skip what it took too.
        return max(taken, reference.judged_from(batch))

    def _store_learned(self, model: str, collector: ReferenceCollector) -> ActiveReference:
        sample = collector.sample()
        versions = {v for v in sample.model_versions if v is not None}
        ref = ReferenceInput(
            model=model,
            model_version=versions.pop() if len(versions) == 1 else "",
            origin="learned",
            rows=len(sample),
            source_rows=len(sample),
            summary=sample.summary(),
            sample=sample.encode(),
            learned_until=encode_learned_until(collector.taken_until),
        )
        row = self.db.retrying(lambda: self.repository.add_learned_reference(ref))
        return _active(row)

    def checkpoint(self, next_offsets: dict[PartitionKey, int]) -> None:
        """Saves, in one transaction, the detector state behind the given (source, partition)s
        and the next offset of each (a state and the positions it is valid for land together),
        the recent predictions of each model that changed since the last checkpoint, and the
        model totals and performance points not stored yet."""
        covered: dict[PartitionKey, list[int]] = defaultdict(list)
        for (source, partition), offset in next_offsets.items():
            covered[self.state_key(source, partition)].append(offset)
        recent = [
            (*key, model, monitor)
            for key in covered
            for model, monitor in self.monitors.get(key, {}).items()
            if monitor.recent.dirty
        ]
        samples = [(key, monitor.recent.sample()) for *key, monitor in recent]
        points = list(self.points.values())

        def write() -> None:
            with self.db.session() as session:
                writer = Writer(session)
                for key, offsets in covered.items():
                    states = {
                        model: monitor.snapshot(self.collectors.get(model))
                        for model, monitor in self.monitors.get(key, {}).items()
                    }
                    # A state shared by several topics is valid for a vector of offsets,
                    # stored as positions below; the checkpoint keeps the smallest of them.
                    writer.save_checkpoints(self.consumer, *key, min(offsets), states)
                for (source, partition), offset in next_offsets.items():
                    writer.save_position(self.consumer, source, partition, offset)
                for (source, partition, model), sample in samples:
                    if len(sample):
                        window = (min(sample.ts), max(sample.ts))
                        blob = sample.encode()
                        writer.save_recent_sample(
                            model, source, partition, len(sample), window, blob
                        )
                self.counts.store(writer)
                writer.save_performance(points)

        self.db.retrying(write)
        for *_, monitor in recent:
            monitor.recent.dirty = False
        self.counts.stored()
        self.points.clear()

    def restore_partition(self, source: str, partition: int) -> int | None:
        """Loads the detector state and recent predictions (source, partition) feeds; returns
        the stored next offset of (source, partition), if any."""
        key = self.state_key(source, partition)
        rows = self.db.retrying(lambda: self.repository.load_checkpoints(self.consumer, *key))
        recent = self.db.retrying(lambda: self.repository.load_recent_samples(*key))
        self.monitors[key] = {}
        offsets = set()
        for model, row in rows.items():
            version = ModelMonitor.checkpointed_version(row.state)
            monitor = self._monitor(*key, model, version)
            collector = monitor.restore(row.state)
            if collector is not None:
                # Checkpointed while the reference was being learned. If the process that
                # stopped learned it meanwhile, that reference is used: its `learned_until`
                # skips exactly the events it took. Otherwise the collection resumes.
                stored = self._reference(model, version) if model not in self.collectors else None
                if stored is not None:
                    monitor.set_reference(stored)
                else:
                    self.collectors[model] = collector
                    self.references[model] = None
            if model in recent:
                monitor.recent.seed(Sample.decode(recent[model].sample))
            offsets.add(row.next_offset)
        position = self.db.retrying(
            lambda: self.repository.load_position(self.consumer, source, partition)
        )
        if position is not None or key != (source, partition):
            return position
        return min(offsets) if offsets else None

    def drop_partition(self, source: str, partition: int) -> None:
        """Forgets the detector state (source, partition) feeds (it moved to another process),
        and its performance points not stored yet: the new owner replays their events."""
        key = self.state_key(source, partition)
        self.monitors.pop(key, None)
        self.points = {k: p for k, p in self.points.items() if (p.source, p.partition) != key}

    @property
    def incidents_opened(self) -> int:
        return self.stats.changes[Change.OPENED]


def _active(row: Reference) -> ActiveReference:
    return ActiveReference(
        id=row.id,
        model=row.model,
        model_version=row.model_version,
        sample=Sample.decode(row.sample),
        learned_until=decode_learned_until(row.learned_until),
    )
