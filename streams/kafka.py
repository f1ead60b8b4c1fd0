"""Kafka source: kafka-python clients built from one validated settings model.

Records become `RawRecord`s whose position is the real (topic, partition, offset), so evidence
and dead letters stay idempotent per message. Detector state, however, is keyed by
(`state_source`, partition) - one key per partition number shared by every subscribed topic -
so that a prediction topic and a label topic partitioned alike (same partition count, same
key: model or id) feed the same detectors. The range assignor hands partition N of every
topic to the same consumer, which keeps that true across a consumer group.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import MessageSizeTooLargeError

from streams.events import DeadLetter, Position, RawRecord
from streams.kafka_settings import KafkaSettings

_new = tuple.__new__


BOOTSTRAP_TIMEOUT_MS = 5000  # per connection attempt; the daemon retries with backoff


def make_consumer(settings: KafkaSettings, max_poll_records: int) -> KafkaConsumer:
    """A consumer that never commits by itself: the daemon commits after the database."""
    return KafkaConsumer(
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        max_poll_records=max_poll_records,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        fetch_max_bytes=settings.fetch_max_bytes,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        # Partition N of every topic goes to the same member (co-partitioning, see above).
        partition_assignment_strategy=(RangePartitionAssignor,),
        **settings.connection(),
    )


def has_metadata(consumer: KafkaConsumer) -> bool:
    """True once the consumer has reached the cluster. kafka-python has no public check that
    cannot block: `bootstrap(timeout_ms)` ignores its timeout while a bootstrap is running."""
    return bool(consumer._client.cluster.brokers())


def make_producer(settings: KafkaSettings) -> KafkaProducer:
    """A producer that keeps order (one request in flight) and retries transient errors.

    Idempotence is off because brokers before 0.11 do not support it; order plus retries is
    what a recorded stream or a dead-letter topic needs."""
    return KafkaProducer(
        acks="all",
        retries=5,
        max_in_flight_requests_per_connection=1,
        enable_idempotence=False,
        linger_ms=5,
        max_request_size=settings.max_request_size,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        **settings.connection(),
    )


KEY_FIELDS = ("model", "id", "none")


class ProduceError(RuntimeError):
    """A line that could not be produced; the message names its line number and size."""


def produce_lines(
    producer: KafkaProducer, topic: str, lines: Iterable[bytes], key_field: str = "model"
) -> int:
    """Sends each non-empty line as one message, keyed by the event's `key_field` (unkeyed if
    the line is not a JSON object or lacks it); returns how many were sent.

    Raises `ProduceError` for the first line the producer refuses (over `max_request_size`:
    nothing after it is sent) or the broker rejects (over its `message.max.bytes`)."""
    sent = 0
    pending: list[tuple[int, int, Any]] = []  # (line number, size, future) not settled yet
    for number, line in enumerate(lines, 1):
        value = line.rstrip(b"\r\n")
        if not value.strip():
            continue
        try:
            future = producer.send(topic, value=value, key=_key(value, key_field))
        except MessageSizeTooLargeError:
            producer.flush()
            raise ProduceError(
                f"line {number} is {len(value):,} bytes, over the producer's limit "
                f"(kafka.max_request_size = {producer.config['max_request_size']:,}); "
                f"{sent:,} lines before it were produced, none after"
            ) from None
        pending.append((number, len(value), future))
        sent += 1
        if len(pending) >= 10_000:
            pending = _settled(pending)
    producer.flush()
    _settled(pending)
    return sent


def _settled(pending: list[tuple[int, int, Any]]) -> list[tuple[int, int, Any]]:
    """The sends still in flight; raises `ProduceError` for the first one that failed."""
    for number, size, future in pending:
        if future.is_done and future.failed():
            error = future.exception
            reason = getattr(error, "message", None) or type(error).__name__
            raise ProduceError(
                f"line {number} ({size:,} bytes) was not produced: the broker refused it "
                f"({reason}; over its message.max.bytes?)"
            )
    return [entry for entry in pending if not entry[2].is_done]


def _key(value: bytes, field: str) -> bytes | None:
    if field == "none":
        return None
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    key = event.get(field) if isinstance(event, dict) else None
    return None if key is None else str(key).encode()


def not_yet_processed(
    polled: dict[Any, list[Any]], next_offsets: dict[Any, int]
) -> tuple[dict[Any, list[Any]], int]:
    """The polled messages from each partition's next offset on (`next_offsets`: where the
    detector state in memory stands; a partition without one keeps all), and how many were
    left out. A client that fetches a partition again from an older position without a
    rebalance (kafka-python has done so after fetch errors: dpkp/kafka-python#1078) would
    otherwise feed the same events to the same state twice, and a window test would
    count them twice."""
    fresh: dict[Any, list[Any]] = {}
    skipped = 0
    for tp, messages in polled.items():
        start = next_offsets.get(tp)
        if start is not None and messages and messages[0].offset < start:
            kept = [m for m in messages if m.offset >= start]
            skipped += len(messages) - len(kept)
            messages = kept
        if messages:
            fresh[tp] = messages
    return fresh, skipped


def to_records(polled: dict[Any, list[Any]]) -> list[RawRecord]:
    """kafka-python's {TopicPartition: [ConsumerRecord]} as raw records, partition by partition."""
    records: list[RawRecord] = []
    for tp, messages in polled.items():
        topic, partition = tp.topic, tp.partition
        # tuple.__new__ makes the NamedTuples without a Python-level __new__ call per record
        # (half of this function's cost: ~0.5 us per record).
        records += [
            _new(
                RawRecord,
                (
                    b"" if message.value is None else message.value,
                    _new(Position, (topic, partition, message.offset)),
                    None,
                ),
            )
            for message in messages
        ]
    return records


def dead_letter_envelope(letter: DeadLetter) -> bytes:
    """The dead-letter topic's message: JSON, since 0.9 brokers carry no headers."""
    position = letter.position
    return json.dumps(
        {
            "source": {
                "topic": position.source,
                "partition": position.partition,
                "offset": position.offset,
            },
            "reason": letter.reason,
            "received_at": letter.received_at,
            "payload": letter.payload.decode("utf-8", errors="replace"),
        }
    ).encode()


__all__ = [
    "ConsumerRebalanceListener",
    "KafkaSettings",
    "ProduceError",
    "dead_letter_envelope",
    "has_metadata",
    "make_consumer",
    "make_producer",
    "produce_lines",
    "to_records",
]
