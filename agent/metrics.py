"""A tiny Prometheus registry: counters and gauges with labels, rendered as text format 0.0.4.

The pipeline updates the in-process metrics (events, dead letters, detector time); the daemon
sets consumer lag; whoever owns the outbox sets its backlog and failures. The API adds
database-derived gauges at scrape time (open incidents), so `bulwark serve` without a pipeline
still answers something useful. No client library: the text format is a few lines.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

import orjson

from storage.repository import Writer
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


class ModelCounts:
    """What one pipeline batch saw per model: published to the metrics above and stored as
    the model's running totals (the API's per-model summary and event-time auto-resolve)."""

    def __init__(self) -> None:
        self.models: dict[str, list[float]] = {}  # model -> [predictions, labels, letters, ts]
        self.detector_seconds: dict[str, float] = {}
        self.dead_letters = 0

    def add(self, batch: ModelBatch, detector_seconds: float) -> None:
        row = self._row(batch.model)
        row[0] += len(batch)
        timestamps = [batch.ts]
        if batch.labels is not None:
            row[1] += len(batch.labels.ids)
            timestamps.append(batch.labels.ts)
        latest = max((float(ts.max()) for ts in timestamps if len(ts)), default=math.nan)
        if not math.isnan(latest):
            row[3] = latest if math.isnan(row[3]) else max(row[3], latest)
        self.detector_seconds[batch.model] = (
            self.detector_seconds.get(batch.model, 0.0) + detector_seconds
        )

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Counts dead letters, per model where the payload still names one."""
        self.dead_letters += len(letters)
        for letter in letters:
            model = _model_named_in(letter.payload)
            if model is not None:
                self._row(model)[2] += 1

    def _row(self, model: str) -> list[float]:
        return self.models.setdefault(model, [0, 0, 0, math.nan])

    def store(self, writer: Writer) -> None:
        for model, (predictions, labels, letters, ts) in self.models.items():
            writer.bump_model_stats(
                model, int(predictions), int(labels), int(letters), None if math.isnan(ts) else ts
            )

    def publish(self) -> None:
        for model, (predictions, labels, _letters, _ts) in self.models.items():
            if predictions:
                EVENTS.inc(model, "prediction", by=predictions)
            if labels:
                EVENTS.inc(model, "label", by=labels)
        for model, seconds in self.detector_seconds.items():
            DETECTOR_SECONDS.inc(model, by=seconds)
        DEAD_LETTERS.inc(by=self.dead_letters)
        BATCHES.inc()
        LAST_BATCH_DETECTOR_SECONDS.set(value=sum(self.detector_seconds.values()))


def _model_named_in(payload: bytes) -> str | None:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    model = obj.get("model") if isinstance(obj, dict) else None
    return model[:200] if isinstance(model, str) and model else None
