"""The monitors: the detectors of one model on one partition (`ModelMonitor`), and the
registry of every monitor this process runs (`Monitors`), keyed by state key and model.

Detector state is per (state key, model), where the state key of a record's (source,
partition) is given by the pipeline's `state_key`: the partition itself for files, one key
per partition number across topics for Kafka. Each monitor also keeps the model's most recent
predictions (written with checkpoints, for reports) and the clients of its latest events.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from agent.config import Settings
from agent.incidents import attribution, causes
from agent.reference import ActiveReference
from agent.runtime.references import References
from agent.samples import RecentWindow, Sample
from detectors.base import Detector, Finding, Kind, MetricPoint
from detectors.baseline import takes_reference
from detectors.clients.detector import QueryPatternDetector
from detectors.prediction_drift import PredictionDriftDetector
from detectors.registry import build_detectors
from storage.queries import flagged_since
from streams.batch import ModelBatch, PartitionKey


class ModelMonitor:
    """The detectors of one model on one partition, and its recent predictions.

    Once a client is flagged (`flagged`: its name in incidents -> the event time it was
    flagged at), its later predictions feed only the detectors that watch clients (query
    patterns): the population-level ones, the recent window and the client shares see the
    other clients' traffic, so a flagged client's queries stop moving the population's
    statistics (agent/incidents/causes.py makes it the cause of what they moved before).
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
        # Detectors declaring a reference baseline judge events against the model's reference.
        self.referenced = [d for d in detectors if takes_reference(d)]
        self.watching_clients = [d for d in detectors if isinstance(d, QueryPatternDetector)]
        self.reference: ActiveReference | None = None
        self.known: dict[str, attribution.KnownValues] = {}  # per feature, of the reference
        self.recent_batch: ModelBatch | None = None  # the recent window decoded, until it moves
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
        self.reference = reference
        for detector in self.referenced:
            self.hand_reference(detector)
        self.known = {}

    def hand_reference(self, detector: Detector) -> None:
        """Rebuilds one detector on the reference in force, telling it whether the reference
        was learned from the stream (then it is no view apart from the keys)."""
        assert self.reference is not None
        detector.set_reference(self.reference.batch(), learned=self.reference.learned)

    def flagged_against(self, candidate: ModelBatch, window: ModelBatch | None) -> set[str]:
        """Names of the clients the client detectors would flag in the learning window (the
        events they kept, then `window`: the current batch's share of it) against a candidate
        reference. Judged on copies: the detectors themselves take the reference stored in
        the end and judge the window against it as usual."""
        names: set[str] = set()
        for watcher in self.watching_clients:
            trial = copy.deepcopy(watcher)
            trial.set_reference(candidate, learned=True)
            found = trial.judge_learning_window()
            if window is not None and len(window):
                found += trial.update(window)
            names.update(f.subject for f in found if f.kind == Kind.SUSPICIOUS_CLIENT)
        return names

    def update(self, batch: ModelBatch, reference_start: int) -> list[Finding]:
        """Feeds every detector; reference-based ones only from `reference_start` on (the
        events before it are the reference itself, or the reference is still being learned).
        Flagged clients' predictions, from the event they were flagged at, go to the
        detectors watching clients only."""
        findings: list[Finding] = []
        # Detectors watching clients see every event, those of a reference being learned
        # too: they keep them and judge them once the reference is in force (no blind warm-up).
        for watcher in self.watching_clients:
            findings.extend(self._feed(watcher, batch, 0))
        if self.exclude_flagged:
            for finding in findings:
                if finding.kind == Kind.SUSPICIOUS_CLIENT:
                    began = flagged_since(finding.ts, finding.details.get("pattern_began"))
                    since = self.flagged.get(finding.subject, began)
                    self.flagged[finding.subject] = min(since, began)
        population, start = self._population(batch, reference_start)
        for detector in self.detectors:
            if detector not in self.watching_clients:
                findings.extend(self._feed(detector, population, start))
        if findings:
            findings = self._measure(population, findings)
        self.recent.add(population)
        self.recent_batch = None
        self.clients.extend(population.clients)
        return findings

    def _feed(self, detector: Detector, batch: ModelBatch, reference_start: int) -> list[Finding]:
        if detector not in self.referenced:
            return detector.update(batch)
        if reference_start >= len(batch):
            return []
        return detector.update(batch if reference_start == 0 else batch.since(reference_start))

    def _population(self, batch: ModelBatch, reference_start: int) -> tuple[ModelBatch, int]:
        """The batch without the predictions of flagged clients from when their pattern began
        (`flagged_since`), and where `reference_start` falls in it."""
        if not (self.exclude_flagged and self.flagged and len(batch)):
            return batch, reference_start
        since_of: dict[str | None, float] = {}
        for client in set(batch.clients):
            name = None if client is None else self.client_name(client)
            since_of[client] = self.flagged.get(name, np.inf) if name is not None else np.inf
        since = np.fromiter((since_of[c] for c in batch.clients), float, len(batch))
        keep = batch.ts < since
        if keep.all():
            return batch, reference_start
        return batch.select(keep), int(keep[:reference_start].sum())

    def client_name(self, client: str) -> str:
        return attribution.client_subject(client, self.client_key)

    def _measure(self, batch: ModelBatch, findings: list[Finding]) -> list[Finding]:
        """Adds what agent.incidents.causes reads to the findings' details: the busiest clients'
        shares of the events behind a population-level finding, and which features account for a
        shift of the model's numeric output (agent/incidents/attribution.py)."""
        measured = []
        current: ModelBatch | None = None
        for finding in findings:
            extra: dict[str, object] = {}
            index = _index_of(batch, finding)
            if index is not None and causes.population_level(
                finding.kind, finding.subject, finding.statistic
            ):
                n = min(max(finding.support, attribution.MIN_EVENTS), attribution.CLIENT_WINDOW)
                start = max(0, index + 1 - n)
                behind = batch.clients[start : index + 1]
                older: list[str | None] = []
                if len(behind) < n and self.clients:
                    older = list(self.clients)[-(n - len(behind)) :]
                    behind = older + behind
                shares = attribution.client_shares(behind, self.client_name, self.flagged)
                if shares:
                    extra["client_shares"] = shares
                extra |= self._unusual_shares(batch, finding.subject, start, index, older)
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

    def _unusual_shares(
        self, batch: ModelBatch, feature: str, start: int, index: int, older: list[str | None]
    ) -> dict[str, object]:
        """`unusual_events` and `unusual_client_shares` of a finding on `feature`, over the
        events its client shares are measured on (the batch's `start` to `index`, after the
        recent window's last events, whose clients are `older`): those whose value the
        reference never had, and the clients' shares of them (agent/incidents/attribution.py)."""
        known = self._known(feature)
        if known is None or not (feature in batch.numeric or feature in batch.categorical):
            return {}
        column = _column(batch, feature, known.numeric)[start : index + 1]
        clients = batch.clients[start : index + 1]
        if older and self.recent.size:
            if self.recent_batch is None:  # decoded once for all the batch's findings
                self.recent_batch = self.recent.sample().to_batch(batch.model, "recent")
            recent = self.recent_batch
            keep = min(len(older), len(recent))
            earlier = _column(recent, feature, known.numeric)[len(recent) - keep :]
            column = np.concatenate([earlier, column])
            clients = older[len(older) - keep :] + clients
        unusual = np.flatnonzero(known.unusual(column))
        if len(unusual) < attribution.MIN_UNUSUAL:
            return {}
        shares = attribution.client_shares(
            [clients[i] for i in unusual.tolist()],
            self.client_name,
            self.flagged,
            least=attribution.MIN_UNUSUAL,
            top=attribution.TOP_UNUSUAL_CLIENTS,
        )
        return {"unusual_events": len(unusual), "unusual_client_shares": shares}

    def _known(self, feature: str) -> attribution.KnownValues | None:
        """What values of `feature` the reference had (None: no reference, or not in it);
        built once per reference."""
        if feature not in self.known and self.reference is not None:
            reference = self.reference.batch()
            values = reference.numeric.get(feature)
            if values is None:
                values = reference.categorical.get(feature)
            if values is not None:
                self.known[feature] = attribution.KnownValues(values)
        return self.known.get(feature)

    def _output_detector(self) -> PredictionDriftDetector | None:
        return next((d for d in self.detectors if isinstance(d, PredictionDriftDetector)), None)

    def metrics(self) -> list[MetricPoint]:
        points: list[MetricPoint] = []
        for detector in self.detectors:
            points.extend(detector.metrics())
        return points


def _column(batch: ModelBatch, feature: str, numeric: bool) -> np.ndarray:
    """A feature's values in the batch as the reference holds them (numbers, NaN missing; or
    objects, None missing); where the batch has it the other way, all missing."""
    if numeric:
        values = batch.numeric.get(feature)
        return np.full(len(batch), np.nan) if values is None else values
    column = batch.categorical.get(feature)
    return np.full(len(batch), None, dtype=object) if column is None else column


def _index_of(batch: ModelBatch, finding: Finding) -> int | None:
    """The index in `batch` of the event a finding was detected at."""
    for index in np.flatnonzero(batch.offsets == finding.position.offset).tolist():
        if batch.position(index) == finding.position:
            return index
    return None


class Monitors:
    """Every monitor of this process: per state key, per model. Built on first use with the
    model's reference in force (`References`) and the clients flagged so far."""

    def __init__(self, settings: Settings, references: References) -> None:
        self.settings = settings
        self.references = references
        self.by_key: dict[PartitionKey, dict[str, ModelMonitor]] = {}
        # Per model: the clients flagged by an open suspicious_client incident -> the event
        # time of its first evidence (ModelMonitor.flagged). Read from storage before the
        # first batch and again with every write, so it survives restarts, includes what other
        # processes flagged and drops a client whose incident was resolved.
        self.flagged: dict[str, dict[str, float]] | None = None

    def get(self, key: PartitionKey, model: str, version: str | None = None) -> ModelMonitor:
        """The model's monitor on `key`, built if there is none yet."""
        models = self.by_key.setdefault(key, {})
        monitor = models.get(model)
        if monitor is None:
            settings = self.settings.detectors_for(model)
            client_key = settings.query_patterns.client_id_key
            monitor = ModelMonitor(
                build_detectors(model, settings),
                self.settings.reference.recent_events,
                version,
                exclude_flagged=self.settings.causes.exclude_flagged_clients,
                client_key=None if client_key is None else client_key.get_secret_value(),
            )
            monitor.flagged = dict((self.flagged or {}).get(model, {}))
            reference = self.references.stored(model, version)
            if reference is not None:
                monitor.set_reference(reference)
            models[model] = monitor
        return monitor

    def of_key(self, key: PartitionKey) -> dict[str, ModelMonitor]:
        return self.by_key.get(key, {})

    def reset(self, key: PartitionKey) -> dict[str, ModelMonitor]:
        """Forgets the monitors of `key` (before restoring them from a checkpoint)."""
        models: dict[str, ModelMonitor] = {}
        self.by_key[key] = models
        return models

    def drop(self, key: PartitionKey) -> None:
        self.by_key.pop(key, None)

    def all(self) -> Iterator[tuple[PartitionKey, str, ModelMonitor]]:
        for key, models in self.by_key.items():
            for model, monitor in models.items():
                yield key, model, monitor

    def set_reference(self, model: str, reference: ActiveReference) -> None:
        """Hands a model's newly known reference to each of its monitors."""
        for models in self.by_key.values():
            if model in models:
                models[model].set_reference(reference)

    def suspects(
        self,
        model: str,
        candidate: ModelBatch,
        callers: list[str | None],
        window: ModelBatch,
        key: PartitionKey,
    ) -> set[str]:
        """The callers (as the events name them) of a reference being learned that the
        model's client detectors flag in its learning window (`ModelMonitor.flagged_against`;
        `window`: the events of it in the batch being processed, on `key`): `References`
        leaves their events out of it."""
        out: set[str] = set()
        for at, name, monitor in self.all():
            if name != model or not monitor.watching_clients:
                continue
            flagged = monitor.flagged_against(candidate, window if at == key else None)
            if flagged:
                out.update(
                    c for c in set(callers) if c is not None and monitor.client_name(c) in flagged
                )
        return out

    def set_flagged(self, flagged: dict[str, dict[str, float]]) -> None:
        self.flagged = flagged
        for _key, model, monitor in self.all():
            monitor.flagged = dict(flagged.get(model, {}))
