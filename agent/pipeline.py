"""The pipeline: raw records -> decode -> columnar batches -> detectors -> incidents -> storage.

Shared by `replay`, `demo` and the daemon. Detector state is per (source, partition, model),
so a partition can move between processes: `checkpoint` saves a partition's state together
with the offset it is valid for, and `restore_partition` picks it up elsewhere.
"""

from __future__ import annotations

import pickle
import time
from collections import Counter
from dataclasses import dataclass, field

from agent.config import Settings
from agent.incidents import Change, IncidentChange, IncidentManager
from detectors.base import Detector, Finding, MetricPoint
from detectors.registry import build_detectors
from storage.db import Database
from storage.repository import DeadLetterInput, Repository, Writer
from streams.batch import ModelBatch, split_batch
from streams.decode import decode_batch
from streams.events import RawRecord

PartitionKey = tuple[str, int]


class ModelMonitor:
    """The detectors of one model on one partition."""

    def __init__(self, detectors: list[Detector]) -> None:
        self.detectors = detectors

    def update(self, batch: ModelBatch) -> list[Finding]:
        findings: list[Finding] = []
        for detector in self.detectors:
            findings.extend(detector.update(batch))
        return findings

    def metrics(self) -> list[MetricPoint]:
        points: list[MetricPoint] = []
        for detector in self.detectors:
            points.extend(detector.metrics())
        return points

    def snapshot(self) -> bytes:
        return pickle.dumps({d.name: d.snapshot() for d in self.detectors})

    def restore(self, data: bytes) -> None:
        states = pickle.loads(data)
        for detector in self.detectors:
            if detector.name in states:
                detector.restore(states[detector.name])


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
    def __init__(self, settings: Settings, db: Database, consumer: str) -> None:
        self.settings = settings
        self.db = db
        self.repository = Repository(db)
        self.consumer = consumer
        self.incidents = IncidentManager()
        self.monitors: dict[PartitionKey, dict[str, ModelMonitor]] = {}
        self.stats = Stats()

    def process(self, records: list[RawRecord]) -> list[IncidentChange]:
        """Runs one batch through detectors and stores what it produced in one transaction."""
        started = time.perf_counter()
        decoded = decode_batch(records, self.settings.max_record_bytes)
        findings: list[Finding] = []
        points: list[MetricPoint] = []
        for (source, partition, model), batch in split_batch(decoded).items():
            monitor = self._monitor(source, partition, model)
            findings.extend(monitor.update(batch))
            points.extend(monitor.metrics())
            self.stats.events_by_model[model] += len(batch)
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
        if findings or letters or points:

            def write() -> list[IncidentChange]:
                with self.db.session() as session:
                    writer = Writer(session)
                    writer.add_dead_letters(letters)
                    writer.save_performance(points)
                    return self.incidents.apply(writer, findings)

            changes = self.db.retrying(write)
        self.stats.records += len(records)
        self.stats.predictions += len(decoded.predictions)
        self.stats.labels += len(decoded.labels)
        self.stats.dead_letters += len(decoded.dead_letters)
        self.stats.findings += len(findings)
        self.stats.changes.update(str(c.change) for c in changes)
        self.stats.busy_seconds += time.perf_counter() - started
        return changes

    def _monitor(self, source: str, partition: int, model: str) -> ModelMonitor:
        models = self.monitors.setdefault((source, partition), {})
        monitor = models.get(model)
        if monitor is None:
            monitor = ModelMonitor(build_detectors(model, self.settings.detectors_for(model)))
            models[model] = monitor
        return monitor

    def checkpoint(self, next_offsets: dict[PartitionKey, int]) -> None:
        """Saves each partition's detector state with the offset it is valid for."""

        def write() -> None:
            with self.db.session() as session:
                writer = Writer(session)
                for (source, partition), offset in next_offsets.items():
                    states = {
                        model: monitor.snapshot()
                        for model, monitor in self.monitors.get((source, partition), {}).items()
                    }
                    writer.save_checkpoints(self.consumer, source, partition, offset, states)

        self.db.retrying(write)

    def restore_partition(self, source: str, partition: int) -> int | None:
        """Loads a partition's detector state; returns the offset it is valid for, if any."""
        rows = self.db.retrying(
            lambda: self.repository.load_checkpoints(self.consumer, source, partition)
        )
        self.monitors[(source, partition)] = {}
        offsets = set()
        for model, row in rows.items():
            self._monitor(source, partition, model).restore(row.state)
            offsets.add(row.next_offset)
        position = self.db.retrying(
            lambda: self.repository.load_position(self.consumer, source, partition)
        )
        return position if position is not None else (min(offsets) if offsets else None)

    def drop_partition(self, source: str, partition: int) -> None:
        self.monitors.pop((source, partition), None)

    @property
    def incidents_opened(self) -> int:
        return self.stats.changes[Change.OPENED]
