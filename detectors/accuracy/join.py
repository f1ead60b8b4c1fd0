"""Joins labels to predictions by `id`, in event time, with bounded memory.

Labels arrive minutes to days after their prediction, out of order, before it, twice, or
never. The join keeps three insertion-ordered collections:

- `pending`: predictions waiting for their label (`_Pending`), up to `max_pending` (200,000 by
  default), most of the join's memory. So a prediction is not a tuple of objects but a row of
  numpy columns, rows in arrival order: event time and lone score as float64; class scores as
  a float64 row plus a code for the tuple of class names every row with the same classes
  shares (scores a float row cannot give back equal, e.g. integer ones, are kept as given);
  version and prediction as references, strings interned. A dict maps each id to its arrival
  number. A row leaving is only marked dead, so the rows stay sorted by arrival number: a
  label finds its row by binary search, the oldest prediction is the first live row, and dead
  rows are dropped when the columns are full. A batch's class scores stay as given until the
  batch is done, so a label in the same batch gets its dict back without a round trip.
- `early`: labels that came before their prediction (or for an id never seen): few, and taken
  out from anywhere when their prediction comes, so an OrderedDict;
- `done`: ids already labelled -> label event time, remembered so a second label is counted
  as a duplicate: a plain dict, and a deque of its ids for O(1) removal of the oldest.

Everything is expired by event time: an entry older than `ttl` seconds behind the watermark
(the largest event time seen) is dropped, in arrival order, and counted; caps bound each map
whatever the event times say. `state()` describes the join as plain data, compactly (the
pending predictions as arrays), so the detector that owns the join checkpoints it with its
own snapshot and a restart keeps the pending joins (`LabelJoin.of_state`).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, compress, islice, repeat
from typing import Any

import numpy as np

from streams.batch import ModelBatch, floats_or_none
from streams.events import Position, Target

_NO_SCORES = -1  # the class-names code of a prediction without class scores
_KEPT_SCORES = -2  # ... of one whose scores are kept as given (`_Pending.kept`)
_MAX_CLASSES = 16  # wider scores stay dicts: the float rows are as wide as the widest
_MAX_CLASS_TUPLES = 1024  # distinct tuples of class names with a code; the rest are kept
_MAX_INTERNED = 4096  # distinct strings interned before the table starts over
_MIN_ROWS = 64


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
    at_position: list[Position]  # its real source position (a label's topic, or a prediction's)
    versions: list[str | None] = field(default_factory=list)
    predictions: list[object] = field(default_factory=list)
    scores: list[dict[str, float] | None] = field(default_factory=list)
    score: list[float | None] = field(default_factory=list)
    labels: list[object] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # the pairs' prediction ids

    def __len__(self) -> int:
        return len(self.pred_ts)


def _build(parts: list[Joined]) -> Joined:
    """One batch's pairs: those its predictions completed (early labels), then its labels'."""
    if not parts:
        empty = np.empty(0)
        return Joined(empty, empty, empty, [])
    if len(parts) == 1:
        return parts[0]
    return Joined(
        pred_ts=np.concatenate([p.pred_ts for p in parts]),
        label_ts=np.concatenate([p.label_ts for p in parts]),
        at_ts=np.concatenate([p.at_ts for p in parts]),
        at_position=[v for p in parts for v in p.at_position],
        versions=[v for p in parts for v in p.versions],
        predictions=[v for p in parts for v in p.predictions],
        scores=[v for p in parts for v in p.scores],
        score=[v for p in parts for v in p.score],
        labels=[v for p in parts for v in p.labels],
        ids=[v for p in parts for v in p.ids],
    )


class _Pending:
    """Predictions waiting for their label: one row each in numpy columns, in arrival order.

    `index` maps each id to its arrival number (a dict keeps insertion order; an id entered
    again keeps its place, as OrderedDict.update did). Rows are appended in arrival order and
    a row leaving is only marked dead (`alive`), so `arrival` stays sorted: a label finds its
    row by binary search, and the oldest prediction is the first live row from `head`. When
    the columns are full the dead rows are dropped (`_make_room`).

    The class scores of the rows the current batch appended stay as given (`fresh`) until
    `settle`, at the end of the batch: a label in the same batch (often the very next line)
    gets the dict itself back, as before, without encoding and rebuilding it. Iterating, `len`
    and `in` are about the pending ids, in arrival order.
    """

    _COLUMNS = ("arrival", "alive", "ids", "ts", "versions", "predictions", "code", "values")

    def __init__(self) -> None:
        self.index: dict[str, int] = {}  # id -> arrival number, in arrival order
        self.arrivals = 0  # arrival numbers given out
        self.head = 0  # the rows before it are dead
        self.used = 0  # rows written, live or dead
        self.fresh: list[dict[str, float] | None] = []  # scores of rows fresh_from.., as given
        self.fresh_from = 0
        self.class_names: list[tuple[str, ...]] = []  # by code
        self.class_codes: dict[tuple[str, ...], int] = {}
        self.kept: dict[int, object] = {}  # arrival number -> scores kept as given
        self.interned: dict[object, object] = {}  # strings, for their identity only
        self._allocate(_MIN_ROWS, width=0, score=False)

    def _allocate(self, size: int, width: int, score: bool) -> None:
        self.arrival = np.zeros(size, dtype=np.int64)
        self.alive = np.zeros(size, dtype=bool)
        self.ids = np.full(size, None, dtype=object)
        self.ts = np.zeros(size)
        self.versions = np.full(size, None, dtype=object)
        self.predictions = np.full(size, None, dtype=object)
        self.code = np.zeros(size, dtype=np.int16)  # class names code, or _NO/_KEPT_SCORES
        self.values = np.zeros((size, width))  # class scores, in the first len(names) cells
        # The lone score, NaN where absent; None until a prediction has one (most have none).
        self.score = np.full(size, np.nan) if score else None

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __contains__(self, pid: object) -> bool:
        return pid in self.index

    # ------------------------------------------------------------------ entering

    def put(self, pids: list[str], columns: _Columns) -> int:
        """Enters predictions (one per id, `columns` aligned with `pids`); an id already
        pending keeps its place and takes the new values, as OrderedDict.update did.
        Returns how many were already pending."""
        self.settle()
        first, count = self.arrivals, len(pids)
        before = len(self.index)
        # One pass: a pending id keeps its arrival number, the i-th id, if new, gets first + i.
        arrivals = list(map(self.index.setdefault, pids, range(first, first + count)))
        self.arrivals += count
        if len(self.index) - before == count:
            self._append(np.arange(first, first + count), pids, columns)
            return 0
        known = [i for i, arrival in enumerate(arrivals) if arrival < first]
        fresh = [i for i, arrival in enumerate(arrivals) if arrival >= first]
        rows = self.rows_of([arrivals[i] for i in known])
        if self.kept:
            for arrival in self.arrival[rows].tolist():
                self.kept.pop(arrival, None)
        overwrite = _pick(columns, known)
        self._write(rows, overwrite)
        self._write_scores(rows, overwrite[3])
        self._append(
            np.array([first + i for i in fresh], dtype=np.int64),
            [pids[i] for i in fresh],
            _pick(columns, fresh),
        )
        return len(known)

    def _append(self, arrivals: np.ndarray, pids: list[str], columns: _Columns) -> None:
        count = len(pids)
        if not count:
            return
        self._make_room(count)
        at = slice(self.used, self.used + count)
        self.arrival[at] = arrivals
        self.alive[at] = True
        self.ids[at] = np.fromiter(pids, dtype=object, count=count)
        self.code[at] = _NO_SCORES  # until `settle`
        self.fresh_from = self.used
        self.fresh = list(columns[3])
        self.used += count
        self._write(at, columns)

    def _write(self, rows: slice | np.ndarray, columns: _Columns) -> None:
        """Writes the values of predictions at `rows`, but their class scores."""
        ts, versions, predictions, _, score = columns
        interned = self.interned
        if len(interned) > _MAX_INTERNED:
            interned.clear()
        self.ts[rows] = ts
        count = len(versions)
        # fromiter: an object that is a sequence stays one object (numpy would unpack a list).
        versions = map(interned.setdefault, versions, versions)  # type: ignore[assignment]
        self.versions[rows] = np.fromiter(versions, dtype=object, count=count)
        values: list[object] | list[Target | None] = predictions
        if str in set(map(type, predictions)):
            values = [interned.setdefault(p, p) if type(p) is str else p for p in predictions]
        self.predictions[rows] = np.fromiter(values, dtype=object, count=count)
        if self.score is None and score is not None and not np.isnan(score).all():
            self.score = np.full(len(self.alive), np.nan)
        if self.score is not None:
            self.score[rows] = np.nan if score is None else score

    def settle(self) -> None:
        """Encodes the class scores of the fresh rows still pending."""
        if not self.fresh:
            return
        alive = self.alive[self.fresh_from : self.used]
        rows = np.flatnonzero(alive) + self.fresh_from
        self._write_scores(rows, list(compress(self.fresh, alive.tolist())))
        self.fresh = []

    def _write_scores(self, rows: np.ndarray, scores: list[dict[str, float] | None]) -> None:
        codes, values, kept = self._encode(scores)
        self.code[rows] = codes
        if values is not None:
            width = values.shape[1]
            if width > self.values.shape[1]:
                wider = np.zeros((len(self.values), width))
                wider[:, : self.values.shape[1]] = self.values
                self.values = wider
            self.values[rows, :width] = values
        if kept:
            arrivals = self.arrival[rows]
            for i, given in kept:
                self.kept[int(arrivals[i])] = given

    def _encode(
        self, scores: list[dict[str, float] | None]
    ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[int, object]]]:
        """Class scores as (code per prediction, float rows or None, (i, scores) kept as given).

        A dict becomes a float row when its values are floats (not NaN: a rebuilt NaN would not
        equal the given one) and it has at most _MAX_CLASSES classes; anything else is kept as
        given, so every prediction gets back scores equal to its own. The usual batch (same
        classes, in the same order, everywhere) takes a few C-level passes.
        """
        count = len(scores)
        if count and set(map(type, scores)) == {dict}:
            names = tuple(scores[0])  # type: ignore[arg-type]
            # One tuple of names repeated: every dict has exactly these keys, in this order.
            if list(chain.from_iterable(scores)) == list(names) * count:  # type: ignore[arg-type]
                flat = list(chain.from_iterable(map(dict.values, scores)))  # type: ignore[arg-type]
                if set(map(type, flat)) == {float}:
                    values = np.fromiter(flat, np.float64, len(flat)).reshape(count, len(names))
                    code = self._code(names)
                    if code is not None and not np.isnan(values).any():
                        return np.full(count, code, dtype=np.int16), values, []
        codes = np.full(count, _NO_SCORES, dtype=np.int16)
        rows: list[tuple[int, list[float]]] = []
        kept: list[tuple[int, object]] = []
        for i, given in enumerate(scores):
            if given is None:
                continue
            code = self._float_code(given)
            if code is None:
                codes[i] = _KEPT_SCORES
                kept.append((i, given))
            else:
                codes[i] = code
                rows.append((i, list(given.values())))
        if not rows:
            return codes, None, kept
        values = np.zeros((count, max(len(row) for _, row in rows)))
        for i, row in rows:
            values[i, : len(row)] = row
        return codes, values, kept

    def _float_code(self, scores: object) -> int | None:
        """The code of these scores' class names if they can be a float row, else None."""
        if type(scores) is not dict or not 0 < len(scores) <= _MAX_CLASSES:
            return None
        if not all(type(v) is float and not math.isnan(v) for v in scores.values()):
            return None
        return self._code(tuple(scores))

    def _code(self, names: tuple[str, ...]) -> int | None:
        """The code of a tuple of class names; None if too long, or the table is full."""
        code = self.class_codes.get(names)
        fits = 0 < len(names) <= _MAX_CLASSES and len(self.class_names) < _MAX_CLASS_TUPLES
        if code is None and fits:
            code = self.class_codes[names] = len(self.class_names)
            self.class_names.append(names)
        return code

    def _make_room(self, count: int) -> None:
        """Room for `count` more rows at the end (no fresh rows: `put` settled them).

        When the columns are full, the dead rows are dropped; the columns are resized to twice
        the rows then in use if fewer than half as many would be free, or over three times as
        many. So the rows moved are at most twice the predictions entered since the last move,
        and the columns at most twice as long as the predictions pending (at the cap: 1.5-2x).
        """
        size = len(self.alive)
        if self.used + count <= size:
            return
        live = np.flatnonzero(self.alive[self.head : self.used]) + self.head
        need = len(live) + count
        if not need + need // 2 <= size <= 4 * need:
            size = max(_MIN_ROWS, 2 * need)
        self._move(live, size)

    def _move(self, live: np.ndarray, size: int) -> None:
        """Moves the `live` rows to the top of columns of `size` rows (np.take: the fast
        gather, also for the 2-d `values`)."""
        n = len(live)
        names = self._COLUMNS if self.score is None else (*self._COLUMNS, "score")
        if size == len(self.alive):
            for name in names:
                column = getattr(self, name)
                column[:n] = np.take(column, live, axis=0)
            for column in (self.ids, self.versions, self.predictions):
                column[n : self.used] = None  # let go of the dead rows' objects
            self.alive[n : self.used] = False
        else:
            moved = {name: np.take(getattr(self, name), live, axis=0) for name in names}
            self._allocate(size, self.values.shape[1], self.score is not None)
            for name, column in moved.items():
                getattr(self, name)[:n] = column
        self.head, self.used = 0, n

    # ------------------------------------------------------------------ leaving

    def pop(self, ids: list[str]) -> list[int | None]:
        """Takes `ids` out of the index, in order (an id repeated finds itself gone): their
        arrival numbers, None for an id not pending. The rows of those found must then be
        read (`rows_of`, `pairs`) and `remove`d."""
        return list(map(self.index.pop, ids, repeat(None)))

    def rows_of(self, arrivals: list[int]) -> np.ndarray:
        """The rows of live predictions, by arrival number (binary search: rows are sorted)."""
        found = np.searchsorted(self.arrival[self.head : self.used], arrivals)
        return found + self.head

    def pairs(
        self,
        rows: np.ndarray,
        labels: list[object],
        label_ts: np.ndarray,
        positions: list[Position],
    ) -> Joined:
        """The pairs of the predictions at `rows` with their labels (which completed them)."""
        return Joined(
            pred_ts=self.ts[rows],
            label_ts=label_ts,
            at_ts=label_ts.copy(),
            at_position=positions,
            versions=self.versions[rows].tolist(),
            predictions=self.predictions[rows].tolist(),
            scores=self._decode(rows),
            score=[None] * len(rows) if self.score is None else floats_or_none(self.score[rows]),
            labels=labels,
            ids=self.ids[rows].tolist(),
        )

    def _decode(self, rows: np.ndarray) -> list[dict[str, float] | None]:
        """The class scores of `rows`: as given for fresh rows, else rebuilt."""
        fresh = rows >= self.fresh_from if self.fresh else None
        if fresh is None or not fresh.any():
            return self._rebuild(rows)
        given = self.fresh
        if fresh.all():
            return [given[i] for i in (rows - self.fresh_from).tolist()]
        rebuilt = iter(self._rebuild(rows[~fresh]))
        return [
            given[row - self.fresh_from] if is_fresh else next(rebuilt)
            for row, is_fresh in zip(rows.tolist(), fresh.tolist(), strict=True)
        ]

    def _rebuild(self, rows: np.ndarray) -> list[dict[str, float] | None]:
        """The class scores of settled `rows`, from their codes and float rows."""
        codes = self.code[rows]
        if len(codes) and codes[0] >= 0 and (codes == codes[0]).all():
            names = self.class_names[int(codes[0])]
            return _dicts(names, np.take(self.values, rows, axis=0)[:, : len(names)])
        scores: list[dict[str, float] | None] = []
        for row, code in zip(rows.tolist(), codes.tolist(), strict=True):
            if code == _NO_SCORES:
                scores.append(None)
            elif code == _KEPT_SCORES:
                scores.append(self.kept[int(self.arrival[row])])  # type: ignore[arg-type]
            else:
                names = self.class_names[code]
                values = self.values[row, : len(names)].tolist()
                scores.append(dict(zip(names, values, strict=True)))
        return scores

    def remove(self, rows: np.ndarray) -> None:
        """Marks `rows` dead, their ids already out of the index."""
        self.alive[rows] = False
        self.ids[rows] = None  # (a fresh row's dict goes at the end of the batch, with `fresh`)
        if self.kept:
            kept = self.code[rows] == _KEPT_SCORES
            for arrival in self.arrival[rows][kept].tolist():
                del self.kept[arrival]

    def drop_oldest(self, count: int) -> None:
        self._drop(self._oldest(count, None))

    def expire(self, cutoff: float) -> int:
        """Drops the oldest predictions up to the first whose event time is not below the
        cutoff (in arrival order, as before); returns how many."""
        self._skip_dead()
        if self.head == self.used or not self.ts[self.head] < cutoff:
            return 0
        rows = self._oldest(len(self.index), cutoff)
        self._drop(rows)
        return len(rows)

    def _drop(self, rows: np.ndarray) -> None:
        deque(map(self.index.__delitem__, self.ids[rows].tolist()), maxlen=0)  # in C
        self.remove(rows)

    def _oldest(self, limit: int, cutoff: float | None) -> np.ndarray:
        """The rows of the oldest predictions, oldest first: at most `limit`, and given a
        cutoff, only those before the first whose event time is not below it."""
        self._skip_dead()
        parts: list[np.ndarray] = []
        start, step = self.head, 256
        while limit > 0 and start < self.used:
            stop = min(self.used, start + step)
            rows = (np.flatnonzero(self.alive[start:stop]) + start)[:limit]
            if cutoff is not None:
                old = self.ts[rows] < cutoff
                if not old.all():
                    parts.append(rows[: int(old.argmin())])
                    break
            parts.append(rows)
            limit -= len(rows)
            start, step = stop, 2 * step
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.intp)

    def _skip_dead(self) -> None:
        """Moves `head` to the first live row; each dead row is passed once."""
        head, used = self.head, self.used
        while head < used and not self.alive[head]:
            chunk = self.alive[head : min(used, head + 4096)]
            first = int(chunk.argmax())
            head += first if chunk[first] else len(chunk)
        self.head = head

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """The live rows only, renumbered from 0, as plain data: compact, restored exactly."""
        self.settle()  # a no-op between batches
        live = np.flatnonzero(self.alive[self.head : self.used]) + self.head
        arrivals = self.arrival[live].tolist()
        return {
            "ids": list(self.index),  # in arrival order, as the live rows
            "ts": self.ts[live],
            "versions": self.versions[live].tolist(),
            "predictions": self.predictions[live].tolist(),
            "score": None if self.score is None else self.score[live],
            "code": self.code[live],
            "values": self.values[live],
            "class_names": self.class_names,
            # Usually none: no pass over every live row for nothing. Pairs, as the keys are
            # row numbers.
            "kept": (
                [[i, self.kept[a]] for i, a in enumerate(arrivals) if a in self.kept]
                if self.kept
                else []
            ),
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> _Pending:
        pending = cls()
        ids: list[str] = state["ids"]
        values: np.ndarray = state["values"]
        score: np.ndarray | None = state["score"]
        n = len(ids)
        pending._allocate(max(_MIN_ROWS, n + n // 2), values.shape[1], score is not None)
        pending.index = dict(zip(ids, range(n), strict=True))
        pending.arrivals = pending.used = pending.fresh_from = n
        pending.arrival[:n] = np.arange(n)
        pending.alive[:n] = True
        pending.ids[:n] = ids
        pending.ts[:n] = state["ts"]
        for name in ("versions", "predictions"):
            objects: list[object] = state[name]
            getattr(pending, name)[:n] = np.fromiter(objects, dtype=object, count=n)
        if pending.score is not None:
            pending.score[:n] = score
        pending.code[:n] = state["code"]
        pending.values[:n] = values
        pending.class_names = [tuple(names) for names in state["class_names"]]
        pending.class_codes = {names: code for code, names in enumerate(pending.class_names)}
        pending.kept = {i: scores for i, scores in state["kept"]}
        return pending


# The values of some predictions, aligned: (ts, versions, predictions, scores, lone scores
# with NaN where absent, or None for none at all).
_Columns = tuple[
    np.ndarray,
    list[str | None],
    list[Target | None],
    list[dict[str, float] | None],
    np.ndarray | None,
]


def _pick(columns: _Columns, indices: list[int]) -> _Columns:
    """The entries at `indices` of each column."""
    ts, versions, predictions, scores, score = columns
    return (
        ts[indices],
        [versions[i] for i in indices],
        [predictions[i] for i in indices],
        [scores[i] for i in indices],
        None if score is None else score[indices],
    )


def _dicts(names: tuple[str, ...], values: np.ndarray) -> list[dict[str, float] | None]:
    """One dict per row of `values`; two classes (the usual case) by a dict display over the
    two columns, about 3x faster than dict(zip())."""
    if len(names) == 2:
        first, second = names
        return [{first: a, second: b} for a, b in zip(*values.T.tolist(), strict=True)]
    return [dict(zip(names, row, strict=True)) for row in values.tolist()]


class LabelJoin:
    """The bounded, event-time join of one model's labels to its predictions."""

    def __init__(self, ttl: float, max_pending: int, max_early: int) -> None:
        self.ttl = ttl
        self.max_pending = max_pending
        self.max_early = max_early
        self.pending = _Pending()  # len, iter (ids in arrival order) and `in`, as a dict
        self.early: OrderedDict[str, tuple[object, float]] = OrderedDict()
        self.done: dict[str, float] = {}  # id -> label event time, in arrival order
        self._done_order: deque[str] = deque()  # the keys of `done`, in the same order
        self.watermark = -math.inf
        self.counters = JoinCounters()

    def state(self) -> dict[str, Any]:
        """The join as plain data (its caps and TTL are the owner's configuration)."""
        return {
            "pending": self.pending.state(),
            "early": [[lid, label, ts] for lid, (label, ts) in self.early.items()],
            "done": self.done,  # in arrival order
            "watermark": self.watermark,
            "counters": self.counters.as_dict(),
        }

    @classmethod
    def of_state(
        cls, state: dict[str, Any], ttl: float, max_pending: int, max_early: int
    ) -> LabelJoin:
        """The join `state()` described, under these caps and TTL (they apply from the next
        batch on, should they differ from the checkpointed join's)."""
        join = cls(ttl, max_pending, max_early)
        join.pending = _Pending.of_state(state["pending"])
        join.early = OrderedDict((lid, (label, ts)) for lid, label, ts in state["early"])
        join.done = state["done"]
        join._done_order = deque(join.done)
        join.watermark = state["watermark"]
        join.counters = JoinCounters(**state["counters"])
        return join

    def add(self, batch: ModelBatch) -> Joined:
        """Enters the batch's predictions, then its labels; returns the pairs completed."""
        out: list[Joined] = []
        if len(batch):
            self._add_predictions(batch, out)
            self.watermark = max(self.watermark, float(batch.ts.max()))
        labels = batch.labels
        if labels is not None and len(labels.ids):
            positions = labels.positions or [
                Position(batch.source, batch.partition, int(o)) for o in labels.offsets
            ]
            self._add_labels(labels.ids, labels.values, labels.ts, positions, out)
            self.watermark = max(self.watermark, float(labels.ts.max()))
        self._expire()
        self.pending.settle()
        return _build(out)

    def _add_predictions(self, batch: ModelBatch, out: list[Joined]) -> None:
        ids = batch.ids
        # id -> its last index: a repeated id's latest values, in the place of its first.
        new: dict[str | None, int] = dict(zip(ids, range(len(ids)), strict=True))
        unidentified = ids.count(None) if None in new else 0
        new.pop(None, None)
        c = self.counters
        c.unidentified += unidentified
        c.predictions += len(ids) - unidentified
        c.duplicate_predictions += len(ids) - unidentified - len(new)
        if self.early:
            matched = self.early.keys() & new.keys()
            if matched:
                order = sorted(matched, key=new.__getitem__)
                out.append(self._early_pairs(batch, [new.pop(pid) for pid in order], order))
                c.early += len(matched)
                c.joined += len(matched)
        columns: _Columns = (
            batch.ts,
            batch.model_versions,
            batch.predictions,
            batch.scores,
            batch.score,
        )
        if len(new) != len(ids):
            columns = _pick(columns, list(new.values()))
        c.duplicate_predictions += self.pending.put(list(new), columns)  # type: ignore[arg-type]
        excess = len(self.pending) - self.max_pending
        if excess > 0:
            self.pending.drop_oldest(excess)
            c.evicted_predictions += excess

    def _early_pairs(self, batch: ModelBatch, rows: list[int], pids: list[str]) -> Joined:
        """The pairs of early labels completed by the batch's predictions at `rows`."""
        labels, label_ts = [], []
        for pid in pids:
            label, ts = self.early.pop(pid)
            labels.append(label)
            label_ts.append(ts)
            self._mark_done(pid, ts)
        score = None if batch.score is None else floats_or_none(batch.score[rows])
        return Joined(
            pred_ts=np.array(batch.ts[rows], dtype=np.float64),
            label_ts=np.array(label_ts, dtype=np.float64),
            at_ts=np.array(batch.ts[rows], dtype=np.float64),
            at_position=[batch.position(i) for i in rows],
            versions=[batch.model_versions[i] for i in rows],
            predictions=[batch.predictions[i] for i in rows],
            scores=[batch.scores[i] for i in rows],
            score=[None] * len(rows) if score is None else score,
            labels=labels,
            ids=pids,
        )

    def _add_labels(
        self,
        ids: list[str],
        values: list[Target],
        ts: np.ndarray,
        positions: list[Position],
        out: list[Joined],
    ) -> None:
        done, early, pending = self.done, self.early, self.pending
        c = self.counters
        c.labels += len(ids)
        # Every label takes its prediction out of `pending`, in order (a second label for an
        # id finds it gone). Usually each one finds it: the pairs are then made column-wise.
        found = pending.pop(ids)
        if None not in found:
            arrivals: list[int] = found  # type: ignore[assignment]
            before = len(done)
            done.update(zip(ids, ts.tolist(), strict=True))
            added = len(done) - before
            if added == len(ids):
                self._done_order.extend(ids)
            else:  # some were done already (and predicted again since): they keep their place
                fresh = list(islice(reversed(done), added))  # the keys `update` appended
                self._done_order.extend(reversed(fresh))
        else:
            joined = []
            duplicates = 0
            columns = zip(ids, found, values, ts.tolist(), strict=True)
            for i, (lid, arrival, value, label_ts) in enumerate(columns):
                if arrival is not None:
                    joined.append(i)
                    self._mark_done(lid, label_ts)
                elif lid in done or lid in early:
                    duplicates += 1
                else:
                    early[lid] = (value, label_ts)
            c.duplicates += duplicates
            arrivals = [found[i] for i in joined]  # type: ignore[misc]
            values, ts = [values[i] for i in joined], ts[joined]
            positions = [positions[i] for i in joined]
        excess = len(early) - self.max_early
        for _ in range(max(0, excess)):
            early.popitem(last=False)
        c.evicted_labels += max(0, excess)
        if arrivals:
            rows = pending.rows_of(arrivals)
            label_ts = np.array(ts, dtype=np.float64)
            out.append(pending.pairs(rows, list(values), label_ts, positions))
            pending.remove(rows)
            c.joined += len(arrivals)

    def _mark_done(self, lid: str, label_ts: float) -> None:
        if lid not in self.done:
            self._done_order.append(lid)
        self.done[lid] = label_ts

    def _expire(self) -> None:
        """Drops, oldest arrival first, what is older than the TTL behind the watermark."""
        cutoff = self.watermark - self.ttl
        c = self.counters
        c.expired_unlabelled += self.pending.expire(cutoff)
        early = self.early
        while early and next(iter(early.values()))[1] < cutoff:
            early.popitem(last=False)
            c.unknown_ids += 1
        done, order = self.done, self._done_order
        while order and done[order[0]] < cutoff:
            del done[order.popleft()]
        for _ in range(max(0, len(done) - self.max_pending)):
            del done[order.popleft()]
