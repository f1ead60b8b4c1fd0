"""Joins labels to predictions by `id`, in event time, with bounded memory.

Labels arrive minutes to days after their prediction, out of order, before it, twice, or
never. The join keeps three insertion-ordered maps (OrderedDict: O(1) removal of the oldest):

- `pending`: predictions waiting for their label;
- `early`: labels that came before their prediction (or for an id never seen);
- `done`: ids already labelled, remembered so a second label is counted as a duplicate.

Everything is expired by event time: an entry older than `ttl` seconds behind the watermark
(the largest event time seen) is dropped, in arrival order, and counted; caps bound each map
whatever the event times say. The state is plain data, so the detector that owns the join
checkpoints it with its own snapshot and a restart keeps the pending joins.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from streams.batch import ModelBatch

# What a pending prediction keeps: (ts, model_version, prediction, scores, score).
PendingPrediction = tuple[float, str | None, object, dict[str, float] | None, float | None]


@dataclass(slots=True)
class JoinCounters:
    """What happened to every prediction and label; all cumulative."""

    predictions: int = 0  # predictions with an id, entered into the join
    unidentified: int = 0  # predictions without an id: cannot be labelled
    labels: int = 0
    joined: int = 0
    early: int = 0  # labels that arrived before their prediction and were joined later
    duplicates: int = 0  # second and later labels for an id (the first one counts)
    duplicate_predictions: int = 0  # a prediction id seen again while pending: latest kept
    unknown_ids: int = 0  # labels never matched: no prediction within the TTL
    expired_unlabelled: int = 0  # predictions whose label did not come within the TTL
    evicted_predictions: int = 0  # dropped unlabelled because `max_pending` was reached
    evicted_labels: int = 0  # early labels dropped because `max_early` was reached

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class Joined:
    """Prediction/label pairs completed by one batch, in completion order (columnar)."""

    pred_ts: np.ndarray
    label_ts: np.ndarray
    at_ts: np.ndarray  # event time of the event that completed the pair (this batch's)
    at_offset: np.ndarray  # its source offset
    versions: list[str | None] = field(default_factory=list)
    predictions: list[object] = field(default_factory=list)
    scores: list[dict[str, float] | None] = field(default_factory=list)
    score: list[float | None] = field(default_factory=list)
    labels: list[object] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pred_ts)


# A completed pair as the join collects it: (prediction, label, label ts, at ts, at offset).
JoinedRow = tuple[PendingPrediction, object, float, float, int]


def _build(rows: list[JoinedRow]) -> Joined:
    """The pairs as columns; the transposes run in C (zip), not per pair in Python."""
    if not rows:
        empty = np.empty(0)
        return Joined(empty, empty, empty, np.empty(0, dtype=np.int64))
    preds, labels, label_ts, at_ts, at_offset = zip(*rows, strict=True)
    pred_ts, versions, predictions, scores, score = zip(*preds, strict=True)
    return Joined(
        pred_ts=np.array(pred_ts, dtype=np.float64),
        label_ts=np.array(label_ts, dtype=np.float64),
        at_ts=np.array(at_ts, dtype=np.float64),
        at_offset=np.array(at_offset, dtype=np.int64),
        versions=list(versions),
        predictions=list(predictions),
        scores=list(scores),
        score=list(score),
        labels=list(labels),
    )


class LabelJoin:
    """The bounded, event-time join of one model's labels to its predictions."""

    def __init__(self, ttl: float, max_pending: int, max_early: int) -> None:
        self.ttl = ttl
        self.max_pending = max_pending
        self.max_early = max_early
        self.pending: OrderedDict[str, PendingPrediction] = OrderedDict()
        self.early: OrderedDict[str, tuple[object, float]] = OrderedDict()
        self.done: OrderedDict[str, float] = OrderedDict()  # id -> label event time
        self.watermark = -math.inf
        self.counters = JoinCounters()

    def add(self, batch: ModelBatch) -> Joined:
        """Enters the batch's predictions, then its labels; returns the pairs completed."""
        out: list[JoinedRow] = []
        if len(batch):
            self._add_predictions(batch, out)
            self.watermark = max(self.watermark, float(batch.ts.max()))
        labels = batch.labels
        if labels is not None and len(labels.ids):
            self._add_labels(labels.ids, labels.values, labels.ts, labels.offsets, out)
            self.watermark = max(self.watermark, float(labels.ts.max()))
        self._expire()
        return _build(out)

    def _add_predictions(self, batch: ModelBatch, out: list[JoinedRow]) -> None:
        ids = batch.ids
        scores = repeat(None) if batch.score is None else _floats_or_none(batch.score)
        # `scores` may be an endless repeat(None): zip stops at the columns' common length.
        rows = zip(  # noqa: B905
            batch.ts.tolist(), batch.model_versions, batch.predictions, batch.scores, scores
        )
        new: dict[str | None, PendingPrediction] = dict(zip(ids, rows, strict=False))
        unidentified = ids.count(None)
        new.pop(None, None)
        c = self.counters
        c.unidentified += unidentified
        c.predictions += len(ids) - unidentified
        c.duplicate_predictions += len(ids) - unidentified - len(new)
        if self.early:
            matched = self.early.keys() & new.keys()
            if matched:
                where = {pid: i for i, pid in enumerate(ids) if pid in matched}
                ts, offsets = batch.ts, batch.offsets
                for pid in sorted(matched, key=where.__getitem__):
                    label, label_ts = self.early.pop(pid)
                    i = where[pid]
                    out.append((new.pop(pid), label, label_ts, float(ts[i]), int(offsets[i])))
                    self.done[pid] = label_ts
                c.early += len(matched)
                c.joined += len(matched)
        before = len(self.pending)
        self.pending.update(new)  # type: ignore[arg-type]  # None was popped
        c.duplicate_predictions += before + len(new) - len(self.pending)
        excess = len(self.pending) - self.max_pending
        for _ in range(max(0, excess)):
            self.pending.popitem(last=False)
        c.evicted_predictions += max(0, excess)

    def _add_labels(
        self,
        ids: list[str],
        values: list[object],
        ts: np.ndarray,
        offsets: np.ndarray,
        out: list[JoinedRow],
    ) -> None:
        done, early = self.done, self.early
        c = self.counters
        c.labels += len(ids)
        before = len(out)
        duplicates = 0
        times, offs = ts.tolist(), offsets.tolist()
        # Every label takes its prediction out of `pending`, in order (a second label for an
        # id finds it gone). Usually each one finds it: the pairs are then made in C.
        preds = list(map(self.pending.pop, ids, repeat(None)))
        if None not in preds:
            out.extend(zip(preds, values, times, times, offs, strict=True))
            done.update(zip(ids, times, strict=True))
        else:
            columns = zip(ids, preds, values, times, offs, strict=True)
            for lid, pred, value, label_ts, offset in columns:
                if pred is not None:
                    out.append((pred, value, label_ts, label_ts, offset))
                    done[lid] = label_ts
                elif lid in done or lid in early:
                    duplicates += 1
                else:
                    early[lid] = (value, label_ts)
        c.joined += len(out) - before
        c.duplicates += duplicates
        excess = len(early) - self.max_early
        for _ in range(max(0, excess)):
            early.popitem(last=False)
        c.evicted_labels += max(0, excess)

    def _expire(self) -> None:
        """Drops, oldest arrival first, what is older than the TTL behind the watermark."""
        cutoff = self.watermark - self.ttl
        c = self.counters
        pending = self.pending
        while pending and next(iter(pending.values()))[0] < cutoff:
            pending.popitem(last=False)
            c.expired_unlabelled += 1
        early = self.early
        while early and next(iter(early.values()))[1] < cutoff:
            early.popitem(last=False)
            c.unknown_ids += 1
        done = self.done
        while done and next(iter(done.values())) < cutoff:
            done.popitem(last=False)
        excess = len(done) - self.max_pending
        for _ in range(max(0, excess)):
            done.popitem(last=False)


def _floats_or_none(column: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else v for v in column.tolist()]
