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
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from agent import attribution, causes
from agent.alerts.outbox import enqueue_changes, enqueue_status_change
from agent.config import Settings
from agent.incidents import Change, IncidentChange, IncidentManager
from agent.metrics import ModelCounts
from agent.reference import ActiveReference, decode_learned_until, encode_learned_until
from agent.samples import RecentWindow, ReferenceCollector, Sample
from detectors import state_codec
from detectors.base import Detector, Finding, Kind, MetricPoint
from detectors.prediction_drift import PredictionDriftDetector
from detectors.query_patterns import QueryPatternDetector
from detectors.registry import build_detectors
from detectors.state_codec import StateError
from detectors.stream_stall import StreamStallDetector
from storage.db import Database
from storage.models import Reference
from storage.repository import DeadLetterInput, ReferenceInput, Repository, Writer
from streams.batch import ModelBatch, PartitionKey, StateKeyFn, own_partition, split_batch
from streams.decode import decode_batch
from streams.events import DeadLetter, RawRecord

log = logging.getLogger(__name__)

# The layout of a monitor checkpoint (`ModelMonitor.snapshot`): a data-only map (no pickle,
# see detectors/state_codec.py) of each detector's own snapshot, the reference its state is
# built on, the model version of the events it first saw (which chose that reference) and,
# while the reference is still being learned, the collection so far: resumed, not skipped,
# so a restarted process judges exactly the events the first one would have.
MONITOR_STATE_VERSION = 1
_MONITOR_KEYS = frozenset({"version", "detectors", "reference_id", "model_version", "collector"})


class ModelMonitor:
    """The detectors of one model on one partition, and its recent predictions.

    Once a client is flagged (`flagged`: its name in incidents -> the event time it was
    flagged at), its later predictions feed only the detectors that watch clients (query
    patterns): the population-level ones, the recent window and the client shares see the
    other clients' traffic, so a flagged client's queries stop moving the population's
    statistics (agent/causes.py makes it the cause of what they moved before).
    """

    def __init__(
        self,
        detectors: list[Detector],
        recent_events: int,
        model_version: str | None,
        exclude_flagged: bool = False,
        client_key: str | None = None,
    ) -> None:
        self.detectors = detectors
        self.model_version = model_version
        # Detectors that override `set_reference` judge events against a reference.
        self.referenced = [d for d in detectors if _takes_reference(d)]
        self.watching_clients = [d for d in detectors if isinstance(d, QueryPatternDetector)]
        self.reference: ActiveReference | None = None
        self.recent = RecentWindow(recent_events)
        # Clients of the latest events, for the client shares of findings (not checkpointed:
        # after a restart the shares are measured on the events seen since).
        self.clients: deque[str | None] = deque(maxlen=attribution.CLIENT_WINDOW)
        self.exclude_flagged = exclude_flagged
        self.client_key = client_key
        # Set by the pipeline from the open suspicious_client incidents in storage (so it
        # survives restarts and follows a resolve), and at once from this monitor's findings.
        self.flagged: dict[str, float] = {}

    def set_reference(self, reference: ActiveReference) -> None:
        batch = reference.batch()
        for detector in self.referenced:
            detector.set_reference(batch)
        self.reference = reference

    def update(self, batch: ModelBatch, reference_start: int) -> list[Finding]:
        """Feeds every detector; reference-based ones only from `reference_start` on (the
        events before it are the reference itself, or the reference is still being learned).
        Flagged clients' predictions, from the event they were flagged at, go to the
        detectors watching clients only."""
        findings: list[Finding] = []
        # Detectors watching clients see every event, those of a reference being learned
        # too: they keep them and judge them once the reference is in force (no blind warm-up).
        for detector in self.watching_clients:
            findings.extend(self._feed(detector, batch, 0))
        if self.exclude_flagged:
            for finding in findings:
                if finding.kind == Kind.SUSPICIOUS_CLIENT:
                    since = self.flagged.get(finding.subject, finding.ts)
                    self.flagged[finding.subject] = min(since, finding.ts)
        population, start = self._population(batch, reference_start)
        for detector in self.detectors:
            if detector not in self.watching_clients:
                findings.extend(self._feed(detector, population, start))
        if findings:
            findings = self._measure(population, findings)
        self.recent.add(population)
        self.clients.extend(population.clients)
        return findings

    def _feed(self, detector: Detector, batch: ModelBatch, reference_start: int) -> list[Finding]:
        if detector not in self.referenced:
            return detector.update(batch)
        if reference_start >= len(batch):
            return []
        return detector.update(batch if reference_start == 0 else batch.since(reference_start))

    def _population(self, batch: ModelBatch, reference_start: int) -> tuple[ModelBatch, int]:
        """The batch without the predictions of clients flagged before them, and where
        `reference_start` falls in it."""
        if not (self.exclude_flagged and self.flagged and len(batch)):
            return batch, reference_start
        since_of: dict[str | None, float] = {}
        for client in set(batch.clients):
            name = None if client is None else self.client_name(client)
            since_of[client] = self.flagged.get(name, np.inf) if name is not None else np.inf
        since = np.fromiter((since_of[c] for c in batch.clients), float, len(batch))
        keep = batch.ts <= since
        if keep.all():
            return batch, reference_start
        return batch.select(keep), int(keep[:reference_start].sum())

    def client_name(self, client: str) -> str:
        return attribution.client_subject(client, self.client_key)

    def _measure(self, batch: ModelBatch, findings: list[Finding]) -> list[Finding]:
        """Adds what agent.causes reads to the findings' details: the busiest clients' shares
        of the events behind a population-level finding, and which features account for a
        shift of the model's numeric output (agent/attribution.py)."""
        measured = []
        current: ModelBatch | None = None
        for finding in findings:
            extra: dict[str, object] = {}
            index = _index_of(batch, finding)
            if index is not None and causes.population_level(
                finding.kind, finding.subject, finding.statistic
            ):
                n = min(max(finding.support, attribution.MIN_EVENTS), attribution.CLIENT_WINDOW)
                behind = batch.clients[max(0, index + 1 - n) : index + 1]
                if len(behind) < n and self.clients:
                    older = list(self.clients)[-(n - len(behind)) :]
                    behind = older + behind
                shares = attribution.client_shares(behind, self.client_name)
                if shares:
                    extra["client_shares"] = shares
            output = self._output_detector()
            if (
                index is not None
                and output is not None
                and self.reference is not None
                and finding.kind == Kind.PREDICTION_DRIFT
                and finding.subject in ("score", "prediction")
            ):
                if current is None:
                    now = Sample.concat(
                        [self.recent.sample(), Sample.of_batch(batch, 0, index + 1)]
                    )
                    current = now.to_batch(batch.model, "recent")
                n = min(len(current), max(finding.support, attribution.MIN_EVENTS))
                recent = current.slice(len(current) - n, len(current))
                reference = self.reference.batch()
                shift = attribution.output_shift_attribution(
                    reference.numeric,
                    output.output_column(reference, finding.subject),
                    recent.numeric,
                    output.output_column(recent, finding.subject),
                )
                if shift is not None:
                    extra["attribution"] = shift
            measured.append(
                replace(finding, details={**finding.details, **extra}) if extra else finding
            )
        return measured

    def _output_detector(self) -> PredictionDriftDetector | None:
        return next((d for d in self.detectors if isinstance(d, PredictionDriftDetector)), None)

    def metrics(self) -> list[MetricPoint]:
        points: list[MetricPoint] = []
        for detector in self.detectors:
            points.extend(detector.metrics())
        return points

    def snapshot(self, collector: ReferenceCollector | None = None) -> bytes:
        collecting = collector if self.reference is None else None
        return state_codec.encode(
            {
                "version": MONITOR_STATE_VERSION,
                "detectors": {d.name: d.snapshot() for d in self.detectors},
                "reference_id": self.reference.id if self.reference else None,
                "model_version": self.model_version,
                "collector": None if collecting is None else collecting.state(),
            }
        )

    @staticmethod
    def decode(data: bytes) -> dict[str, Any]:
        """A checkpoint's contents; `StateError` for anything but this data-only layout (an
        older, pickled checkpoint is refused unread)."""
        state = state_codec.decode(data)
        if not isinstance(state, dict) or state.get("version") != MONITOR_STATE_VERSION:
            raise StateError("not a monitor checkpoint of this layout")
        if not state.keys() >= _MONITOR_KEYS:
            raise StateError(f"a monitor checkpoint lacks {sorted(_MONITOR_KEYS - state.keys())}")
        return state

    def restore(self, state: dict[str, Any]) -> ReferenceCollector | None:
        """Restores the detectors from a decoded checkpoint (`decode`); returns the reference
        collection to resume, if the state was checkpointed while the reference was still
        being learned. Raises `StateError` when the checkpoint does not fit the schema (the
        monitor must then be built afresh)."""
        try:
            snapshots: dict[str, bytes] = state["detectors"]
            collected = state["collector"]
            reference_id = state["reference_id"]
            collector = None if collected is None else ReferenceCollector.of_state(collected)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"monitor state does not fit its schema: {exc!r}") from exc
        reconfigured = [
            detector
            for detector in self.detectors
            if detector.name in snapshots and not detector.restore(snapshots[detector.name])
        ]
        for detector in reconfigured:
            log.warning(
                "model %s: the %s detector's settings (or state layout) changed since its "
                "checkpoint; it starts again with the new ones (what it had learned from the "
                "stream is dropped)",
                detector.model,
                detector.name,
            )
        if collector is not None:
            self.reference = None  # judged from where the resumed collection ends, as before
            return collector
        if self.reference is not None and reference_id != self.reference.id:
            # The state was built on another (older, or no) reference: the stored one wins.
            self.set_reference(self.reference)
        elif self.reference is not None:
            for detector in self.referenced:
                if detector in reconfigured:  # rebuilt at once from the (cached) reference batch
                    detector.set_reference(self.reference.batch())
        return None


def _index_of(batch: ModelBatch, finding: Finding) -> int | None:
    """The index in `batch` of the event a finding was detected at."""
    for index in np.flatnonzero(batch.offsets == finding.position.offset).tolist():
        if batch.position(index) == finding.position:
            return index
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
        self.limits = settings.ingest.limits()
        self.clocks = settings.ingest.clocks()  # each stream's clock, for the decoder
        # (state key, model) -> wall time its events last arrived (the daemon's stall check).
        self.arrivals: dict[tuple[str, int, str], float] = {}
        self.counts = ModelCounts()  # metrics, and per-model totals not stored yet
        # Performance points not stored yet, the latest per stored row (a window's point is
        # re-emitted whenever late labels change it): written with the model totals.
        self.points: dict[tuple[object, ...], MetricPoint] = {}
        # Per model: the clients flagged by an open suspicious_client incident -> the event
        # time of its first evidence (ModelMonitor.flagged). Read from storage before the
        # first batch and again with every write, so it survives restarts, includes what other
        # processes flagged and drops a client whose incident was resolved.
        self.flagged: dict[str, dict[str, float]] | None = None

    def process(
        self, records: list[RawRecord], wall_now: float | None = None
    ) -> list[IncidentChange]:
        """Runs one batch through detectors and stores what it produced in one transaction.
        `wall_now` (the daemon's clock) rejects records from the future; replay has none."""
        started = time.perf_counter()
        decoded = decode_batch(
            records, self.settings.max_record_bytes, self.limits, self.clocks, wall_now
        )
        if self.flagged is None and self.settings.causes.exclude_flagged_clients:
            self._set_flagged(self.db.retrying(self.repository.flagged_clients))
        findings: list[Finding] = []
        for (source, partition, model), batch in split_batch(decoded, self.state_key).items():
            detect_started = time.perf_counter()
            version = next((v for v in batch.model_versions if v is not None), None)
            monitor = self._monitor(source, partition, model, version)
            findings.extend(monitor.update(batch, self._reference_start(model, batch)))
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
            points = list(self.points.values())

            def write() -> list[IncidentChange]:
                with self.db.session() as session:
                    writer = Writer(session)
                    writer.add_dead_letters(letters)
                    self.counts.store(writer)
                    writer.save_performance(points)
                    applied = self._record(session, writer, findings)
                    if self.settings.causes.exclude_flagged_clients:
                        flagged.clear()
                        flagged.update(writer.flagged_clients())
                    return applied

            flagged: dict[str, dict[str, float]] = {}
            changes = self.db.retrying(write)
            if self.settings.causes.exclude_flagged_clients:
                self._set_flagged(flagged)
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

    def _record(
        self, session: Session, writer: Writer, findings: list[Finding]
    ) -> list[IncidentChange]:
        """Findings -> incidents, and (with `notify`) their notifications, in the same
        transaction, so the outbox row commits with the change. An incident opened and
        resolved by the same batch (a stall found only when the events returned) was over
        when found: it is recorded, and notifies nobody."""
        applied = self.incidents.apply(writer, findings)
        links = causes.link(writer, {c.incident.model for c in applied}, self.settings.causes)
        if self.notify:
            alerts = self.settings.alerts
            resolved = {c.incident.id for c in applied if c.change == Change.RESOLVED}
            opened = {c.incident.id for c in applied if c.change == Change.OPENED}
            over = resolved & opened
            fresh = [c for c in applied if c.incident.id not in over]
            enqueue_changes(session, alerts, fresh, links=links)
            for change in applied:
                if change.change == Change.RESOLVED and change.incident.id not in over:
                    enqueue_status_change(session, alerts, change.incident, "open", "resolved")
        return applied

    def check_stalls(self, wall_now: float) -> list[IncidentChange]:
        """The daemon's wall-clock half of `stream_stalled`: each stream silent for longer
        than its stall threshold since its events last arrived (or since this process began
        watching it) opens the incident now; its first event back resolves it. Detectors
        still never read the clock: they are told the silence."""
        findings = []
        for key, models in self.monitors.items():
            for model, monitor in models.items():
                arrived = self.arrivals.setdefault((*key, model), wall_now)
                for detector in monitor.detectors:
                    if isinstance(detector, StreamStallDetector):
                        finding = detector.silent_for(wall_now - arrived)
                        if finding is not None:
                            findings.append(finding)
        if not findings:
            return []

        def write() -> list[IncidentChange]:
            with self.db.session() as session:
                return self._record(session, Writer(session), findings)

        changes = self.db.retrying(write)
        self.stats.findings += len(findings)
        self.stats.changes.update(str(c.change) for c in changes)
        return changes

    def store_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Stores records that never reached the decoder (a Kafka message too large to fetch)
        as dead letters, idempotent by position like every other."""
        rows = dead_letter_rows(letters)

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
            settings = self.settings.detectors_for(model)
            key = settings.query_patterns.client_id_key
            monitor = ModelMonitor(
                build_detectors(model, settings),
                self.settings.reference.recent_events,
                version,
                exclude_flagged=self.settings.causes.exclude_flagged_clients,
                client_key=None if key is None else key.get_secret_value(),
            )
            monitor.flagged = dict((self.flagged or {}).get(model, {}))
            reference = self._reference(model, version)
            if reference is not None:
                monitor.set_reference(reference)
            models[model] = monitor
        return monitor

    def _set_flagged(self, flagged: dict[str, dict[str, float]]) -> None:
        self.flagged = flagged
        for models in self.monitors.values():
            for model, monitor in models.items():
                monitor.flagged = dict(flagged.get(model, {}))

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
            try:
                state = ModelMonitor.decode(row.state)
                monitor = self._monitor(*key, model, state["model_version"])
                collector = monitor.restore(state)
            except StateError as exc:
                # Never unpickled, never half-restored: whoever can write the database must
                # not be able to run code here, nor to stop the agent.
                log.warning(
                    "model %s: checkpoint of %s partition %d not loaded (%s); its detectors "
                    "start again from the stored reference (or learn one)",
                    model,
                    *key,
                    exc,
                )
                self.monitors[key].pop(model, None)
                monitor, collector = self._monitor(*key, model), None
            if collector is not None:
                # Checkpointed while the reference was being learned. If the process that
                # stopped learned it meanwhile, that reference is used: its `learned_until`
                # skips exactly the events it took. Otherwise the collection resumes.
                version = monitor.model_version
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
        self.clocks.forget(source, partition)
        self.arrivals = {k: t for k, t in self.arrivals.items() if k[:2] != key}
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
