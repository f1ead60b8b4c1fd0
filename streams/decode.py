"""Raw bytes -> validated events, in batches; everything malformed becomes a dead letter.

The decoder never raises on bad input: each record either becomes an event or a
`DeadLetter` with a one-line reason naming the field at fault.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from streams.events import DeadLetter, Label, Position, Prediction, RawRecord

DEFAULT_MAX_RECORD_BYTES = 1_000_000
DEAD_LETTER_PAYLOAD_BYTES = 4096

_TARGET_TYPES = frozenset({int, float, str, bool})
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


class InvalidEvent(ValueError):
    """Raised inside the decoder for one record; becomes the dead letter's reason."""


@dataclass(slots=True)
class DecodedBatch:
    predictions: list[Prediction] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.predictions) + len(self.labels) + len(self.dead_letters)


def decode_batch(
    records: Iterable[RawRecord], max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> DecodedBatch:
    out = DecodedBatch()
    for record in records:
        try:
            size = record.size if record.size is not None else len(record.value)
            if size > max_record_bytes:
                raise InvalidEvent(f"record too large: {size} bytes (limit {max_record_bytes})")
            event = decode_record(record.value, record.position, max_record_bytes)
        except InvalidEvent as exc:
            out.dead_letters.append(
                DeadLetter(
                    position=record.position,
                    reason=str(exc),
                    payload=record.value[:DEAD_LETTER_PAYLOAD_BYTES],
                    received_at=time.time(),
                )
            )
            continue
        if isinstance(event, Prediction):
            out.predictions.append(event)
        else:
            out.labels.append(event)
    return out


def decode_record(
    value: bytes, position: Position, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Prediction | Label:
    if len(value) > max_record_bytes:
        raise InvalidEvent(f"record too large: {len(value)} bytes (limit {max_record_bytes})")
    obj = _parse_json(value)
    if not isinstance(obj, dict):
        raise InvalidEvent(f"not a JSON object but {_json_type(obj)}")
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


_FEATURE_TYPES = frozenset({int, float, str, bool, type(None)})
_NUMBER_TYPES = frozenset({int, float})


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
