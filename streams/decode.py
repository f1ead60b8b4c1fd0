"""Raw bytes -> validated events, in batches; everything malformed becomes a dead letter.

The decoder never raises on bad input: each record either becomes an event or a
`DeadLetter` with a one-line reason naming the field at fault.

It works a batch at a time, column by column, because a Python-level step per record and
field is what made it slow: all records are parsed with one `map`, each field is pulled out
of all the objects at once (`map(dict.get, ...)`), and a column is checked by its set of
types. The events of each model and (source, partition) come out as a `PredictionGroup` or
`LabelGroup` of columns, which `streams.batch` turns into numpy arrays without another pass.

The column checks accept exactly what the per-record checks (`decode_record`) accept. When
one fails, the records concerned go through the per-record checks, which name the culprits
and their reasons as they always did; the others go on as a group.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
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

DEFAULT_MAX_RECORD_BYTES = 1_000_000
DEAD_LETTER_PAYLOAD_BYTES = 4096

NoneType = type(None)
_TARGET_TYPES = frozenset({int, float, str, bool})
_FEATURE_TYPES = frozenset({int, float, str, bool, NoneType})
_NUMBER_TYPES = frozenset({int, float})
_OPTIONAL_NUMBER_TYPES = frozenset({int, float, NoneType})
_OPTIONAL_TARGET_TYPES = frozenset({int, float, str, bool, NoneType})
_IDENTIFIER_TYPES = frozenset({str, int})
_OPTIONAL_IDENTIFIER_TYPES = frozenset({str, int, NoneType})
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
        self._build = build
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
        events = []
        for record in self.records:
            try:
                event = _decode_raw(record, self.max_record_bytes)
            except InvalidEvent:
                continue  # a dead letter
            if isinstance(event, kind):
                events.append(event)
        return events


def decode_batch(
    records: Iterable[RawRecord], max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> DecodedBatch:
    records = list(records)
    letters: list[tuple[int, DeadLetter]] = []  # (record index, letter)

    def reject(index: int, exc: InvalidEvent) -> None:
        letters.append((index, _dead_letter(records[index], str(exc))))

    order, objects, positions = _parse(records, max_record_bytes, letters)
    kinds = _column(objects, "type")
    if kinds.count("prediction") + kinds.count("label") < len(kinds):
        known = [kind == "prediction" or kind == "label" for kind in kinds]
        _checked(*_select(list(map(not_, known)), order, objects, positions), reject)
        order, objects, positions, kinds = _select(known, order, objects, positions, kinds)
    is_prediction = list(map(_is_prediction, kinds))
    is_label = list(map(not_, is_prediction))
    prediction_groups = _groups(
        _prediction_group, *_select(is_prediction, order, objects, positions), reject
    )
    label_groups = _groups(_label_group, *_select(is_label, order, objects, positions), reject)
    letters.sort(key=itemgetter(0))
    return DecodedBatch(
        prediction_groups=prediction_groups,
        label_groups=label_groups,
        dead_letters=[letter for _, letter in letters],
        records=records,
        max_record_bytes=max_record_bytes,
    )


def decode_record(
    value: bytes, position: Position, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Prediction | Label:
    """One record, checked field by field: the reference for what `decode_batch` accepts."""
    return _event(_parse_object(value, max_record_bytes), position)


def _parse(
    records: list[RawRecord], limit: int, letters: list[tuple[int, DeadLetter]]
) -> tuple[list[int], list[dict[str, Any]], list[Position]]:
    """(record index, JSON object, position) of each record that parses as an object.

    Usually the whole batch fits and parses in one `map`; otherwise each record is tried on
    its own and the failures become dead letters.
    """
    values = list(map(_value, records))
    fits = max(map(len, values), default=0) <= limit
    if fits and max(filter(None, map(_size, records)), default=0) <= limit:
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
    build: Callable[[GroupKey, list[int], list[dict[str, Any]], list[Position]], G | None],
    order: list[int],
    objects: list[dict[str, Any]],
    positions: list[Position],
    reject: Callable[[int, InvalidEvent], None],
) -> list[G]:
    """The records of one type as groups of columns, one per (source, partition, model).

    `build` returns None when a column check fails; the group's records are then checked
    one by one, the bad ones rejected, and the group built from the rest.
    """
    if not objects:
        return []
    models = _column(objects, "model")
    if not (set(map(type, models)) <= {str} and "" not in models):
        named = [type(model) is str and model != "" for model in models]
        _checked(*_select(list(map(not_, named)), order, objects, positions), reject)
        order, objects, positions, models = _select(named, order, objects, positions, models)
    groups = []
    for key, members in _group_members(models, positions):
        if members is None:
            part = order, objects, positions
        else:
            part = _pick(order, members), _pick(objects, members), _pick(positions, members)
        group = build(key, *part)
        if group is None:
            part = _checked(*part, reject)
            group = build(key, *part)
            if group is None:
                raise AssertionError(f"column and record checks disagree on group {key}")
        if group.order:
            groups.append(group)
    return groups


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


def _select(mask: list[bool], *columns: list[Any]) -> tuple[list[Any], ...]:
    """The items of each column where `mask` is true (all of them, uncopied, if it always is)."""
    if all(mask):
        return columns
    return tuple(list(compress(column, mask)) for column in columns)


def _checked(
    order: list[int],
    objects: list[dict[str, Any]],
    positions: list[Position],
    reject: Callable[[int, InvalidEvent], None],
) -> tuple[list[int], list[dict[str, Any]], list[Position]]:
    """The records that pass the per-record checks; the others are rejected with the reason."""
    kept: tuple[list[int], list[dict[str, Any]], list[Position]] = ([], [], [])
    for index, obj, position in zip(order, objects, positions, strict=True):
        try:
            _event(obj, position)
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
    key: GroupKey, order: list[int], objects: list[dict[str, Any]], positions: list[Position]
) -> PredictionGroup | None:
    ts = _ts_column(_column(objects, "ts"))
    rows = _column(objects, "features")
    if ts is None or not set(map(type, rows)) <= {dict}:
        return None
    features = feature_columns(rows)
    if not all(kinds <= _FEATURE_TYPES for _, _, kinds in features):
        return None
    ids = _identifier_column(_column(objects, "id"), _OPTIONAL_IDENTIFIER_TYPES)
    versions = _identifier_column(_column(objects, "model_version"), _OPTIONAL_IDENTIFIER_TYPES)
    clients = _identifier_column(_column(objects, "client"), _OPTIONAL_IDENTIFIER_TYPES)
    if ids is None or versions is None or clients is None:
        return None
    predictions = _column(objects, "prediction")
    scores = _column(objects, "scores")
    score = _column(objects, "score")
    if not (
        set(map(type, predictions)) <= _OPTIONAL_TARGET_TYPES
        and _valid_scores(scores)
        and set(map(type, score)) <= _OPTIONAL_NUMBER_TYPES
        and set(map(type, _column(objects, "latency_ms"))) <= _OPTIONAL_NUMBER_TYPES
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
    key: GroupKey, order: list[int], objects: list[dict[str, Any]], positions: list[Position]
) -> LabelGroup | None:
    ts = _ts_column(_column(objects, "ts"))
    ids = _identifier_column(_column(objects, "id"), _IDENTIFIER_TYPES)
    values = _column(objects, "label")
    if ts is None or ids is None or not set(map(type, values)) <= _TARGET_TYPES:
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


def _ts_column(values: list[Any]) -> list[float] | None:
    kinds = set(map(type, values))
    if kinds <= {float}:
        return values
    if kinds <= _NUMBER_TYPES:
        return list(map(float, values))
    if kinds <= {int, float, str}:  # ISO-8601 strings
        try:
            return [parse_ts(v) if type(v) is str else float(v) for v in values]
        except InvalidEvent:
            return None
    return None


def _identifier_column(values: list[Any], allowed: frozenset[type]) -> list[Any] | None:
    kinds = set(map(type, values))
    if not kinds <= allowed or "" in values:
        return None
    if int in kinds:
        return [str(v) if type(v) is int else v for v in values]
    return values


def _valid_scores(values: list[Any]) -> bool:
    if not set(map(type, values)) <= {dict, NoneType} or {} in values:
        return False
    present = filter(None, values)
    return set(map(type, chain.from_iterable(map(dict.values, present)))) <= _NUMBER_TYPES


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


def _decode_raw(record: RawRecord, max_record_bytes: int) -> Prediction | Label:
    return _event(_parse_raw(record, max_record_bytes), record.position)


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
    return obj


def _event(obj: dict[str, Any], position: Position) -> Prediction | Label:
    kind = obj.get("type")
    if kind == "prediction":
        return _prediction(obj, position)
    if kind == "label":
        return _label(obj, position)
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
    return _non_finite_path(obj, "")


def _non_finite_path(obj: Any, prefix: str) -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return prefix or "<root>"
    if isinstance(obj, dict):
        for key, item in obj.items():
            found = _non_finite_path(item, f"{prefix}.{key}" if prefix else str(key))
            if found:
                return found
    elif isinstance(obj, list):
        for index, item in enumerate(obj):
            found = _non_finite_path(item, f"{prefix}[{index}]")
            if found:
                return found
    return None


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


def _identifier(value: Any, name: str) -> str:
    if type(value) is str and value:
        return value
    if type(value) is int:
        return str(value)
    raise InvalidEvent(f"field '{name}' must be a non-empty string or an integer")


def _target(value: Any, name: str) -> float | int | str | bool:
    if type(value) in _TARGET_TYPES:
        return value
    raise InvalidEvent(
        f"field '{name}' must be a number, string or boolean, got {_json_type(value)}"
    )


def _features(value: Any) -> dict[str, Any]:
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
    return value


def _scores(value: Any) -> dict[str, float]:
    if type(value) is not dict or not value:
        raise InvalidEvent("field 'scores' must be a non-empty object of class -> probability")
    if not _NUMBER_TYPES.issuperset(map(type, value.values())):
        for key, item in value.items():
            _number(item, f"scores.{key}")
    return value


def _prediction(obj: dict[str, Any], position: Position) -> Prediction:
    model = _model(obj)
    ts = parse_ts(_required(obj, "ts"))
    features = _features(_required(obj, "features"))
    event = Prediction(model=model, ts=ts, features=features, position=position)
    if (raw := obj.get("id")) is not None:
        event.id = _identifier(raw, "id")
    if (raw := obj.get("model_version")) is not None:
        event.model_version = _identifier(raw, "model_version")
    if (raw := obj.get("client")) is not None:
        event.client = _identifier(raw, "client")
    if (raw := obj.get("prediction")) is not None:
        event.prediction = _target(raw, "prediction")
    if (raw := obj.get("scores")) is not None:
        event.scores = _scores(raw)
    if (raw := obj.get("score")) is not None:
        event.score = _number(raw, "score")
    if (raw := obj.get("latency_ms")) is not None:
        event.latency_ms = _number(raw, "latency_ms")
    if not obj.keys() <= _PREDICTION_FIELDS:
        event.extra = {k: v for k, v in obj.items() if k not in _PREDICTION_FIELDS}
    return event


def _label(obj: dict[str, Any], position: Position) -> Label:
    return Label(
        model=_model(obj),
        id=_identifier(_required(obj, "id"), "id"),
        label=_target(_required(obj, "label"), "label"),
        ts=parse_ts(_required(obj, "ts")),
        position=position,
    )
