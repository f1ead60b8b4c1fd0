"""The Kafka daemon against a real broker: same incidents as a replay, at least once across
SIGKILL, scale-out over a consumer group, dead letters with their offsets, clean SIGTERM."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import func, select

from agent.config import load_settings
from agent.demo import MALFORMED, demo_scenario
from agent.runtime.pipeline import Pipeline
from agent.runtime.replay import REPLAY_CONSUMER, replay_batches
from storage.db import Database
from storage.models import DeadLetterRow, Evidence, Incident, SourcePosition
from streams.files import FileSource
from streams.kafka import KafkaSettings, make_producer, produce_lines
from tests.conftest import ROOT, _postgres_reason, _truncate_all, run_cli

pytestmark = pytest.mark.kafka

API_VERSION = os.environ.get("BULWARK_TEST_KAFKA_API_VERSION", "0.9")
EVENTS_PER_MODEL = 4000  # 3 models; drifts at 60% (fraud) and 70% (price) of the stream
DETECTOR_CONFIG = """
batch_size = 300
[detectors]
reference_size = 1000
"""


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = demo_scenario(events_per_model=EVENTS_PER_MODEL).lines
    path = tmp_path_factory.mktemp("stream") / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def replay_outcome(stream: Path, work: Path) -> dict[str, object]:
    """Incidents and evidence count of a clean replay of `stream` (SQLite, in `work`)."""
    config = work / "replay.toml"
    config.write_text(DETECTOR_CONFIG)
    url = _migrated(work / "replay.db")
    settings = load_settings(config)
    database = Database(url)
    source = FileSource(str(stream), batch_size=settings.batch_size)
    replay_batches(Pipeline(settings, database, REPLAY_CONSUMER), source.batches())
    database.dispose()
    return _outcome(url)


@pytest.fixture(scope="module")
def replayed(stream: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """What a replay makes of the stream: the reference every daemon run must match."""
    outcome = replay_outcome(stream, tmp_path_factory.mktemp("replay"))
    assert len(outcome["incidents"]) >= 2  # the two injected drifts, at least
    return outcome


def _outcome(url: str) -> dict[str, object]:
    """Incidents (without ids and wall-clock fields) and the amount of evidence."""
    db = Database(url)
    with db.session() as session:
        incidents = sorted(
            (i.model, i.kind, i.subject, i.severity, i.status, i.first_seen, i.last_seen, i.count)
            for i in session.scalars(select(Incident))
        )
        evidence = session.scalar(select(func.count(Evidence.id)))
    db.dispose()
    return {"incidents": incidents, "evidence": evidence}


def _migrated(path: Path) -> str:
    url = f"sqlite:///{path}"
    Database(url).upgrade()
    return url


def _config(
    path: Path,
    bootstrap: str,
    topics: list[str],
    group: str,
    daemon: dict[str, object] | None = None,
    tail: str = "",
    **kafka: object,
) -> Path:
    """A `bulwark run` config; `daemon` adds [daemon] keys, `tail` more sections (TOML)."""
    options = {
        "bootstrap_servers": [bootstrap],
        "topics": topics,
        "group_id": group,
        "api_version": API_VERSION,
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        **kafka,
    }
    lines = [DETECTOR_CONFIG, "[daemon]", "checkpoint_interval = 0.3"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in (daemon or {}).items()]
    lines += ["[kafka]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    path.write_text("\n".join(lines) + "\n" + tail)
    return path


class Daemons:
    """`bulwark run` subprocesses of one test, each logging to its own file."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, config: Path, db_url: str, *options: str) -> subprocess.Popen[bytes]:
        log = self.work / f"daemon-{len(self.processes)}.log"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "run",
                "--config",
                str(config),
                "--db",
                db_url,
                *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),  # noqa: SIM115 - closed with the process
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
        self.processes.append((process, log))
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        return next(log for p, log in self.processes if p is process).read_text()

    def stop_all(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


@pytest.fixture
def shared_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The database a group of daemons shares: PostgreSQL, as in production, when reachable."""
    if _postgres_reason() is not None:
        yield _migrated(tmp_path / "shared.db")
        return
    url = request.getfixturevalue("postgres_url")
    database = Database(url)
    database.upgrade()
    _truncate_all(database)
    database.dispose()
    yield url


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    running = Daemons(tmp_path)
    yield running
    running.stop_all()


def _produce(bootstrap: str, lines: list[bytes], topic: str) -> None:
    """Keyed by model, as `bulwark kafka produce` does (the first test runs the command)."""
    settings = KafkaSettings(bootstrap_servers=[bootstrap], api_version=API_VERSION)
    producer = make_producer(settings)
    assert produce_lines(producer, topic, lines) == len(lines)
    producer.close()


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def _consumed(url: str, group: str) -> int:
    """Records checkpointed by the group so far (offsets start at 0 in fresh topics)."""
    db = Database(url)
    with db.session() as session:
        total = session.scalar(
            select(func.coalesce(func.sum(SourcePosition.next_offset), 0)).where(
                SourcePosition.consumer == f"kafka:{group}"
            )
        )
    db.dispose()
    return int(total or 0)


def _positions(url: str, group: str) -> dict[tuple[str, int], int]:
    db = Database(url)
    with db.session() as session:
        rows = session.scalars(
            select(SourcePosition).where(SourcePosition.consumer == f"kafka:{group}")
        )
        positions = {(r.source, r.partition): r.next_offset for r in rows}
    db.dispose()
    return positions


def _assigned(line: str) -> dict[int, str]:
    """`topic[p]@offset, ...` of an "assigned" log line -> {p: offset or 'kafka'}."""
    entries = line.split("\n", 1)[0].split(", ")
    return {int(e.split("[")[1].split("]")[0]): e.rsplit("@", 1)[1] for e in entries}


def _processed(log: str) -> int:
    """The record count of the daemon's last progress line."""
    return int(log.rsplit("processed ", 1)[1].split(" records", 1)[0])


def _wait(condition: Callable[[], bool], timeout: float, what: str, daemons: Daemons) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    logs = "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for _, log in daemons.processes)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


COMMIT_FAILED = "committing offsets to Kafka"  # the daemon's log line for a failed commit


def _terminate(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    return code, time.monotonic() - started


def _messages(
    bootstrap: str, topic: str, fetch_bytes: int = 1024 * 1024
) -> dict[bytes, tuple[int, int]]:
    """Every message of a topic -> its (partition, offset); `fetch_bytes` must fit the
    largest message (kafka-python's default: 1 MiB)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        api_version=tuple(map(int, API_VERSION.split("."))) if API_VERSION else None,
        max_partition_fetch_bytes=fetch_bytes,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        found: dict[bytes, tuple[int, int]] = {}
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, "could not read the topic back"
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    found[record.value] = (tp.partition, record.offset)
        return found
    finally:
        consumer.close(autocommit=False)


def test_daemon_matches_replay_keeps_poison_messages_and_stops_on_sigterm(
    kafka_bootstrap: str, stream: Path, replayed: dict[str, object], daemons: Daemons,
    tmp_path: Path,
) -> None:  # fmt: skip
    uid = uuid.uuid4().hex[:8]
    topic, dead_topic, group = f"events-{uid}", f"dead-{uid}", f"g-{uid}"
    produced = run_cli(
        "kafka", "produce", str(stream), "--topic", topic,
        "--bootstrap", kafka_bootstrap, "--api-version", API_VERSION,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    config = _config(
        tmp_path / "run.toml", kafka_bootstrap, [topic], group, dead_letter_topic=dead_topic
    )
    url = _migrated(tmp_path / "daemon.db")
    total = len(_lines(stream))

    daemon = daemons.start(config, url)
    _wait(lambda: _consumed(url, group) == total, 90, "the whole stream", daemons)
    code, seconds = _terminate(daemon)

    assert code == 0, daemons.log(daemon)
    assert seconds < 10
    assert "stopped cleanly" in daemons.log(daemon)
    assert _outcome(url) == replayed
    # Each poison message is a dead letter naming the topic, partition and offset it sits at,
    # in the database and on the dead-letter topic; the messages after it were processed.
    where = _messages(kafka_bootstrap, topic)
    db = Database(url)
    with db.session() as session:
        rows = session.scalars(select(DeadLetterRow))
        letters = {(d.source, d.partition, d.offset): d for d in rows}
    db.dispose()
    assert len(letters) == len(MALFORMED)
    for payload in MALFORMED:
        partition, offset = where[payload]
        assert letters[(topic, partition, offset)].payload == payload.decode()
    envelopes = [json.loads(v) for v in _messages(kafka_bootstrap, dead_topic)]
    assert sorted((e["source"]["partition"], e["source"]["offset"]) for e in envelopes) == sorted(
        where[p] for p in MALFORMED
    )
    assert all(e["source"]["topic"] == topic and e["reason"] for e in envelopes)


def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(
    kafka_bootstrap: str, stream: Path, replayed: dict[str, object], daemons: Daemons,
    tmp_path: Path,
) -> None:  # fmt: skip
    uid = uuid.uuid4().hex[:8]
    topic, group = f"events-{uid}", f"g-{uid}"
    _produce(kafka_bootstrap, _lines(stream), topic)
    config = _config(tmp_path / "run.toml", kafka_bootstrap, [topic], group)
    url = _migrated(tmp_path / "daemon.db")
    total = len(_lines(stream))

    first = daemons.start(config, url)
    _wait(lambda: _consumed(url, group) > 0, 90, "a first checkpoint", daemons)
    first.kill()
    first.wait(timeout=30)
    at_kill = _consumed(url, group)
    assert 0 < at_kill < total, "the daemon finished before it could be killed mid-stream"

    second = daemons.start(config, url)
    _wait(lambda: _consumed(url, group) == total, 90, "the rest of the stream", daemons)
    code, _ = _terminate(second)

    assert code == 0
    assert _outcome(url) == replayed
    # It resumed from the checkpoint (state and offsets), not from the start of the topic.
    assert _processed(daemons.log(second)) == total - at_kill


def test_two_daemons_share_partitions_and_one_takes_over(
    kafka_bootstrap: str, stream: Path, replayed: dict[str, object], daemons: Daemons,
    tmp_path: Path, shared_db_url: str,
) -> None:  # fmt: skip
    uid = uuid.uuid4().hex[:8]
    topic, group = f"events-{uid}", f"g-{uid}"
    lines = _lines(stream)
    half = len(lines) // 2
    _produce(kafka_bootstrap, lines[:half], topic)
    config = _config(tmp_path / "run.toml", kafka_bootstrap, [topic], group)

    a = daemons.start(config, shared_db_url)
    b = daemons.start(config, shared_db_url)

    def split() -> bool:
        # Each has most recently been assigned two of the four partitions.
        logs = [daemons.log(p) for p in (a, b)]
        return all("assigned 2 partitions" in log.rsplit("revoked", 1)[-1] for log in logs)

    _wait(split, 90, "the group to split the partitions", daemons)
    _wait(lambda: _consumed(shared_db_url, group) == half, 90, "the first half", daemons)
    a.kill()
    a.wait(timeout=30)
    at_kill = _positions(shared_db_url, group)
    b_log_at_kill = len(daemons.log(b))
    _produce(kafka_bootstrap, lines[half:], topic)
    _wait(lambda: _consumed(shared_db_url, group) == len(lines), 120, "b to finish", daemons)
    code, _ = _terminate(b)

    assert code == 0
    assert _outcome(shared_db_url) == replayed
    # b took a's partitions over from a's checkpoints, not from the start of the topic.
    a_had = _assigned(daemons.log(a).rsplit("assigned 2 partitions: ", 1)[1])
    takeover = _assigned(daemons.log(b)[b_log_at_kill:].split("assigned 4 partitions: ", 1)[1])
    for partition in a_had:
        if (topic, partition) in at_kill:
            assert takeover[partition] == str(at_kill[(topic, partition)])


def test_partitions_handed_back_after_the_other_daemon_learned_the_references(
    kafka_bootstrap: str, stream: Path, replayed: dict[str, object], daemons: Daemons,
    tmp_path: Path, shared_db_url: str,
) -> None:  # fmt: skip
    """a reads every partition while the references are still being learned; b joins and
    takes two partitions over, learns their models' references from a's collections and
    dies; a takes them back. a must use the references b stored (and b's checkpoints), not
    its own collections from before the split: the same incidents as a replay."""
    uid = uuid.uuid4().hex[:8]
    topic, group = f"events-{uid}", f"g-{uid}"
    lines = _lines(stream)
    early, half = 300, len(lines) // 2  # 300 events: no model has its 1,000 yet
    _produce(kafka_bootstrap, lines[:early], topic)
    config = _config(tmp_path / "run.toml", kafka_bootstrap, [topic], group)

    a = daemons.start(config, shared_db_url)
    _wait(lambda: _consumed(shared_db_url, group) == early, 90, "a to read them", daemons)
    b = daemons.start(config, shared_db_url)

    def split() -> bool:
        logs = [daemons.log(p) for p in (a, b)]
        return all("assigned 2 partitions" in log.rsplit("revoked", 1)[-1] for log in logs)

    _wait(split, 90, "the group to split the partitions", daemons)
    _produce(kafka_bootstrap, lines[early:half], topic)
    _wait(lambda: _consumed(shared_db_url, group) == half, 90, "the first half", daemons)
    b.kill()
    b.wait(timeout=30)
    _produce(kafka_bootstrap, lines[half:], topic)
    _wait(lambda: _consumed(shared_db_url, group) == len(lines), 120, "a to finish", daemons)
    code, _ = _terminate(a)

    assert code == 0
    assert _outcome(shared_db_url) == replayed


def test_unreachable_broker_is_retried_with_backoff_and_sigterm_still_exits(
    tmp_path: Path, daemons: Daemons
) -> None:
    """No broker needed: nothing listens on the port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _config(tmp_path / "run.toml", f"127.0.0.1:{port}", ["t"], "g")
    daemon = daemons.start(config, f"sqlite:///{tmp_path / 'd.db'}")
    _wait(lambda: daemons.log(daemon).count("unreachable for") >= 3, 60, "retries", daemons)
    code, seconds = _terminate(daemon)
    log = daemons.log(daemon)
    assert code == 0 and seconds < 10
    # Reported at growing intervals (1s, 3s, 6s...), not once per poll.
    waits = [int(line.split("unreachable for ")[1].split("s;")[0]) for line in log.splitlines()
             if "unreachable for" in line]  # fmt: skip
    assert all(later >= 1.5 * earlier for earlier, later in itertools.pairwise(waits))


@pytest.mark.skipif(
    bool(os.environ.get("BULWARK_TEST_KAFKA_BOOTSTRAP")), reason="kills its own broker"
)
def test_broker_outage_mid_run_is_reported_with_backoff_and_sigterm_still_exits(
    daemons: Daemons, tmp_path: Path
) -> None:
    """A private broker dies under a running daemon: the daemon lives on, reports the outage
    at growing intervals, and still shuts down cleanly within 10 s."""
    from tests.kafka_broker import KafkaBroker, kafka_home

    broker = KafkaBroker(kafka_home())
    try:
        broker.start()
        lines = demo_scenario(events_per_model=200).lines
        _produce(broker.bootstrap, lines, "events")
        config = _config(tmp_path / "run.toml", broker.bootstrap, ["events"], "g")
        url = _migrated(tmp_path / "daemon.db")
        daemon = daemons.start(config, url)
        _wait(lambda: _consumed(url, "g") == len(lines), 90, "the stream", daemons)
        broker.kill()
        # Five failed commits: retried after 1, 2, 4 and 8 s. Each gap also holds the next
        # attempt's own wait (0-2 s: an immediate refusal or the commit timeout) and a poll,
        # which hid the growth from 1 to 2 s (gaps of 3.9 then 2.5 s in one CI run); 8 s
        # cannot hide behind them.
        _wait(lambda: daemons.log(daemon).count(COMMIT_FAILED) >= 5, 60, "outage reports", daemons)
        assert daemon.poll() is None  # still alive
        code, seconds = _terminate(daemon)
    finally:
        broker.stop()

    assert code == 0 and seconds < 10
    stamps = [
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
        for line in daemons.log(daemon).splitlines()
        if COMMIT_FAILED in line
    ]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    # Backing off (1, 2, 4, 8 s), not retrying at a fixed pace: gaps of about 2.5-3.2, 2.5,
    # 4.0 and 8.1 s here; at a fixed pace the first and last would differ by the waits alone.
    assert gaps[-1] > gaps[0] + 3


def _padded(model: str, i: int, size: int) -> bytes:
    """A valid prediction of `model`, padded to about `size` bytes."""
    event = {"type": "prediction", "model": model, "id": f"big-{i}", "ts": 1767225600.0 + i,
             "features": {"note": "x" * size}, "prediction": 0}  # fmt: skip
    return json.dumps(event).encode()


def test_oversized_messages_become_dead_letters_at_their_offset_and_the_partition_goes_on(
    kafka_bootstrap: str, daemons: Daemons, tmp_path: Path
) -> None:
    uid = uuid.uuid4().hex[:8]
    topic, group = f"events-{uid}", f"g-{uid}"
    lines = demo_scenario(events_per_model=300).lines
    unfetchable = _padded("fraud", 1, 100_000)  # over max_partition_fetch_bytes: not fetched
    too_big = _padded("fraud", 2, 20_000)  # fetched, but over max_record_bytes
    lines = [*lines[:200], unfetchable, *lines[200:400], too_big, *lines[400:]]
    _produce(kafka_bootstrap, lines, topic)
    config = _config(
        tmp_path / "run.toml", kafka_bootstrap, [topic], group, max_partition_fetch_bytes=65536
    )
    config.write_text("max_record_bytes = 10000\n" + config.read_text())
    url = _migrated(tmp_path / "daemon.db")

    daemon = daemons.start(config, url)
    _wait(lambda: _consumed(url, group) == len(lines), 90, "the whole stream", daemons)
    code, _ = _terminate(daemon)
    assert code == 0, daemons.log(daemon)

    where = _messages(kafka_bootstrap, topic, fetch_bytes=4 * 1024 * 1024)
    db = Database(url)
    with db.session() as session:
        letters = {(d.source, d.partition, d.offset): d for d in session.scalars(
            select(DeadLetterRow))}  # fmt: skip
        processed = session.scalar(select(func.count(Evidence.id)))
    db.dispose()
    assert processed is not None
    first = letters[(topic, *where[unfetchable])]
    assert "max_partition_fetch_bytes" in first.reason and "65,536" in first.reason
    second = letters[(topic, *where[too_big])]
    assert "record too large" in second.reason and "limit 10000" in second.reason
    assert len(letters) == len(MALFORMED) + 2
    # The fraud partition went on past both: its later messages were processed.
    log = daemons.log(daemon)
    assert _processed(log) == len(lines) - 1  # all but the one never fetched


def test_produce_names_the_line_over_the_size_limit_in_one_line(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    small = [_padded("fraud", i, 10) for i in range(3)]
    for big, why in ((_padded("fraud", 9, 1_200_000), "max_request_size"),
                     (_padded("fraud", 9, 1_010_000), "broker refused")):  # fmt: skip
        path = tmp_path / "events.jsonl"
        path.write_bytes(b"\n".join([*small, big, *small]) + b"\n")
        result = run_cli(
            "kafka", "produce", str(path), "--topic", f"t-{uuid.uuid4().hex[:8]}",
            "--bootstrap", kafka_bootstrap, "--api-version", API_VERSION,
        )  # fmt: skip
        assert result.returncode == 2
        assert "Traceback" not in result.stderr, result.stderr
        (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert "line 4" in error and f"{len(big):,} bytes" in error and why in error
