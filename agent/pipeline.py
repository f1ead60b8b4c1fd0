"""The pipeline: raw records -> decode -> columnar batches -> detectors -> incidents -> storage.

Shared by `replay`, `demo` and the daemon. Detector state is per (state key, model), where the
state key of a record's (source, partition) is given by `state_key`: the partition itself for
files, one key per partition number across topics for Kafka. A partition can move between
processes: `checkpoint` saves its state together with the next offset of every (source,
partition) that state covers, and `restore_partition` picks it up elsewhere.
"""

from __future__ import annotations

import pickle
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.config import Settings
from agent.incidents import Change, IncidentChange, IncidentManager
from detectors.base import Detector, Finding
from detectors.registry import build_detectors
from storage.db import Database
from storage.repository import DeadLetterInput, Repository, Writer
from streams.batch import ModelBatch, PartitionKey, StateKeyFn, own_partition, split_batch
from streams.decode import decode_batch
from streams.events import DeadLetter, RawRecord


class ModelMonitor:
    """The detectors of one model on one partition."""

    def __init__(self, detectors: list[Detector]) -> None:
        self.detectors = detectors

    def update(self, batch: ModelBatch) -> list[Finding]:
        findings: list[Finding] = []
        for detector in self.detectors:
            findings.extend(detector.update(batch))
        return findings

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
    def __init__(
        self,
        settings: Settings,
        db: Database,
        consumer: str,
        state_key: StateKeyFn = own_partition,
        on_dead_letters: Callable[[list[DeadLetter]], None] | None = None,
    ) -> None:
        """`on_dead_letters` sees each batch's dead letters once they are stored (the daemon
        forwards them to a dead-letter topic)."""
        self.settings = settings
        self.db = db
        self.repository = Repository(db)
        self.consumer = consumer
        self.state_key = state_key
        self.on_dead_letters = on_dead_letters
        self.incidents = IncidentManager()
        self.monitors: dict[PartitionKey, dict[str, ModelMonitor]] = {}
        self.stats = Stats()

    def process(self, records: list[RawRecord]) -> list[IncidentChange]:
        """Runs one batch through detectors and stores what it produced in one transaction."""
        started = time.perf_counter()
        decoded = decode_batch(records, self.settings.max_record_bytes)
        findings: list[Finding] = []
        for (source, partition, model), batch in split_batch(decoded, self.state_key).items():
            findings.extend(self._monitor(source, partition, model).update(batch))
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
        if findings or letters:

            def write() -> list[IncidentChange]:
                with self.db.session() as session:
                    writer = Writer(session)
                    writer.add_dead_letters(letters)
                    return self.incidents.apply(writer, findings)

            changes = self.db.retrying(write)
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

    def _monitor(self, source: str, partition: int, model: str) -> ModelMonitor:
        models = self.monitors.setdefault((source, partition), {})
        monitor = models.get(model)
        if monitor is None:
            monitor = ModelMonitor(build_detectors(model, self.settings.detectors_for(model)))
            models[model] = monitor
        return monitor

    def checkpoint(self, next_offsets: dict[PartitionKey, int]) -> None:
        """Saves, in one transaction, the detector state behind the given (source, partition)s
        and the next offset of each: a state and the positions it is valid for land together.
        """
        covered: dict[PartitionKey, list[int]] = defaultdict(list)
        for (source, partition), offset in next_offsets.items():
            covered[self.state_key(source, partition)].append(offset)

        def write() -> None:
            with self.db.session() as session:
                writer = Writer(session)
                for key, offsets in covered.items():
                    states = {
                        model: monitor.snapshot()
                        for model, monitor in self.monitors.get(key, {}).items()
                    }
                    # A state shared by several topics is valid for a vector of offsets,
                    # stored as positions below; the checkpoint keeps the smallest of them.
                    writer.save_checkpoints(self.consumer, *key, min(offsets), states)
                for (source, partition), offset in next_offsets.items():
                    writer.save_position(self.consumer, source, partition, offset)

        self.db.retrying(write)

    def restore_partition(self, source: str, partition: int) -> int | None:
        """Loads the detector state (source, partition) feeds; returns the stored next offset
        of (source, partition), if any."""
        key = self.state_key(source, partition)
        rows = self.db.retrying(lambda: self.repository.load_checkpoints(self.consumer, *key))
        self.monitors[key] = {}
        offsets = set()
        for model, row in rows.items():
            self._monitor(*key, model).restore(row.state)
            offsets.add(row.next_offset)
        position = self.db.retrying(
            lambda: self.repository.load_position(self.consumer, source, partition)
        )
        if position is not None or key != (source, partition):
            return position
        return min(offsets) if offsets else None

    def drop_partition(self, source: str, partition: int) -> None:
        """Forgets the detector state (source, partition) feeds (it moved to another process)."""
        self.monitors.pop(self.state_key(source, partition), None)

    @property
    def incidents_opened(self) -> int:
        return self.stats.changes[Change.OPENED]
