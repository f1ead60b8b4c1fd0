"""Columnar batches: the events of one model from one partition, as numpy arrays.

Built once per batch by `split_batch` and shared by every detector, so no detector loops
over events in Python to get at a feature.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from streams.decode import DecodedBatch
from streams.events import FeatureValue, Label, Position, Prediction

PartitionKey = tuple[str, int]  # (source, partition)
# Which detector state a record of (source, partition) feeds. Files: the partition itself.
# Kafka: one key per partition number shared by all topics, so co-partitioned prediction and
# label topics meet in the same detectors (see streams.kafka).
StateKeyFn = Callable[[str, int], PartitionKey]


def own_partition(source: str, partition: int) -> PartitionKey:
    return (source, partition)


@dataclass(slots=True)
class LabelColumns:
    ids: list[str]
    values: list[object]
    ts: np.ndarray
    offsets: np.ndarray
    positions: list[Position]  # each label's real source position

    @classmethod
    def of(cls, labels: list[Label]) -> LabelColumns:
        return cls(
            ids=[lab.id for lab in labels],
            values=[lab.label for lab in labels],
            ts=np.fromiter((lab.ts for lab in labels), np.float64, len(labels)),
            offsets=np.fromiter((lab.position.offset for lab in labels), np.int64, len(labels)),
            positions=[lab.position for lab in labels],
        )


@dataclass(slots=True)
class ModelBatch:
    """Predictions (and labels) of one model for one detector state, in arrival order.

    `source`/`partition` are the state key; a finding must cite `positions[i]`, the event's
    real position, which may be on another topic than the key names.
    """

    model: str
    source: str
    partition: int
    ts: np.ndarray  # event times, float64 epoch seconds
    offsets: np.ndarray  # source offsets, int64
    positions: list[Position]
    ids: list[str | None]
    clients: list[str | None]
    model_versions: list[str | None]
    rows: list[dict[str, FeatureValue]]  # the feature objects as received
    numeric: dict[str, np.ndarray] = field(default_factory=dict)  # NaN: missing or not a number
    categorical: dict[str, np.ndarray] = field(default_factory=dict)  # object; None: missing
    predictions: list[object] = field(default_factory=list)
    scores: list[dict[str, float] | None] = field(default_factory=list)
    score: np.ndarray | None = None  # the optional single `score`, NaN where absent
    labels: LabelColumns | None = None

    def __len__(self) -> int:
        return len(self.ts)

    def feature_names(self) -> set[str]:
        return self.numeric.keys() | self.categorical.keys()


def split_batch(
    decoded: DecodedBatch, state_key: StateKeyFn = own_partition
) -> dict[tuple[str, int, str], ModelBatch]:
    """Groups a decoded batch by (state source, state partition, model) into columnar batches."""
    predictions: dict[tuple[str, int, str], list[Prediction]] = defaultdict(list)
    labels: dict[tuple[str, int, str], list[Label]] = defaultdict(list)
    for event in decoded.predictions:
        p = event.position
        predictions[(*state_key(p.source, p.partition), event.model)].append(event)
    for label in decoded.labels:
        p = label.position
        labels[(*state_key(p.source, p.partition), label.model)].append(label)
    batches = {}
    for key in predictions.keys() | labels.keys():
        batch = _columns(key, predictions.get(key, []))
        if key in labels:
            batch.labels = LabelColumns.of(labels[key])
        batches[key] = batch
    return batches


def _columns(key: tuple[str, int, str], events: list[Prediction]) -> ModelBatch:
    source, partition, model = key
    n = len(events)
    rows = [e.features for e in events]
    batch = ModelBatch(
        model=model,
        source=source,
        partition=partition,
        ts=np.fromiter((e.ts for e in events), np.float64, n),
        offsets=np.fromiter((e.position.offset for e in events), np.int64, n),
        positions=[e.position for e in events],
        ids=[e.id for e in events],
        clients=[e.client for e in events],
        model_versions=[e.model_version for e in events],
        rows=rows,
        predictions=[e.prediction for e in events],
        scores=[e.scores for e in events],
    )
    if any(e.score is not None for e in events):
        batch.score = np.array([np.nan if e.score is None else e.score for e in events])
    names: set[str] = set()
    for row in rows:
        names.update(row)
    for name in names:
        values = [row.get(name) for row in rows]
        kinds = {type(v) for v in values}
        kinds.discard(type(None))
        if kinds <= {int, float}:
            batch.numeric[name] = np.array(values, dtype=np.float64)  # None -> NaN
        elif kinds <= {str, bool}:
            batch.categorical[name] = np.array(values, dtype=object)
        else:
            # Mixed types: numbers go to the numeric column, the rest to the categorical one;
            # the data-quality detector reports the mix against the reference schema.
            batch.numeric[name] = np.array(
                [v if type(v) in (int, float) else None for v in values], dtype=np.float64
            )
            batch.categorical[name] = np.array(
                [v if type(v) in (str, bool) else None for v in values], dtype=object
            )
    return batch
