"""A tiny Prometheus registry: counters and gauges with labels, rendered as text format 0.0.4.

The pipeline updates the in-process metrics (events, dead letters, detector time); the daemon
sets consumer lag; whoever owns the outbox sets its backlog and failures. The API adds
database-derived gauges at scrape time (open incidents), so `bulwark serve` without a pipeline
still answers something useful. No client library: the text format is a few lines.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import orjson

from storage.unit_of_work import UnitOfWork
from streams.batch import ModelBatch
from streams.events import DeadLetter

LabelValues = tuple[str, ...]


class Metric:
    """One metric family: a value per label combination."""

    def __init__(self, name: str, kind: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.kind = kind  # "counter" or "gauge"
        self.help = help
        self.labels = labels
        self._values: dict[LabelValues, float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, by: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + by

    def set(self, *labels: str, value: float) -> None:
        with self._lock:
            self._values[labels] = value

    def replace(self, values: dict[LabelValues, float]) -> None:
        """Sets the whole family at once (gauges read from the database at scrape time)."""
        with self._lock:
            self._values = dict(values)

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def samples(self) -> list[tuple[LabelValues, float]]:
        with self._lock:
            return sorted(self._values.items())

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


class Registry:
    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}
        # Called at each scrape to refresh gauges that are cheaper to read than to track.
        self.collectors: list[Callable[[], None]] = []

    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Metric:
        return self._add(Metric(name, "counter", help, labels))

    def gauge(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Metric:
        return self._add(Metric(name, "gauge", help, labels))

    def _add(self, metric: Metric) -> Metric:
        self.metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        for collect in self.collectors:
            collect()
        return "".join(_family(metric) for metric in self.metrics.values())


def _family(metric: Metric) -> str:
    lines = [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.kind}"]
    for labels, value in metric.samples():
        lines.append(f"{metric.name}{_labels(metric.labels, labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def _labels(names: Iterable[str], values: LabelValues) -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) else str(int(value))


REGISTRY = Registry()

EVENTS = REGISTRY.counter(
    "bulwark_events_processed_total", "Events decoded and run through detectors.", ("model", "type")
)
DEAD_LETTERS = REGISTRY.counter(
    "bulwark_dead_letters_total", "Records stored as dead letters by this process."
)
BATCHES = REGISTRY.counter("bulwark_batches_total", "Batches processed by this process.")
DETECTOR_SECONDS = REGISTRY.counter(
    "bulwark_detector_seconds_total",
    "Time spent in detectors; divide by bulwark_batches_total for the time per batch.",
    ("model",),
)
LAST_BATCH_DETECTOR_SECONDS = REGISTRY.gauge(
    "bulwark_detector_seconds_last_batch", "Time the detectors took on the latest batch."
)
CONSUMER_LAG = REGISTRY.gauge(
    "bulwark_consumer_lag", "Messages behind the end of the partition.", ("topic", "partition")
)
OPEN_INCIDENTS = REGISTRY.gauge(
    "bulwark_open_incidents",
    "Open or acknowledged incidents (from the database).",
    ("model", "kind", "severity"),
)
DEAD_LETTERS_STORED = REGISTRY.gauge(
    "bulwark_dead_letters_stored", "Dead letters kept in the database."
)
OUTBOX_BACKLOG = REGISTRY.gauge(
    "bulwark_outbox_backlog", "Notifications waiting for delivery.", ("channel",)
)
OUTBOX_FAILURES = REGISTRY.counter(
    "bulwark_outbox_delivery_failures_total", "Failed notification deliveries.", ("channel",)
)

READY = REGISTRY.gauge(
    "bulwark_ready",
    "1 while the daemon consumes; 0 while paused for a database outage, before Kafka is "
    "reached or while offset commits fail (the same judgement as /readyz).",
)
DATABASE_REACHABLE = REGISTRY.gauge(
    "bulwark_database_reachable",
    "0 while the daemon has paused consumption because the database does not answer.",
)


class ModelCounts:
    """What the pipeline saw per model: published to the metrics above at once, and kept
    until it is stored as the model's running totals (the API's per-model summary and
    event-time auto-resolve). Storing happens with a batch that writes anyway, or every
    `store_every` seconds, so quiet batches do not each pay for a transaction."""

    def __init__(self, store_every: float = 5.0) -> None:
        self.store_every = store_every
        self.models: dict[str, list[float]] = {}  # model -> [predictions, labels, letters, ts]
        self.stored_at = time.monotonic()
        self.batch_seconds = 0.0

    def add(self, batch: ModelBatch, detector_seconds: float) -> None:
        row = self._row(batch.model)
        labels = 0 if batch.labels is None else len(batch.labels.ids)
        row[0] += len(batch)
        row[1] += labels
        for ts in (batch.ts, None if batch.labels is None else batch.labels.ts):
            if ts is not None and len(ts):
                latest = float(ts.max())
                row[3] = latest if math.isnan(row[3]) else max(row[3], latest)
        if len(batch):
            EVENTS.inc(batch.model, "prediction", by=len(batch))
        if labels:
            EVENTS.inc(batch.model, "label", by=labels)
        DETECTOR_SECONDS.inc(batch.model, by=detector_seconds)
        self.batch_seconds += detector_seconds

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Counts dead letters, per model where the payload still names one."""
        DEAD_LETTERS.inc(by=len(letters))
        for letter in letters:
            model = _model_named_in(letter.payload)
            if model is not None:
                self._row(model)[2] += 1

    def end_batch(self) -> None:
        BATCHES.inc()
        LAST_BATCH_DETECTOR_SECONDS.set(value=self.batch_seconds)
        self.batch_seconds = 0.0

    def due(self) -> bool:
        return bool(self.models) and time.monotonic() - self.stored_at >= self.store_every

    def _row(self, model: str) -> list[float]:
        return self.models.setdefault(model, [0, 0, 0, math.nan])

    def store(self, uow: UnitOfWork) -> None:
        """Adds the unsaved counts in the unit of work's transaction; call `stored` after commit."""
        for model, (predictions, labels, letters, ts) in self.models.items():
            uow.model_stats.bump(
                model, int(predictions), int(labels), int(letters), None if math.isnan(ts) else ts
            )

    def stored(self) -> None:
        self.models = {}
        self.stored_at = time.monotonic()


def _model_named_in(payload: bytes) -> str | None:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    model = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(model, str) or not model or "\x00" in model:
        return None  # none named, or a name no database stores (NUL)
    return model[:200]
