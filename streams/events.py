"""The event schema of the contract (section 1), as plain slotted records.

Events are validated once, in `streams.decode`, and are immutable afterwards. They are
deliberately not pydantic models: the decoder is the hot path, and a hand-written check per
field is several times faster than model validation while giving more precise reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

FeatureValue = float | int | str | bool | None
Target = float | int | str | bool


class Position(NamedTuple):
    """Where a record came from: a Kafka (topic, partition, offset) or a file (path, 0, line).

    Positions make writes idempotent: evidence and dead letters are keyed by the position of
    the record that produced them, so re-processing a record changes nothing. A NamedTuple,
    not a dataclass: one is made per record, and tuples are the cheapest immutable records.
    """

    source: str
    partition: int
    offset: int


class RawRecord(NamedTuple):
    """One undecoded message or line, with its position.

    `size` is the record's full size when `value` holds only a cut prefix of an over-long line.
    """

    value: bytes
    position: Position
    size: int | None = None


@dataclass(slots=True)
class Prediction:
    model: str
    ts: float
    features: dict[str, FeatureValue]
    position: Position
    id: str | None = None
    model_version: str | None = None
    client: str | None = None
    prediction: Target | None = None
    scores: dict[str, float] | None = None
    score: float | None = None
    latency_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Label:
    model: str
    id: str
    label: Target
    ts: float
    position: Position


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be decoded, kept with the reason and its position."""

    position: Position
    reason: str
    payload: bytes
    received_at: float
