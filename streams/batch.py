"""Columnar batches: the events of one model from one partition, as numpy arrays.

Built once per batch by `split_batch` and shared by every detector, so no detector loops
over events in Python to get at a feature.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from typing import Any

import numpy as np

from streams.decode import DecodedBatch, LabelGroup, PredictionGroup, feature_columns
from streams.events import FeatureValue, Label, Position, Prediction, Target

_offset = attrgetter("offset")
_value = attrgetter("value")

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
    values: list[Target]
    ts: np.ndarray
    offsets: np.ndarray
    positions: list[Position] | None = None  # each label's real source position

    @classmethod
    def of(cls, labels: list[Label]) -> LabelColumns:
        return cls(
            ids=[lab.id for lab in labels],
            values=[lab.label for lab in labels],
            ts=np.fromiter((lab.ts for lab in labels), np.float64, len(labels)),
            offsets=np.fromiter((lab.position.offset for lab in labels), np.int64, len(labels)),
            positions=[lab.position for lab in labels],
        )


NO_CLIENT = 0  # the id of an event without a client


def knows_clients(ids: np.ndarray) -> bool:
    """Whether any event has a client (`ids`: `ModelBatch.client_ids`, `NO_CLIENT` for
    none): a collection being learned does; a stored reference does not."""
    return bool((ids != NO_CLIENT).any())


@lru_cache(maxsize=1 << 16)  # the same clients come back batch after batch
def client_hash(client: str) -> int:
    """A stable 63-bit id for a client (never `NO_CLIENT`): the same in every process, so
    that ids kept in a checkpoint still match the client's next events."""
    value = int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest(), "big")
    return (value >> 1) or 1


@dataclass(slots=True)
class ModelBatch:
    """Predictions (and labels) of one model for one detector state, in arrival order.

    `source`/`partition` are the state key; a finding must cite `position(i)`, the event's
    real position, which may be on another topic than the key names.
    """

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
    predictions: list[Target | None] = field(default_factory=list)
    scores: list[dict[str, float] | None] = field(default_factory=list)
    score: np.ndarray | None = None  # the optional single `score`, NaN where absent
    labels: LabelColumns | None = None
    # Each event's real position; None when they are all (source, partition, offsets[i]).
    positions: list[Position] | None = None
    # Each prediction's JSON record as received (None for batches built from event objects):
    # one object per event, what the recent window keeps instead of the decoded ones.
    records: list[bytes] | None = None
    _client_ids: np.ndarray | None = field(default=None, repr=False, compare=False)

    def client_ids(self) -> np.ndarray:
        """Per event, its client's `client_hash` (`NO_CLIENT` where it has none): computed
        once per batch, for every detector that counts clients."""
        if self._client_ids is None:
            self._client_ids = np.array(
                [NO_CLIENT if c is None else client_hash(c) for c in self.clients],
                dtype=np.int64,
            )
        return self._client_ids

    def __len__(self) -> int:
        return len(self.ts)

    def position(self, index: int) -> Position:
        """Where the `index`-th prediction came from: what a finding about it must cite."""
        if self.positions is not None:
            return self.positions[index]
        return Position(self.source, self.partition, int(self.offsets[index]))

    def feature_names(self) -> set[str]:
        return self.numeric.keys() | self.categorical.keys()

    def slice(self, start: int, stop: int) -> ModelBatch:
        """The predictions in [start, stop), without labels (a reference is about inputs)."""
        return ModelBatch(
            model=self.model,
            source=self.source,
            partition=self.partition,
            ts=self.ts[start:stop],
            offsets=self.offsets[start:stop],
            ids=self.ids[start:stop],
            clients=self.clients[start:stop],
            model_versions=self.model_versions[start:stop],
            rows=self.rows[start:stop],
            numeric={k: v[start:stop] for k, v in self.numeric.items()},
            categorical={k: v[start:stop] for k, v in self.categorical.items()},
            predictions=self.predictions[start:stop],
            scores=self.scores[start:stop],
            score=None if self.score is None else self.score[start:stop],
            positions=None if self.positions is None else self.positions[start:stop],
            records=None if self.records is None else self.records[start:stop],
        )

    def to_data(self) -> dict[str, Any]:
        """The predictions as plain data (lists and numeric arrays, no objects), for a
        checkpoint: `of_data` gives the batch back. Labels are left out (a batch kept in a
        state is a reference being learned, which is about inputs)."""
        return {
            "model": self.model,
            "source": self.source,
            "partition": self.partition,
            "ts": self.ts,
            "offsets": self.offsets,
            "ids": self.ids,
            "clients": self.clients,
            "model_versions": self.model_versions,
            "rows": self.rows,
            "numeric": self.numeric,
            "categorical": {name: column.tolist() for name, column in self.categorical.items()},
            "predictions": self.predictions,
            "scores": self.scores,
            "score": self.score,
            "positions": None if self.positions is None else [list(p) for p in self.positions],
            "records": self.records,
        }

    @classmethod
    def of_data(cls, data: dict[str, Any]) -> ModelBatch:
        """The batch `to_data` described."""
        positions = data["positions"]
        return cls(
            model=data["model"],
            source=data["source"],
            partition=data["partition"],
            ts=data["ts"],
            offsets=data["offsets"],
            ids=data["ids"],
            clients=data["clients"],
            model_versions=data["model_versions"],
            rows=data["rows"],
            numeric=data["numeric"],
            categorical={name: object_array(v) for name, v in data["categorical"].items()},
            predictions=data["predictions"],
            scores=data["scores"],
            score=data["score"],
            positions=None if positions is None else [Position(*p) for p in positions],
            records=data["records"],
        )

    def select(self, keep: np.ndarray) -> ModelBatch:
        """The predictions where the boolean mask `keep` is true, with the same labels (a
        label whose prediction is left out then joins nothing)."""
        index = np.flatnonzero(keep)
        picked = index.tolist()

        def pick(values: list[Any]) -> list[Any]:
            return [values[i] for i in picked]

        return ModelBatch(
            model=self.model,
            source=self.source,
            partition=self.partition,
            ts=self.ts[index],
            offsets=self.offsets[index],
            ids=pick(self.ids),
            clients=pick(self.clients),
            model_versions=pick(self.model_versions),
            rows=pick(self.rows),
            numeric={k: v[index] for k, v in self.numeric.items()},
            categorical={k: v[index] for k, v in self.categorical.items()},
            predictions=pick(self.predictions),
            scores=pick(self.scores),
            score=None if self.score is None else self.score[index],
            labels=self.labels,
            positions=None if self.positions is None else pick(self.positions),
            records=None if self.records is None else pick(self.records),
        )

    def since(self, start: int) -> ModelBatch:
        """The predictions from index `start` on, with the same labels (a reference's tail)."""
        rest = self.slice(start, len(self))
        rest.labels = self.labels
        return rest


def object_array(values: list[Any]) -> np.ndarray:
    """A list as a 1-d object array (np.array would nest lists, or guess a dtype)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def floats_or_none(column: np.ndarray) -> list[float | None]:
    """A float column (NaN where absent, as `ModelBatch.score`) as values and None."""
    absent = np.isnan(column)
    if not absent.any():
        return column.tolist()
    if absent.all():
        return [None] * len(column)
    return [None if math.isnan(v) else v for v in column.tolist()]


def concat_batches(batches: list[ModelBatch]) -> ModelBatch:
    """One batch of the predictions of several (of the same model), in order, without labels.

    A column missing from some batches is filled with missing values there, so the result is
    what `split_batch` would have built from all the events at once.
    """
    first = batches[0]

    def column(part: dict[str, np.ndarray], name: str, n: int, missing: object) -> np.ndarray:
        if name in part:
            return part[name]
        return np.full(n, missing, dtype=np.float64 if missing is not None else object)

    def columns(attr: str, missing: object) -> dict[str, np.ndarray]:
        names = sorted(set().union(*(getattr(b, attr).keys() for b in batches)))
        return {
            name: np.concatenate([column(getattr(b, attr), name, len(b), missing) for b in batches])
            for name in names
        }

    has_score = any(b.score is not None for b in batches)
    return ModelBatch(
        model=first.model,
        source=first.source,
        partition=first.partition,
        ts=np.concatenate([b.ts for b in batches]),
        offsets=np.concatenate([b.offsets for b in batches]),
        ids=[x for b in batches for x in b.ids],
        clients=[x for b in batches for x in b.clients],
        model_versions=[x for b in batches for x in b.model_versions],
        rows=[x for b in batches for x in b.rows],
        numeric=columns("numeric", np.nan),
        categorical=columns("categorical", None),
        predictions=[x for b in batches for x in b.predictions],
        scores=[x for b in batches for x in b.scores],
        score=(
            np.concatenate(
                [b.score if b.score is not None else np.full(len(b), np.nan) for b in batches]
            )
            if has_score
            else None
        ),
        positions=[b.position(i) for b in batches for i in range(len(b))],
        records=(
            [x for b in batches for x in b.records]  # type: ignore[union-attr]
            if all(b.records is not None for b in batches)
            else None
        ),
    )


def split_batch(
    decoded: DecodedBatch, state_key: StateKeyFn = own_partition
) -> dict[tuple[str, int, str], ModelBatch]:
    """Groups a decoded batch by (state source, state partition, model) into columnar batches."""
    predictions: dict[tuple[str, int, str], list[PredictionGroup]] = defaultdict(list)
    labels: dict[tuple[str, int, str], list[LabelGroup]] = defaultdict(list)
    for group in decoded.prediction_groups:
        predictions[(*state_key(group.source, group.partition), group.model)].append(group)
    for label_group in decoded.label_groups:
        key = (*state_key(label_group.source, label_group.partition), label_group.model)
        labels[key].append(label_group)
    values = list(map(_value, decoded.records))
    batches = {}
    for key in predictions.keys() | labels.keys():
        if key in predictions:
            group = _merge_predictions(predictions[key])
            batch = _model_batch(key, group)
            batch.records = list(map(values.__getitem__, group.order))
        else:
            batch = _model_batch(key, _prediction_columns(key, []))
        if key in labels:
            batch.labels = _label_columns(_merge_labels(labels[key]))
        batches[key] = batch
    return batches


def build_model_batch(
    model: str, source: str, partition: int, events: list[Prediction]
) -> ModelBatch:
    """The columnar batch of the given predictions (also used to rebuild stored samples)."""
    key = (source, partition, model)
    return _model_batch(key, _prediction_columns(key, events))


def _prediction_columns(key: tuple[str, int, str], events: list[Prediction]) -> PredictionGroup:
    source, partition, model = key
    rows = [e.features for e in events]
    return PredictionGroup(
        model=model,
        source=source,
        partition=partition,
        order=list(range(len(events))),
        positions=[e.position for e in events],
        ts=[e.ts for e in events],
        ids=[e.id for e in events],
        model_versions=[e.model_version for e in events],
        clients=[e.client for e in events],
        rows=rows,
        features=feature_columns(rows),
        predictions=[e.prediction for e in events],
        scores=[e.scores for e in events],
        score=[e.score for e in events],
    )


def _model_batch(key: tuple[str, int, str], group: PredictionGroup) -> ModelBatch:
    source, partition, model = key
    n = len(group.ts)
    batch = ModelBatch(
        model=model,
        source=source,
        partition=partition,
        ts=np.array(group.ts, dtype=np.float64),
        offsets=np.fromiter(map(_offset, group.positions), np.int64, n),
        positions=group.positions,
        ids=group.ids,
        clients=group.clients,
        model_versions=group.model_versions,
        rows=group.rows,
        predictions=group.predictions,
        scores=group.scores,
    )
    if group.score.count(None) < n:
        batch.score = np.array(group.score, dtype=np.float64)  # None -> NaN
    for name, values, types in group.features:
        kinds = types - {type(None)}
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


def _label_columns(group: LabelGroup) -> LabelColumns:
    n = len(group.ts)
    return LabelColumns(
        ids=group.ids,
        values=group.values,
        ts=np.array(group.ts, dtype=np.float64),
        offsets=np.fromiter(map(_offset, group.positions), np.int64, n),
        positions=group.positions,
    )


def _merge_predictions(groups: list[PredictionGroup]) -> PredictionGroup:
    """One group of several that feed the same state (Kafka topics sharing a partition
    number), in the order the events came in the batch."""
    if len(groups) == 1:
        return groups[0]
    first = groups[0]
    merged = PredictionGroup(
        model=first.model,
        source=first.source,
        partition=first.partition,
        **{name: _in_order(groups, name) for name in _PREDICTION_LISTS},
        features=[],
    )
    merged.features = feature_columns(merged.rows)
    return merged


def _merge_labels(groups: list[LabelGroup]) -> LabelGroup:
    if len(groups) == 1:
        return groups[0]
    first = groups[0]
    return LabelGroup(
        model=first.model,
        source=first.source,
        partition=first.partition,
        **{name: _in_order(groups, name) for name in _LABEL_LISTS},
    )


_PREDICTION_LISTS = (
    "order",
    "positions",
    "ts",
    "ids",
    "model_versions",
    "clients",
    "rows",
    "predictions",
    "scores",
    "score",
)
_LABEL_LISTS = ("order", "positions", "ids", "values", "ts")


def _in_order(groups: list[PredictionGroup] | list[LabelGroup], name: str) -> list[Any]:
    """The groups' `name` lists joined, sorted by the events' order in the batch."""
    order = [i for group in groups for i in group.order]
    items = [x for group in groups for x in getattr(group, name)]
    return [items[i] for i in sorted(range(len(order)), key=order.__getitem__)]
