"""Columnar batches: the events of one model from one partition, as numpy arrays.

Built once per batch by `split_batch` and shared by every detector, so no detector loops
over events in Python to get at a feature.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from streams.decode import DecodedBatch
from streams.events import FeatureValue, Label, Prediction

PartitionKey = tuple[str, int]  # (source, partition)


@dataclass(slots=True)
class LabelColumns:
    ids: list[str]
    values: list[object]
    ts: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, labels: list[Label]) -> LabelColumns:
        return cls(
            ids=[lab.id for lab in labels],
            values=[lab.label for lab in labels],
            ts=np.fromiter((lab.ts for lab in labels), np.float64, len(labels)),
            offsets=np.fromiter((lab.position.offset for lab in labels), np.int64, len(labels)),
        )


@dataclass(slots=True)
class ModelBatch:
    """Predictions (and labels) of one model from one partition, in arrival order."""

    model: str
    source: str
    partition: int
    ts: np.ndarray  # event times, float64 epoch seconds
    offsets: np.ndarray  # source offsets, int64
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

    def since(self, start: int) -> ModelBatch:
        """The predictions from index `start` on (array views and list slices), same labels."""
        return ModelBatch(
            model=self.model,
            source=self.source,
            partition=self.partition,
            ts=self.ts[start:],
            offsets=self.offsets[start:],
            ids=self.ids[start:],
            clients=self.clients[start:],
            model_versions=self.model_versions[start:],
            rows=self.rows[start:],
            numeric={k: v[start:] for k, v in self.numeric.items()},
            categorical={k: v[start:] for k, v in self.categorical.items()},
            predictions=self.predictions[start:],
            scores=self.scores[start:],
            score=None if self.score is None else self.score[start:],
            labels=self.labels,
        )


def split_batch(decoded: DecodedBatch) -> dict[tuple[str, int, str], ModelBatch]:
    """Groups a decoded batch by (source, partition, model) into columnar batches."""
    predictions: dict[tuple[str, int, str], list[Prediction]] = defaultdict(list)
    labels: dict[tuple[str, int, str], list[Label]] = defaultdict(list)
    for event in decoded.predictions:
        predictions[(event.position.source, event.position.partition, event.model)].append(event)
    for label in decoded.labels:
        labels[(label.position.source, label.position.partition, label.model)].append(label)
    batches = {}
    for key in predictions.keys() | labels.keys():
        batch = _columns(key, predictions.get(key, []))
        if key in labels:
            batch.labels = LabelColumns.of(labels[key])
        batches[key] = batch
    return batches


def build_model_batch(
    model: str, source: str, partition: int, events: list[Prediction]
) -> ModelBatch:
    """The columnar batch of the given predictions (also used to rebuild stored samples)."""
    return _columns((source, partition, model), events)


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
