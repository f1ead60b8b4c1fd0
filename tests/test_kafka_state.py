"""Kafka settings and the detector-state keys the daemon relies on (no broker needed)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition
from sqlalchemy import select

from agent.config import ConfigError, Settings, load_settings
from agent.demo import demo_scenario
from agent.runtime.pipeline import Pipeline
from agent.runtime.replay import memory_batches, replay_batches
from storage.db import Database
from storage.models import Checkpoint, Evidence, Incident
from streams.events import Position, RawRecord
from streams.kafka import KafkaSettings, not_yet_processed, to_records


def test_environment_overrides_the_kafka_section(tmp_path: Path) -> None:
    config = tmp_path / "bulwark.toml"
    config.write_text('[kafka]\nbootstrap_servers = ["file:9092"]\napi_version = "0.9"\n')
    settings = load_settings(
        config,
        environ={
            "BULWARK_KAFKA_BOOTSTRAP": "a:9092, b:9093",
            "BULWARK_KAFKA_TOPICS": "predictions,labels",
            "BULWARK_KAFKA_GROUP": "guards",
            "BULWARK_KAFKA_API_VERSION": "",  # empty: probe the broker
        },
    )
    assert settings.kafka.bootstrap_servers == ["a:9092", "b:9093"]
    assert settings.kafka.topics == ["predictions", "labels"]
    assert settings.kafka.group_id == "guards"
    assert settings.kafka.version_tuple() is None
    assert load_settings(config, environ={}).kafka.version_tuple() == (0, 9)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[kafka]\napi_version = "nine"\n', "kafka.api_version"),
        ('[kafka]\nsecurity_protocol = "TLS"\n', "kafka.security_protocol"),
        ('[kafka]\ntopics = ["a", "a"]\n', "kafka.topics"),
        ("[kafka]\nbootstrap = 1\n", "kafka.bootstrap"),
        ("[daemon]\nshutdown_timeout = 0\n", "daemon.shutdown_timeout"),
    ],
)
def test_bad_kafka_config_fails_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    config = tmp_path / "bulwark.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_settings(config, environ={})


def test_security_settings_reach_the_client_options() -> None:
    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="u",
        sasl_plain_password="p",
        ssl_cafile="/ca.pem",
    )
    options = kafka.connection()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "u" and options["ssl_cafile"] == "/ca.pem"
    assert "ssl_certfile" not in options  # unset options keep kafka-python's defaults


def _event(kind: str, i: int, topic: str, partition: int, offset: int) -> RawRecord:
    body: dict[str, object] = {"type": kind, "model": "m", "id": f"p{i}", "ts": 1.0e9 + i}
    if kind == "prediction":
        body["features"] = {"x": float(i)}
    else:
        body["label"] = 1
    return RawRecord(orjson.dumps(body), Position(topic, partition, offset))


def test_copartitioned_topics_share_one_detector_state(sqlite_url: str) -> None:
    """Predictions and labels of partition 1 of two topics meet in the same detectors, the
    checkpoint records both topics' offsets, and another process resumes both."""
    kafka = KafkaSettings(topics=["preds", "labels"], group_id="g")
    database = Database(sqlite_url)
    pipeline = Pipeline(Settings(), database, kafka.state_source, state_key=kafka.state_key)
    records = [_event("prediction", i, "preds", 1, 10 + i) for i in range(3)]
    records += [_event("label", i, "labels", 1, 40 + i) for i in range(2)]

    pipeline.process(records)
    assert list(pipeline.monitors) == [("kafka:g", 1)]
    pipeline.checkpoint({("preds", 1): 13, ("labels", 1): 42})

    with database.session() as session:
        rows = list(session.scalars(select(Checkpoint)))
    assert [(r.source, r.partition, r.model) for r in rows] == [("kafka:g", 1, "m")]
    elsewhere = Pipeline(Settings(), database, kafka.state_source, state_key=kafka.state_key)
    assert elsewhere.restore_partition("preds", 1) == 13
    assert elsewhere.restore_partition("labels", 1) == 42

    # The labels of the other topic were joined to the predictions in that one state.
    def join(p: Pipeline):  # type: ignore[no-untyped-def]
        (accuracy,) = [d for d in p.monitors[("kafka:g", 1)]["m"].detectors if d.name == "accuracy"]
        return accuracy.join

    original, restored = join(pipeline), join(elsewhere)
    assert original.counters.as_dict()["joined"] == 2
    assert restored.counters.as_dict() == original.counters.as_dict()
    assert list(restored.pending) == list(original.pending) == ["p2"]
    elsewhere.drop_partition("labels", 1)
    assert elsewhere.monitors == {}


def test_findings_do_not_depend_on_how_the_stream_is_batched(tmp_path: Path) -> None:
    """A Kafka poll cuts the stream differently from a file replay; incidents must not care."""
    lines = demo_scenario(events_per_model=4000).lines
    settings = Settings.model_validate({"detectors": {"reference_size": 1000}})
    outcomes = []
    for batch_size in (97, 2000):
        url = f"sqlite:///{tmp_path / f'b{batch_size}.db'}"
        database = Database(url)
        database.upgrade()
        pipeline = Pipeline(settings, database, "replay")
        replay_batches(pipeline, memory_batches(lines, "demo", batch_size))
        with database.session() as session:
            incidents = sorted(
                (i.model, i.subject, i.severity, i.first_seen, i.last_seen, i.count)
                for i in session.scalars(select(Incident))
            )
            rows = session.scalars(select(Evidence))
            evidence = sorted((e.source, e.offset, e.value) for e in rows)
        database.dispose()
        outcomes.append((incidents, evidence))
    assert outcomes[0][0], "the demo's drifts should open incidents"
    assert outcomes[0] == outcomes[1]


def test_polled_messages_become_raw_records_at_their_real_positions() -> None:
    def message(tp: TopicPartition, offset: int, value: bytes | None) -> ConsumerRecord:
        return ConsumerRecord(
            tp.topic, tp.partition, None, offset, 0, 0, None, value, [], None, 0, 0, 0
        )

    a, b = TopicPartition("predictions", 3), TopicPartition("labels", 0)
    polled = {a: [message(a, 7, b"x"), message(a, 8, None)], b: [message(b, 0, b"y")]}
    records = to_records(polled)
    assert records == [
        RawRecord(b"x", Position("predictions", 3, 7)),
        RawRecord(b"", Position("predictions", 3, 8)),  # a tombstone: a dead letter later
        RawRecord(b"y", Position("labels", 0, 0)),
    ]
    assert all(type(r) is RawRecord and type(r.position) is Position for r in records)
    assert records[0].size is None and records[0].position.offset == 7


def test_records_fetched_again_before_the_states_position_are_not_fed_twice() -> None:
    """A partition fetched again from an older offset without a rebalance: what the state in
    memory already took is left out (and counted), the rest goes on; a partition the
    daemon holds no position for keeps everything."""

    def message(tp: TopicPartition, offset: int) -> ConsumerRecord:
        return ConsumerRecord(
            tp.topic, tp.partition, None, offset, 0, 0, None, b"x", [], None, 0, 0, 0
        )

    a, b, c = (TopicPartition("predictions", p) for p in (0, 1, 2))
    polled = {
        a: [message(a, o) for o in range(5, 12)],  # 5-9 already processed
        b: [message(b, o) for o in range(3, 6)],  # all of them already processed
        c: [message(c, o) for o in range(0, 4)],  # no position: all new
    }
    fresh, skipped = not_yet_processed(polled, {a: 10, b: 20})
    assert [m.offset for m in fresh[a]] == [10, 11]
    assert b not in fresh
    assert [m.offset for m in fresh[c]] == [0, 1, 2, 3]
    assert skipped == 5 + 3
    same, none = not_yet_processed(polled, {a: 5, b: 3})
    assert none == 0 and same == polled
