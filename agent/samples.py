"""Samples of prediction events: reference data and the recent window of a model.

A `Sample` keeps, per event, what drift detection and reports need (event time, the features
as received, prediction, scores, score, model version) and nothing that identifies a request
(no ids, clients or offsets). It is stored as zlib-compressed columnar JSON: JSON keeps the
contract's value types exactly (a category `"1"` stays distinct from the number `1`, booleans
stay booleans), which Parquet or CSV would not without a schema per feature.

`Sample.to_batch` rebuilds a columnar `ModelBatch` through the same code the pipeline uses, so
a detector handed a stored reference sees exactly what it would have learned from the stream.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from detectors.baseline import capped_per_client
from streams.batch import ModelBatch, PartitionKey, build_model_batch, floats_or_none
from streams.decode import UNJUDGED_LIMITS, decode_batch
from streams.events import FeatureValue, Position, Prediction, RawRecord, Target

if TYPE_CHECKING:
    import pandas as pd

FORMAT_VERSION = 1


@dataclass(slots=True)
class Sample:
    """Prediction events of one model as parallel columns, in event order."""

    ts: list[float] = field(default_factory=list)
    features: list[dict[str, FeatureValue]] = field(default_factory=list)
    predictions: list[Target | None] = field(default_factory=list)
    scores: list[dict[str, float] | None] = field(default_factory=list)
    score: list[float | None] = field(default_factory=list)
    model_versions: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def of_batch(cls, batch: ModelBatch, start: int = 0, stop: int | None = None) -> Sample:
        """Rows [start:stop] of a batch; list slices, no per-event Python loop."""
        s = slice(start, stop)
        n = len(batch.ts[s])
        return cls(
            ts=batch.ts[s].tolist(),
            features=batch.rows[s],
            predictions=batch.predictions[s],
            scores=batch.scores[s],
            # NaN marks an absent score in the batch; None in a sample, as in an event.
            score=[None] * n if batch.score is None else floats_or_none(batch.score[s]),
            model_versions=batch.model_versions[s],
        )

    @classmethod
    def of_records(cls, records: list[bytes]) -> Sample:
        """Predictions' JSON records (all of one model, accepted once already), decoded again
        by the decoder that accepted them."""
        raw = [RawRecord(value, Position("sample", 0, i)) for i, value in enumerate(records)]
        decoded = decode_batch(raw, max(map(len, records), default=0), UNJUDGED_LIMITS)
        if decoded.dead_letters or decoded.label_groups:
            reason = decoded.dead_letters[0].reason if decoded.dead_letters else "a label"
            raise ValueError(f"not a record of an accepted prediction: {reason}")
        parts = [
            cls(
                ts=group.ts,
                features=group.rows,
                predictions=group.predictions,
                scores=group.scores,
                score=group.score,
                model_versions=group.model_versions,
            )
            for group in decoded.prediction_groups  # one: one model, one source partition
        ]
        return parts[0] if len(parts) == 1 else cls.concat(parts)

    @classmethod
    def of_events(cls, events: list[Prediction]) -> Sample:
        return cls(
            ts=[e.ts for e in events],
            features=[e.features for e in events],
            predictions=[e.prediction for e in events],
            scores=[e.scores for e in events],
            score=[e.score for e in events],
            model_versions=[e.model_version for e in events],
        )

    @classmethod
    def concat(cls, parts: list[Sample]) -> Sample:
        out = cls()
        for part in parts:
            out.ts += part.ts
            out.features += part.features
            out.predictions += part.predictions
            out.scores += part.scores
            out.score += part.score
            out.model_versions += part.model_versions
        return out

    def take(self, indices: Sequence[int] | np.ndarray) -> Sample:
        return Sample(
            ts=[self.ts[i] for i in indices],
            features=[self.features[i] for i in indices],
            predictions=[self.predictions[i] for i in indices],
            scores=[self.scores[i] for i in indices],
            score=[self.score[i] for i in indices],
            model_versions=[self.model_versions[i] for i in indices],
        )

    def sorted_by_time(self) -> Sample:
        return self.take(np.argsort(np.asarray(self.ts), kind="stable"))

    def encode(self) -> bytes:
        data = {
            "format": FORMAT_VERSION,
            "ts": self.ts,
            "features": self.features,
            "prediction": self.predictions,
            "scores": self.scores,
            "score": self.score,
            "model_version": self.model_versions,
        }
        # Level 1: a third larger than level 6 but four times faster; the pipeline encodes a
        # sample per model at every checkpoint, and once when it learns a reference.
        return zlib.compress(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), 1)

    @classmethod
    def decode(cls, blob: bytes) -> Sample:
        data = orjson.loads(zlib.decompress(blob))
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported sample format {data.get('format')!r}")
        return cls(
            ts=data["ts"],
            features=data["features"],
            predictions=data["prediction"],
            scores=data["scores"],
            score=data["score"],
            model_versions=data["model_version"],
        )

    def to_batch(
        self, model: str, source: str = "reference", clients: list[str | None] | None = None
    ) -> ModelBatch:
        """The sample as the columnar batch detectors consume; `clients`: each event's
        caller, where known (a collection being learned keeps them; a stored sample does
        not)."""
        events = [
            Prediction(
                model=model,
                ts=self.ts[i],
                features=self.features[i],
                position=Position(source, 0, i),
                model_version=self.model_versions[i],
                prediction=self.predictions[i],
                scores=self.scores[i],
                score=self.score[i],
                client=None if clients is None else clients[i],
            )
            for i in range(len(self))
        ]
        return build_model_batch(model, source, 0, events)

    def to_frame(self) -> pd.DataFrame:
        """One row per event: the features, then `prediction`, `score` and `scores.<class>`
        where present (a feature with one of those names keeps a `feature.` prefix)."""
        import pandas as pd

        frame = pd.DataFrame.from_records(self.features, columns=self.feature_names())
        reserved = {"prediction", "score"} | {c for c in frame.columns if c.startswith("scores.")}
        frame = frame.rename(columns={c: f"feature.{c}" for c in frame.columns if c in reserved})
        if any(p is not None for p in self.predictions):
            frame["prediction"] = self.predictions
        if any(s is not None for s in self.score):
            frame["score"] = np.array([np.nan if s is None else s for s in self.score])
        classes = sorted({k for s in self.scores if s for k in s})
        for cls_ in classes:
            frame[f"scores.{cls_}"] = [s.get(cls_) if s else None for s in self.scores]
        return frame

    def feature_names(self) -> list[str]:
        names: dict[str, None] = {}
        for row in self.features:
            names.update(dict.fromkeys(row))
        return list(names)

    def summary(self) -> dict[str, Any]:
        """Per-column statistics stored next to the sample (what `reference show` prints)."""
        batch = self.to_batch("summary")
        columns: dict[str, Any] = {}
        for name in sorted(batch.feature_names()):
            columns[name] = _column_summary(batch, name)
        out: dict[str, Any] = {"rows": len(self), "features": columns}
        if self.ts:
            out["ts"] = {"min": min(self.ts), "max": max(self.ts)}
        predictions = [p for p in self.predictions if p is not None]
        if predictions:
            if all(isinstance(p, int | float) and not isinstance(p, bool) for p in predictions):
                out["prediction"] = _numeric_summary(np.asarray(predictions, dtype=np.float64))
            else:
                out["prediction"] = {"top": _top_counts(np.asarray(predictions, dtype=object))}
        versions = sorted({v for v in self.model_versions if v is not None})
        if versions:
            out["model_versions"] = versions[:20]
        return out


def _column_summary(batch: ModelBatch, name: str) -> dict[str, Any]:
    n = len(batch)
    out: dict[str, Any] = {}
    present = np.zeros(n, dtype=bool)
    if name in batch.numeric:
        values = batch.numeric[name]
        valid = ~np.isnan(values)
        present |= valid
        if valid.any():
            out["numeric"] = _numeric_summary(values[valid])
    if name in batch.categorical:
        values = batch.categorical[name]
        valid = values != None  # noqa: E711 - elementwise comparison on an object array
        present |= valid
        if valid.any():
            out["categorical"] = {
                "distinct": len(set(values[valid].tolist())),
                "top": _top_counts(values[valid]),
            }
    out["missing_share"] = round(1 - float(present.mean()), 6) if n else 0.0
    return out


def _numeric_summary(values: np.ndarray) -> dict[str, Any]:
    q = np.quantile(values, [0.05, 0.5, 0.95])
    return {
        "count": len(values),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "p05": float(q[0]),
        "p50": float(q[1]),
        "p95": float(q[2]),
        "max": float(values.max()),
    }


def _top_counts(values: np.ndarray, top: int = 10) -> dict[str, float]:
    """Shares of the most frequent values, keyed by their JSON text (`"DE"`, `true`, `1`)."""
    keys = [orjson.dumps(v).decode() for v in values.tolist()]
    uniques, counts = np.unique(np.asarray(keys), return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    return {str(uniques[i]): round(float(counts[i]) / len(keys), 6) for i in order}


class RecentWindow:
    """The last `capacity` events of one model on one partition, kept as batch slices.

    A slice holds the predictions' JSON records as received (one bytes object per event),
    decoded again only when a checkpoint stores the window. Holding the decoded objects
    instead (a feature dict, a scores dict and their values: ~25 objects per event) for
    thousands of events made every later batch decode into cold memory: ~3 µs more per
    event in `bench/throughput.py`, and about four times the memory.

    Adding a batch costs a list slice (no per-event work); old slices are dropped whole once
    the newer ones alone hold `capacity` events, so memory stays under 2 x capacity.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # Records, or a decoded Sample (a restored window, or batches built from events).
        self.chunks: deque[list[bytes] | Sample] = deque()
        self.size = 0
        self.dirty = False

    def add(self, batch: ModelBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        start = max(0, n - self.capacity)
        chunk = (
            batch.records[start:] if batch.records is not None else Sample.of_batch(batch, start)
        )
        self.chunks.append(chunk)
        self.size += len(chunk)
        while self.size - len(self.chunks[0]) >= self.capacity:
            self.size -= len(self.chunks.popleft())
        self.dirty = True

    def seed(self, sample: Sample) -> None:
        """Starts from a stored window (a restored partition), without marking it changed."""
        self.chunks = deque([sample]) if len(sample) else deque()
        self.size = len(sample)

    def sample(self) -> Sample:
        """The last `capacity` events. The older ones are cut before records are decoded, and
        they all lie in the oldest chunk (`add` drops a chunk the newer ones cover)."""
        skip = max(0, self.size - self.capacity)
        parts = []
        for chunk in self.chunks:
            if isinstance(chunk, Sample):
                parts.append(chunk.take(range(skip, len(chunk))) if skip else chunk)
            else:
                parts.append(Sample.of_records(chunk[skip:]))
            skip = 0
        return Sample.concat(parts)


class ReferenceCollector:
    """Collects a model's first `size` predictions a process sees, across partitions, each
    client giving at most twice the mean client's share (`capped_per_client`): a client
    flooding the first events (an attacker from the first query) cannot widen the reference
    every detector judges against. Events a client gives beyond its cap are passed over:
    neither in the reference nor judged against it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.parts: list[Sample] = []
        self.count = 0
        self.client_counts: dict[str, int] = {}  # events taken per client ("": none)
        self.clients: list[str | None] = []  # the caller of each event taken, in order
        # Per source partition, the offset after the last prediction of the learning window
        # (taken or passed over): stored with the learned reference (ActiveReference.judged_from).
        self.taken_until: dict[PartitionKey, int] = {}

    def add(self, batch: ModelBatch) -> int:
        """Takes what the reference still needs from the front of `batch`; returns how many
        of its events the learning window covers (taken or passed over)."""
        chosen, end = capped_per_client(batch.clients, self.count, self.size, self.client_counts)
        if chosen:
            window = Sample.of_batch(batch, 0, end)
            self.parts.append(window if len(chosen) == end else window.take(chosen))
            self.clients += [batch.clients[i] for i in chosen]
            self.count += len(chosen)
        if end > 0:
            if batch.positions is None:
                key = (batch.source, batch.partition)
                self.taken_until[key] = int(batch.offsets[end - 1]) + 1
            else:  # topics sharing the state: each event's own (in order, so the last wins)
                self.taken_until.update(
                    ((p.source, p.partition), p.offset + 1) for p in batch.positions[:end]
                )
        return end

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint: the predictions taken so far (as one sample's
        columns) and, per source partition, the offset after the last one taken."""
        sample = self.sample()
        return {
            "size": self.size,
            "count": self.count,
            "sample": {
                "ts": sample.ts,
                "features": sample.features,
                "predictions": sample.predictions,
                "scores": sample.scores,
                "score": sample.score,
                "model_versions": sample.model_versions,
            },
            "taken_until": [[*key, offset] for key, offset in self.taken_until.items()],
            "client_counts": self.client_counts,
            "clients": self.clients,
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> ReferenceCollector:
        collector = cls(state["size"])
        sample = Sample(**state["sample"])
        collector.parts = [sample] if len(sample) else []
        collector.count = state["count"]
        # A checkpoint from before the cap: its clients' counts restart (the cap follows).
        collector.client_counts = state.get("client_counts", {})
        # A checkpoint from before callers were kept: its events' callers are unknown.
        collector.clients = state.get("clients", [None] * len(sample))
        collector.taken_until = {
            (source, partition): offset for source, partition, offset in state["taken_until"]
        }
        return collector

    @property
    def complete(self) -> bool:
        return self.count >= self.size

    def sample(self) -> Sample:
        return Sample.concat(self.parts)

    def sample_without(self, left_out: set[str]) -> Sample:
        """The collection without the events of the `left_out` callers."""
        sample = self.sample()
        if not left_out:
            return sample
        return sample.take([i for i, c in enumerate(self.clients) if c not in left_out])
