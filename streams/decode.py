"""Raw bytes -> validated events, in batches; everything malformed becomes a dead letter.

The decoder never raises on bad input: each record either becomes an event or a
`DeadLetter` with a one-line reason naming the field at fault.

It works a batch at a time, column by column, because a Python-level step per record and
field is what made it slow: all records are parsed with one `map`, each field is pulled out
of all the objects at once (`map(dict.get, ...)`), and a column is checked by its set of
types. The events of each model and (source, partition) come out as a `PredictionGroup` or
`LabelGroup` of columns, which `streams.batch` turns into numpy arrays without another pass.

The column checks accept exactly what the per-record checks (`decode_record`) accept,
plausibility included (`Limits`: event-time years, magnitudes, probabilities, NUL). When
one fails, the records concerned go through the per-record checks, which name the culprits
and their reasons as they always did; the others go on as a group. Last come the stream
checks (`streams.watermark.StreamClocks`), which need the stream's history: a group's events
far ahead of its clock (or of the daemon's wall clock) are taken out as dead letters.

A NUL character (JSON `\\u0000`) in any string makes the record a dead letter rather than
being escaped: PostgreSQL cannot store it, and a value silently changed on one backend only
would give different incidents on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import chain, compress, repeat
from operator import attrgetter, itemgetter, not_
from typing import Any, TypeVar, overload

import orjson

from streams.events import (
    DeadLetter,
    FeatureValue,
    Label,
    Position,
    Prediction,
    RawRecord,
    Target,
)
from streams.watermark import StreamClocks
from streams.watermark import iso as _iso

DEFAULT_MAX_RECORD_BYTES = 1_000_000
DEAD_LETTER_PAYLOAD_BYTES = 4096
# JSON's escape of the NUL character, which PostgreSQL cannot store in text or JSON: a
# record whose bytes hold it is checked for a NUL in any of its strings (and rejected).
_NUL_ESCAPE = b"\\u0000"
_NUL_SEARCH = re.compile(re.escape(_NUL_ESCAPE)).search


@dataclass(frozen=True, slots=True)
class Limits:
    """What a plausible record holds; outside it a record is a dead letter (`[ingest]`).

    Checked record by record, with no state: event time within absolute bounds, numbers
    within a magnitude, probabilities within [0, 1] (class probabilities summing to about 1).
    The checks against each stream's own clock and the wall clock are `StreamClocks`'.
    """

    min_ts: float = 946_684_800.0  # 2000-01-01T00:00:00Z
    max_ts: float = 4_102_444_800.0  # 2100-01-01T00:00:00Z
    max_magnitude: float = 1e15  # of feature values, numeric predictions and labels, latency
    scores_sum_to_one: bool = True  # `scores` of two classes or more are a distribution
    scores_sum_tolerance: float = 0.02


DEFAULT_LIMITS = Limits()
# For records judged before (stored samples) and for training data (reference files, whose
# rows may carry no time at all): only what the columns need, no plausibility bounds.
UNJUDGED_LIMITS = Limits(
    min_ts=-math.inf, max_ts=math.inf, max_magnitude=math.inf, scores_sum_to_one=False
)

NoneType = type(None)
_TARGET_TYPES = frozenset({int, float, str, bool})
_FEATURE_TYPES = frozenset({int, float, str, bool, NoneType})
_NUMBER_TYPES = frozenset({int, float})
_OPTIONAL_NUMBER_TYPES = frozenset({int, float, NoneType})
_OPTIONAL_TARGET_TYPES = frozenset({int, float, str, bool, NoneType})
_IDENTIFIER_TYPES = frozenset({str, int})
_OPTIONAL_IDENTIFIER_TYPES: frozenset[type] = frozenset({str, int, NoneType})
_PREDICTION_FIELDS = frozenset(
    {
        "type",
        "model",
        "model_version",
        "id",
        "ts",
        "client",
        "features",
        "prediction",
        "scores",
        "score",
        "latency_ms",
    }
)

_value = attrgetter("value")
_size = attrgetter("size")
_position = attrgetter("position")
_source = attrgetter("source")
_partition = attrgetter("partition")
_source_partition = attrgetter("source", "partition")
_is_prediction = "prediction".__eq__

GroupKey = tuple[str, int, str]  # (source, partition, model) of the records
FeatureColumn = tuple[str, tuple[FeatureValue, ...], set[type]]  # name, values, their types
E = TypeVar("E", Prediction, Label)


class InvalidEvent(ValueError):
    """Raised inside the decoder for one record; becomes the dead letter's reason."""


@dataclass(slots=True)
class PredictionGroup:
    """Validated predictions of one model from one (source, partition), field by field.

    In arrival order; `order` is each event's index in the decoded batch, so groups that
    feed the same detector state can be merged back in order.
    """

    model: str
    source: str
    partition: int
    order: list[int]
    positions: list[Position]
    ts: list[float]
    ids: list[str | None]
    model_versions: list[str | None]
    clients: list[str | None]
    rows: list[dict[str, FeatureValue]]  # the feature objects as received
    features: list[FeatureColumn]  # the same, transposed; None where a row lacks a feature
    predictions: list[Target | None]
    scores: list[dict[str, float] | None]
    score: list[float | None]


@dataclass(slots=True)
class LabelGroup:
    """Validated labels of one model from one (source, partition), field by field."""

    model: str
    source: str
    partition: int
    order: list[int]
    positions: list[Position]
    ids: list[str]
    values: list[Target]
    ts: list[float]


class DecodedEvents(Sequence[E]):
    """A batch's predictions or labels as event objects, in arrival order, built on demand.

    The pipeline reads the groups' columns and only counts events, so it never pays for
    one object per event; anything that wants the objects gets exactly what the per-record
    decoder makes.
    """

    def __init__(self, count: int, build: Callable[[], list[E]]) -> None:
        self._count = count
        self._build: Callable[[], list[E]] = build
        self._events: list[E] | None = None

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> E: ...
    @overload
    def __getitem__(self, index: slice) -> list[E]: ...
    def __getitem__(self, index: int | slice) -> E | list[E]:
        return self._built()[index]

    def __iter__(self) -> Iterator[E]:
        return iter(self._built())

    def _built(self) -> list[E]:
        if self._events is None:
            self._events = self._build()
        return self._events


@dataclass(slots=True)
class DecodedBatch:
    prediction_groups: list[PredictionGroup] = field(default_factory=list)
    label_groups: list[LabelGroup] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # The records decoded, for `predictions` and `labels`: the JSON objects themselves are not
    # kept, so they die young instead of being promoted, and scanned, by the cyclic GC.
    records: list[RawRecord] = field(default_factory=list)
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    limits: Limits = DEFAULT_LIMITS

    @property
    def predictions(self) -> DecodedEvents[Prediction]:
        count = sum(len(group.order) for group in self.prediction_groups)
        return DecodedEvents(count, lambda: self._events(Prediction))

    @property
    def labels(self) -> DecodedEvents[Label]:
        count = sum(len(group.order) for group in self.label_groups)
        return DecodedEvents(count, lambda: self._events(Label))

    @property
    def size(self) -> int:
        return len(self.predictions) + len(self.labels) + len(self.dead_letters)

    def _events(self, kind: type[E]) -> list[E]:
        # The stream checks left some records out that pass the per-record ones.
        groups: list[PredictionGroup] | list[LabelGroup]
        groups = self.prediction_groups if kind is Prediction else self.label_groups
        accepted = set(chain.from_iterable(group.positions for group in groups))
        events = []
        for record in self.records:
            if record.position not in accepted:
                continue
            try:
                event = _decode_raw(record, self.max_record_bytes, self.limits)
            except InvalidEvent:
                continue  # a dead letter
            if isinstance(event, kind):
                events.append(event)
        return events


def decode_batch(
    records: Iterable[RawRecord],
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    limits: Limits = DEFAULT_LIMITS,
    clocks: StreamClocks | None = None,
    wall_now: float | None = None,
) -> DecodedBatch:
    """`clocks` (kept by the caller across batches) rejects records far ahead of their
    stream's clock, and with `wall_now` (the daemon's) of the wall clock; without them only
    each record's own checks apply (reference files, stored samples)."""
    records = list(records)
    letters: list[tuple[int, DeadLetter]] = []  # (record index, letter)

    def reject(index: int, exc: InvalidEvent) -> None:
        letters.append((index, _dead_letter(records[index], str(exc))))

    order, objects, positions = _parse(records, max_record_bytes, letters)
    kinds = _column(objects, "type")
    if kinds.count("prediction") + kinds.count("label") < len(kinds):
        known = [kind == "prediction" or kind == "label" for kind in kinds]
        _checked(*_select(list(map(not_, known)), order, objects, positions), limits, reject)
        order, objects, positions, kinds = _select(known, order, objects, positions, kinds)
    is_prediction = list(map(_is_prediction, kinds))
    is_label = list(map(not_, is_prediction))

    def judge(key: GroupKey, ts: list[float]) -> dict[int, str]:
        return {} if clocks is None else clocks.judge(key, ts, wall_now)

    prediction_groups = _groups(
        _prediction_group,
        *_select(is_prediction, order, objects, positions),
        limits,
        reject,
        judge,
    )
    label_groups = _groups(
        _label_group, *_select(is_label, order, objects, positions), limits, reject, judge
    )
    letters.sort(key=itemgetter(0))
    return DecodedBatch(
        prediction_groups=prediction_groups,
        label_groups=label_groups,
        dead_letters=[letter for _, letter in letters],
        records=records,
        max_record_bytes=max_record_bytes,
        limits=limits,
    )


def decode_record(
    value: bytes,
    position: Position,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    limits: Limits = DEFAULT_LIMITS,
) -> Prediction | Label:
    """One record, checked field by field: the reference for what `decode_batch` accepts
    (before the stream checks, which need the stream)."""
    return _event(_parse_object(value, max_record_bytes), position, limits)


def _parse(
    records: list[RawRecord], limit: int, letters: list[tuple[int, DeadLetter]]
) -> tuple[list[int], list[dict[str, Any]], list[Position]]:
    """(record index, JSON object, position) of each record that parses as an object.

    Usually the whole batch fits and parses in one `map`; otherwise each record is tried on
    its own and the failures become dead letters.
    """
    values = list(map(_value, records))
    fits = max(map(len, values), default=0) <= limit
    # One regex scan of the joined batch is 3-4 times cheaper than a scan per record (a match
    # straddling two records only sends the batch the per-record way, which is exact).
    clean = _NUL_SEARCH(b"".join(values)) is None
    if fits and clean and max(filter(None, map(_size, records)), default=0) <= limit:
        try:
            objects = list(map(orjson.loads, values))
        except orjson.JSONDecodeError:
            pass
        else:
            if set(map(type, objects)) <= {dict}:
                return list(range(len(records))), objects, list(map(_position, records))
    order, objects, positions = [], [], []
    for index, record in enumerate(records):
        try:
            obj = _parse_raw(record, limit)
        except InvalidEvent as exc:
            letters.append((index, _dead_letter(record, str(exc))))
            continue
        order.append(index)
        objects.append(obj)
        positions.append(record.position)
    return order, objects, positions


def _dead_letter(record: RawRecord, reason: str) -> DeadLetter:
    return DeadLetter(
        position=record.position,
        reason=reason,
        payload=record.value[:DEAD_LETTER_PAYLOAD_BYTES],
        received_at=time.time(),
    )


G = TypeVar("G", PredictionGroup, LabelGroup)


def _groups(
    build: Callable[[GroupKey, list[int], list[dict[str, Any]], list[Position], Limits], G | None],
    order: list[int],
    objects: list[dict[str, Any]],
    positions: list[Position],
    limits: Limits,
    reject: Callable[[int, InvalidEvent], None],
    judge: Callable[[GroupKey, list[float]], dict[int, str]],
) -> list[G]:
    """The records of one type as groups of columns, one per (source, partition, model).

    `build` returns None when a column check fails; the group's records are then checked
    one by one, the bad ones rejected, and the group built from the rest. Then `judge` (the
    stream checks) may reject some of the group's events by their event times.
    """
    if not objects:
        return []
    models = _column(objects, "model")
    if not (set(map(type, models)) <= {str} and "" not in models):
        named = [type(model) is str and model != "" for model in models]
        _checked(*_select(list(map(not_, named)), order, objects, positions), limits, reject)
        order, objects, positions, models = _select(named, order, objects, positions, models)
    groups = []
    for key, members in _group_members(models, positions):
        if members is None:
            part = order, objects, positions
        else:
            part = _pick(order, members), _pick(objects, members), _pick(positions, members)
        group = build(key, *part, limits)
        if group is None:
            part = _checked(*part, limits, reject)
            group = build(key, *part, limits)
            if group is None:
                raise AssertionError(f"column and record checks disagree on group {key}")
        late = judge(key, group.ts)
        if late:
            for index, reason in late.items():
                reject(group.order[index], InvalidEvent(reason))
            group = _without(group, late)
        if group.order:
            groups.append(group)
    return groups


def _without(group: G, dropped: dict[int, str]) -> G:
    """The group without the events at the `dropped` indices."""
    keep = [index not in dropped for index in range(len(group.order))]
    if isinstance(group, LabelGroup):
        return replace(
            group,
            order=list(compress(group.order, keep)),
            positions=list(compress(group.positions, keep)),
            ids=list(compress(group.ids, keep)),
            values=list(compress(group.values, keep)),
            ts=list(compress(group.ts, keep)),
        )
    rows = list(compress(group.rows, keep))
    return replace(
        group,
        order=list(compress(group.order, keep)),
        positions=list(compress(group.positions, keep)),
        ts=list(compress(group.ts, keep)),
        ids=list(compress(group.ids, keep)),
        model_versions=list(compress(group.model_versions, keep)),
        clients=list(compress(group.clients, keep)),
        rows=rows,
        features=feature_columns(rows),
        predictions=list(compress(group.predictions, keep)),
        scores=list(compress(group.scores, keep)),
        score=list(compress(group.score, keep)),
    )


def _group_members(
    models: list[str], positions: list[Position]
) -> list[tuple[GroupKey, list[int] | None]]:
    """(source, partition, model) -> indices of its records (None: all of them)."""
    if not models:
        return []
    if models.count(models[0]) == len(models):
        places = set(map(_source_partition, positions))
        if len(places) == 1:
            ((source, partition),) = places
            return [((source, partition, models[0]), None)]
    members: dict[GroupKey, list[int]] = defaultdict(list)
    keys = zip(map(_source, positions), map(_partition, positions), models, strict=True)
    for index, key in enumerate(keys):
        members[key].append(index)
    return list(members.items())


def _pick(items: list[Any], indices: list[int]) -> list[Any]:
    return list(map(items.__getitem__, indices))


_A = TypeVar("_A")
_B = TypeVar("_B")
_C = TypeVar("_C")
_D = TypeVar("_D")


@overload
def _select(
    mask: list[bool], a: list[_A], b: list[_B], c: list[_C], /
) -> tuple[list[_A], list[_B], list[_C]]: ...


@overload
def _select(
    mask: list[bool], a: list[_A], b: list[_B], c: list[_C], d: list[_D], /
) -> tuple[list[_A], list[_B], list[_C], list[_D]]: ...


def _select(mask: list[bool], *columns: list[Any]) -> tuple[list[Any], ...]:
    """The items of each column where `mask` is true (all of them, uncopied, if it always is)."""
    if all(mask):
        return columns
    return tuple(list(compress(column, mask)) for column in columns)


def _checked(
    order: list[int],
    objects: list[dict[str, Any]],
    positions: list[Position],
    limits: Limits,
    reject: Callable[[int, InvalidEvent], None],
) -> tuple[list[int], list[dict[str, Any]], list[Position]]:
    """The records that pass the per-record checks; the others are rejected with the reason."""
    kept: tuple[list[int], list[dict[str, Any]], list[Position]] = ([], [], [])
    for index, obj, position in zip(order, objects, positions, strict=True):
        try:
            _event(obj, position, limits)
        except InvalidEvent as exc:
            reject(index, exc)
            continue
        kept[0].append(index)
        kept[1].append(obj)
        kept[2].append(position)
    return kept


# --- column checks: each returns the column's values, or None if any value is invalid ---


def _column(objects: list[dict[str, Any]], name: str) -> list[Any]:
    return list(map(dict.get, objects, repeat(name)))


def _prediction_group(
    key: GroupKey,
    order: list[int],
    objects: list[dict[str, Any]],
    positions: list[Position],
    limits: Limits,
) -> PredictionGroup | None:
    ts = _ts_column(_column(objects, "ts"), limits)
    rows = _column(objects, "features")
    if ts is None or not set(map(type, rows)) <= {dict}:
        return None
    features = feature_columns(rows)
    magnitude = limits.max_magnitude
    if not all(
        kinds <= _FEATURE_TYPES and _numbers_within(values, kinds, -magnitude, magnitude)
        for _, values, kinds in features
    ):
        return None
    ids = _identifier_column(_column(objects, "id"), _OPTIONAL_IDENTIFIER_TYPES)
    versions = _identifier_column(_column(objects, "model_version"), _OPTIONAL_IDENTIFIER_TYPES)
    clients = _identifier_column(_column(objects, "client"), _OPTIONAL_IDENTIFIER_TYPES)
    if ids is None or versions is None or clients is None:
        return None
    predictions = _column(objects, "prediction")
    scores = _column(objects, "scores")
    score = _column(objects, "score")
    latency = _column(objects, "latency_ms")
    prediction_kinds = set(map(type, predictions))
    score_kinds = set(map(type, score))
    latency_kinds = set(map(type, latency))
    if not (
        prediction_kinds <= _OPTIONAL_TARGET_TYPES
        and _numbers_within(predictions, prediction_kinds, -magnitude, magnitude)
        and _valid_scores(scores, limits)
        and score_kinds <= _OPTIONAL_NUMBER_TYPES
        and _numbers_within(score, score_kinds, 0.0, 1.0)
        and latency_kinds <= _OPTIONAL_NUMBER_TYPES
        and _numbers_within(latency, latency_kinds, 0.0, magnitude)
    ):
        return None
    source, partition, model = key
    return PredictionGroup(
        model=model,
        source=source,
        partition=partition,
        order=order,
        positions=positions,
        ts=ts,
        ids=ids,
        model_versions=versions,
        clients=clients,
        rows=rows,
        features=features,
        predictions=predictions,
        scores=scores,
        score=score,
    )


def _label_group(
    key: GroupKey,
    order: list[int],
    objects: list[dict[str, Any]],
    positions: list[Position],
    limits: Limits,
) -> LabelGroup | None:
    ts = _ts_column(_column(objects, "ts"), limits)
    ids = _identifier_column(_column(objects, "id"), _IDENTIFIER_TYPES)
    values = _column(objects, "label")
    kinds = set(map(type, values))
    magnitude = limits.max_magnitude
    if (
        ts is None
        or ids is None
        or not kinds <= _TARGET_TYPES
        or not _numbers_within(values, kinds, -magnitude, magnitude)
    ):
        return None
    source, partition, model = key
    return LabelGroup(
        model=model,
        source=source,
        partition=partition,
        order=order,
        positions=positions,
        ids=ids,
        values=values,
        ts=ts,
    )


def _ts_column(values: list[Any], limits: Limits) -> list[float] | None:
    kinds = set(map(type, values))
    ts: list[float]
    if kinds <= {float}:
        ts = values
    elif kinds <= _NUMBER_TYPES:
        ts = list(map(float, values))
    elif kinds <= {int, float, str}:  # ISO-8601 strings
        try:
            ts = [parse_ts(v) if type(v) is str else float(v) for v in values]
        except InvalidEvent:
            return None
    else:
        return None
    if ts and not (limits.min_ts <= min(ts) and max(ts) <= limits.max_ts):
        return None
    return ts


def _numbers_within(values: Sequence[Any], kinds: set[type], low: float, high: float) -> bool:
    """Whether the column's numbers (not booleans) are all within [low, high]."""
    if not kinds & _NUMBER_TYPES:
        return True
    numbers = values if kinds <= _NUMBER_TYPES else [v for v in values if type(v) in _NUMBER_TYPES]
    return low <= min(numbers) and max(numbers) <= high


def _identifier_column(values: list[Any], allowed: frozenset[type]) -> list[Any] | None:
    kinds = set(map(type, values))
    if not kinds <= allowed or "" in values:
        return None
    if int in kinds:
        return [str(v) if type(v) is int else v for v in values]
    return values


def _valid_scores(values: list[Any], limits: Limits) -> bool:
    if not set(map(type, values)) <= {dict, NoneType} or {} in values:
        return False
    present = list(filter(None, values))
    if not present:
        return True
    probabilities = list(chain.from_iterable(map(dict.values, present)))
    if not set(map(type, probabilities)) <= _NUMBER_TYPES:
        return False
    if not (min(probabilities) >= 0.0 and max(probabilities) <= 1.0):
        return False
    if not limits.scores_sum_to_one:
        return True
    sums = list(map(math.fsum, map(dict.values, present)))
    if min(map(len, present)) == 1:
        sums = list(compress(sums, [len(s) > 1 for s in present]))
    low, high = 1.0 - limits.scores_sum_tolerance, 1.0 + limits.scores_sum_tolerance
    return not sums or (low <= min(sums) and max(sums) <= high)


def feature_columns(rows: list[dict[str, FeatureValue]]) -> list[FeatureColumn]:
    """(name, values, their types) per feature, None where a row lacks it.

    When every row has the same keys (the usual case) the transpose runs in C through
    itemgetter and zip; otherwise each feature is gathered with dict.get.
    """
    if not rows:
        return []
    names = list(rows[0])
    columns: list[tuple[str, tuple[FeatureValue, ...]]]
    if len(set(map(len, rows))) > 1:
        columns = _union_columns(rows)
    elif not names:
        columns = []  # no row has a feature
    else:
        # Same size and all of the first row's keys: the same keys.
        try:
            if len(names) == 1:
                columns = [(names[0], tuple(map(itemgetter(names[0]), rows)))]
            else:
                table = map(itemgetter(*names), rows)
                columns = list(zip(names, zip(*table, strict=True), strict=True))
        except KeyError:
            columns = _union_columns(rows)
    return [(name, values, set(map(type, values))) for name, values in columns]


def _union_columns(
    rows: list[dict[str, FeatureValue]],
) -> list[tuple[str, tuple[FeatureValue, ...]]]:
    union: dict[str, None] = {}
    for row in rows:
        union.update(dict.fromkeys(row))
    return [(name, tuple(row.get(name) for row in rows)) for name in union]


# --- the per-record checks: precise reasons, and the reference for the column checks ---


def _decode_raw(record: RawRecord, max_record_bytes: int, limits: Limits) -> Prediction | Label:
    return _event(_parse_raw(record, max_record_bytes), record.position, limits)


def _parse_raw(record: RawRecord, max_record_bytes: int) -> dict[str, Any]:
    """The record's JSON object; its full size (it may have been cut) is checked first."""
    size = record.size if record.size is not None else len(record.value)
    if size > max_record_bytes:
        raise InvalidEvent(f"record too large: {size} bytes (limit {max_record_bytes})")
    return _parse_object(record.value, max_record_bytes)


def _parse_object(value: bytes, max_record_bytes: int) -> dict[str, Any]:
    if len(value) > max_record_bytes:
        raise InvalidEvent(f"record too large: {len(value)} bytes (limit {max_record_bytes})")
    obj = _parse_json(value)
    if not isinstance(obj, dict):
        raise InvalidEvent(f"not a JSON object but {_json_type(obj)}")
    if _NUL_ESCAPE in value:
        where = _first_path(obj, _has_nul)
        if where is not None:
            where = where.replace("\x00", "\\u0000")
            raise InvalidEvent(
                f"field '{where}' contains a NUL character (\\u0000), which the database "
                "cannot store"
            )
    return obj


def _first_path(obj: Any, bad: Callable[[Any], bool], prefix: str = "") -> str | None:
    """The path of the first value, or dict key, that `bad` says is bad (`a.b[2]`), if any."""
    if bad(obj):
        return prefix or "<root>"
    if isinstance(obj, dict):
        for key, item in obj.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if bad(key):
                return path
            found = _first_path(item, bad, path)
            if found:
                return found
    elif isinstance(obj, list):
        for index, item in enumerate(obj):
            found = _first_path(item, bad, f"{prefix}[{index}]")
            if found:
                return found
    return None


def _has_nul(value: Any) -> bool:
    return isinstance(value, str) and "\x00" in value


def _is_non_finite(value: Any) -> bool:
    """NaN or infinity, or an integer too large for a double (infinite as one)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    return type(value) is int and abs(value) > sys.float_info.max


def _event(obj: dict[str, Any], position: Position, limits: Limits) -> Prediction | Label:
    kind = obj.get("type")
    if kind == "prediction":
        return _prediction(obj, position, limits)
    if kind == "label":
        return _label(obj, position, limits)
    if kind is None:
        raise InvalidEvent("missing required field 'type'")
    raise InvalidEvent(f"field 'type' must be 'prediction' or 'label', got {kind!r:.60}")


def _parse_json(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        # orjson rejects NaN/Infinity literals; say so precisely instead of "bad character".
        non_finite = _find_non_finite(value)
        if non_finite:
            raise InvalidEvent(
                f"field '{non_finite}' is NaN or infinite; a finite number is required"
            ) from None
        raise InvalidEvent(f"not valid JSON: {exc}") from None


def _find_non_finite(value: bytes) -> str | None:
    """Name the first field holding NaN/Infinity, if that is why the JSON was rejected."""

    def reject(_token: str) -> float:
        return math.nan

    try:
        obj = json.loads(value, parse_constant=reject)
    except (ValueError, RecursionError):
        return None
    return _first_path(obj, _is_non_finite)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _required(obj: dict[str, Any], name: str) -> Any:
    if name not in obj or obj[name] is None:
        raise InvalidEvent(f"missing required field '{name}'")
    return obj[name]


def _model(obj: dict[str, Any]) -> str:
    model = _required(obj, "model")
    if not isinstance(model, str) or not model:
        raise InvalidEvent(f"field 'model' must be a non-empty string, got {_json_type(model)}")
    return model


def _number(value: Any, name: str) -> float:
    """A JSON number (orjson never yields NaN or infinity; `json`'s fallback path does)."""
    if type(value) not in _NUMBER_TYPES:
        raise InvalidEvent(f"field '{name}' must be a number, got {_json_type(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidEvent(f"field '{name}' is NaN or infinite; a finite number is required")
    return number


def parse_ts(value: Any) -> float:
    """Event time as epoch seconds: a number, or an ISO-8601 string with a zone."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00", 1))
        except ValueError:
            raise InvalidEvent(f"field 'ts' is not an ISO-8601 time: {value!r:.60}") from None
        if parsed.tzinfo is None:
            raise InvalidEvent(f"field 'ts' has no time zone: {value!r:.60}")
        return parsed.timestamp()
    return _number(value, "ts")


def _event_ts(value: Any, limits: Limits) -> float:
    """`parse_ts`, and within the plausible years (epoch ms, us and ns named as such)."""
    ts = parse_ts(value)
    if limits.min_ts <= ts <= limits.max_ts:
        return ts
    shown = f"{value!r:.60}" if isinstance(value, str) else _number_text(value)
    if ts > limits.max_ts:
        for unit, scale in (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9)):
            if limits.min_ts <= ts / scale <= limits.max_ts:
                raise InvalidEvent(
                    f"field 'ts' {shown} looks like epoch {unit} ({_iso(ts / scale)}); "
                    "epoch seconds are expected"
                )
        raise InvalidEvent(
            f"field 'ts' {shown} is after {_iso(limits.max_ts)}, the latest plausible event "
            "time (ingest.max_event_time)"
        )
    raise InvalidEvent(
        f"field 'ts' {shown} is before {_iso(limits.min_ts)}, the earliest plausible event "
        "time (ingest.min_event_time)"
    )


def _number_text(value: Any) -> str:
    if type(value) is int:
        return str(value) if len(str(value)) <= 40 else f"a {len(str(value))}-digit integer"
    return repr(value)


def _within_magnitude(value: Any, name: str, limits: Limits) -> None:
    if type(value) in _NUMBER_TYPES and not (
        -limits.max_magnitude <= value <= limits.max_magnitude
    ):
        raise InvalidEvent(
            f"{name} is {_number_text(value)}, beyond the plausible magnitude "
            f"{limits.max_magnitude:g} (ingest.max_magnitude)"
        )


def _probability(value: float, name: str) -> None:
    if not (0.0 <= value <= 1.0):
        raise InvalidEvent(f"field '{name}' is {value!r}, not a probability in [0, 1]")


def _identifier(value: Any, name: str) -> str:
    if type(value) is str and value:
        return value
    if type(value) is int:
        return str(value)
    if type(value) is float and value.is_integer() and abs(value) >= 2.0**63:
        # The JSON parser reads integers beyond 64 bits as floats: the digits are lost.
        raise InvalidEvent(
            f"field '{name}' is an integer too large to keep exactly ({value:.4g}); send it as "
            "a string"
        )
    raise InvalidEvent(f"field '{name}' must be a non-empty string or an integer")


def _target(value: Any, name: str, limits: Limits) -> float | int | str | bool:
    if type(value) in _TARGET_TYPES:
        _within_magnitude(value, f"field '{name}'", limits)
        return value
    raise InvalidEvent(
        f"field '{name}' must be a number, string or boolean, got {_json_type(value)}"
    )


def _features(value: Any, limits: Limits) -> dict[str, Any]:
    # orjson never produces NaN or infinity (it rejects them), so a type check suffices; it
    # runs over all values at C speed and only a failure looks for the culprit.
    if type(value) is not dict:
        raise InvalidEvent(f"field 'features' must be an object, got {_json_type(value)}")
    if not _FEATURE_TYPES.issuperset(map(type, value.values())):
        for key, item in value.items():
            if type(item) not in _FEATURE_TYPES:
                raise InvalidEvent(
                    f"feature '{key}' must be a number, string, boolean or null, "
                    f"got {_json_type(item)}"
                )
    for key, item in value.items():
        _within_magnitude(item, f"feature '{key}'", limits)
    return value


def _scores(value: Any, limits: Limits) -> dict[str, float]:
    if type(value) is not dict or not value:
        raise InvalidEvent("field 'scores' must be a non-empty object of class -> probability")
    if not _NUMBER_TYPES.issuperset(map(type, value.values())):
        for key, item in value.items():
            _number(item, f"scores.{key}")
    for key, item in value.items():
        _probability(item, f"scores.{key}")
    if limits.scores_sum_to_one and len(value) > 1:
        total = math.fsum(value.values())
        tolerance = limits.scores_sum_tolerance
        if not (1.0 - tolerance <= total <= 1.0 + tolerance):
            raise InvalidEvent(
                f"field 'scores' sums to {total:.6g}, not 1 within {tolerance:g} "
                "(ingest.scores_sum_tolerance; ingest.scores_sum_to_one = false allows it)"
            )
    return value


def _prediction(obj: dict[str, Any], position: Position, limits: Limits) -> Prediction:
    model = _model(obj)
    ts = _event_ts(_required(obj, "ts"), limits)
    features = _features(_required(obj, "features"), limits)
    event = Prediction(model=model, ts=ts, features=features, position=position)
    if (raw := obj.get("id")) is not None:
        event.id = _identifier(raw, "id")
    if (raw := obj.get("model_version")) is not None:
        event.model_version = _identifier(raw, "model_version")
    if (raw := obj.get("client")) is not None:
        event.client = _identifier(raw, "client")
    if (raw := obj.get("prediction")) is not None:
        event.prediction = _target(raw, "prediction", limits)
    if (raw := obj.get("scores")) is not None:
        event.scores = _scores(raw, limits)
    if (raw := obj.get("score")) is not None:
        event.score = _number(raw, "score")
        _probability(raw, "score")
    if (raw := obj.get("latency_ms")) is not None:
        event.latency_ms = _number(raw, "latency_ms")
        if raw < 0:
            raise InvalidEvent(f"field 'latency_ms' is {raw!r}; a latency cannot be negative")
        _within_magnitude(raw, "field 'latency_ms'", limits)
    if not obj.keys() <= _PREDICTION_FIELDS:
        event.extra = {k: v for k, v in obj.items() if k not in _PREDICTION_FIELDS}
    return event


def _label(obj: dict[str, Any], position: Position, limits: Limits) -> Label:
    return Label(
        model=_model(obj),
        id=_identifier(_required(obj, "id"), "id"),
        label=_target(_required(obj, "label"), "label", limits),
        ts=_event_ts(_required(obj, "ts"), limits),
        position=position,
    )
