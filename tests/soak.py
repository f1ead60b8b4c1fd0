"""The soak scenario: one `bulwark run` consumes a stream with injected drifts while it is
SIGKILLed three times, PostgreSQL is down for a while, the broker is down for a while and
the webhook receiver fails for a while. Shared by tests/test_soak.py (short outages) and
bench/soak.py (60-second outages, as in issue 16).

Everything is private to the run: a PostgreSQL server (tests/pg_server.py), a Kafka broker
(tests/kafka_broker.py) and a signed-webhook receiver (tests/receivers.py). What it returns is
judged by the caller: the daemon's incidents against a clean replay's, the notifications the
receiver got, and whether the daemon ever exited on its own.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, text

from agent.demo import demo_scenario
from storage.db import Database
from storage.models import Notification
from tests.kafka_broker import KafkaBroker, kafka_home
from tests.pg_server import PostgresServer
from tests.receivers import Receiver
from tests.test_kafka import (
    Daemons,
    _config,
    _consumed,
    _outcome,
    _positions,
    _produce,
    _terminate,
    replay_outcome,
)

SECRET = "soak-hmac-secret"
CHUNKS = 5


@dataclass
class SoakResult:
    daemon: dict[str, object]  # incidents and evidence count after the run
    replayed: dict[str, object]  # the same from a clean replay of the stream
    # (incident id, dedup_key, reason) -> ids of the notifications the receiver accepted
    received: dict[tuple[object, ...], set[int]]
    outbox: list[tuple[int, int | None, str, str, str]]  # id, incident, dedup_key, reason, state
    exited_on_its_own: list[str] = field(default_factory=list)
    final_exit_code: int | None = None
    timeline: list[str] = field(default_factory=list)
    logs: str = ""  # every daemon process's log, in order


class SoakFailure(AssertionError):
    pass


def run_soak(work: Path, outage: float, events_per_model: int = 4000) -> SoakResult:
    """Runs the scenario in `work`; each outage lasts `outage` seconds."""
    lines = demo_scenario(events_per_model=events_per_model).lines
    stream = work / "events.jsonl"
    stream.write_bytes(b"\n".join(lines) + b"\n")
    replayed = replay_outcome(stream, work)
    pg = PostgresServer().init()
    broker = KafkaBroker(kafka_home())
    receiver = Receiver("webhook", secret=SECRET)
    daemons = Daemons(work)
    started = time.monotonic()
    timeline: list[str] = []
    exits: list[str] = []

    def note(what: str) -> None:
        timeline.append(f"{time.monotonic() - started:6.1f}s {what}")

    try:
        pg.start()
        url = _fresh_database(pg)
        broker.start()
        note("database, broker and receiver up")
        topic, group = f"events-{uuid.uuid4().hex[:8]}", "soak"
        config = _config(
            work / "run.toml", broker.bootstrap, [topic], group,
            daemon={"retry_max_delay": 2},
            tail=(
                "[alerts]\ngroup_wait = 0\nbackoff_initial = 0.5\nbackoff_max = 2\n"
                "poll_interval = 0.2\ngive_up_after = 3600\n"
                f'[alerts.channels.hook]\ntype = "webhook"\nurl = "{receiver.url}"\n'
                f'secret = "{SECRET}"\n'
            ),
        )  # fmt: skip
        size = -(-len(lines) // CHUNKS)
        chunks = [lines[i : i + size] for i in range(0, len(lines), size)]
        produced = 0
        daemon = daemons.start(config, url)

        def alive() -> bool:
            if daemon.poll() is not None:
                exits.append(f"exit {daemon.returncode}: {daemons.log(daemon)[-2000:]}")
                raise SoakFailure(f"the daemon exited on its own: {exits[-1]}")
            return True

        def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                alive()
                if condition():
                    return
                time.sleep(0.3)
            raise SoakFailure(
                f"timed out waiting for {what}; checkpointed positions "
                f"{_positions(url, group) if pg.running() else 'unknown'}, produced {produced}\n"
                + "\n".join(timeline)
                + "\n"
                + daemons.log(daemon)[-6000:]
            )

        def hold(seconds: float) -> None:
            """Waits out an outage, checking all along that the daemon lives."""
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                alive()
                time.sleep(0.5)

        def produce(chunk: list[bytes]) -> None:
            nonlocal produced
            _produce(broker.bootstrap, chunk, topic)
            produced += len(chunk)
            note(f"produced {produced} of {len(lines)}")

        def consumed() -> int:
            return _consumed(url, group) if pg.running() else -1

        def sigkill() -> None:
            nonlocal daemon
            alive()
            daemon.kill()
            daemon.wait(timeout=30)
            note(f"SIGKILL at {consumed()} checkpointed")
            daemon = daemons.start(config, url)

        # 1. Mid-stream SIGKILL.
        produce(chunks[0])
        wait(lambda: consumed() > 0, 120, "a first checkpoint")
        sigkill()
        # 2. PostgreSQL down while records arrive.
        at = consumed()
        half = len(chunks[1]) // 2
        produce(chunks[1][:half])
        wait(lambda: consumed() > at, 120, "progress on the second chunk")
        pg.stop()
        note("database down")
        produce(chunks[1][half:])
        hold(outage)
        pg.start()
        note("database up")
        wait(lambda: consumed() == produced, 180, "the second chunk")
        # 3. SIGKILL again, mid-chunk.
        at = consumed()
        produce(chunks[2])
        wait(lambda: consumed() > at, 120, "progress on the third chunk")
        sigkill()
        wait(lambda: consumed() == produced, 180, "the third chunk")
        # 4. The broker down.
        broker.kill_broker()
        note("broker down")
        hold(outage)
        broker.restart_broker()
        note("broker up")
        # 5. The receiver fails while the drifts open incidents; SIGKILL meanwhile.
        receiver.down = True
        note("receiver failing")
        produce(chunks[3])
        hold(outage / 2)
        sigkill()
        hold(outage / 2)
        receiver.down = False
        note("receiver back")
        for chunk in chunks[4:]:
            produce(chunk)
        wait(lambda: consumed() == len(lines), 240, "the whole stream")
        wait(lambda: _pending(url) == 0, 120, "every notification to be settled")
        note("all consumed and notified")
        code, _ = _terminate(daemon)
        note(f"SIGTERM: exit {code}")
        outbox = _outbox(url)
        daemon_outcome = _outcome(url)
        logs = "\n".join(daemons.log(process) for process, _ in daemons.processes)
    finally:
        daemons.stop_all()
        receiver.close()
        broker.stop()
        pg.destroy()
    received: dict[tuple[object, ...], set[int]] = defaultdict(set)
    for request in receiver.accepted:
        for n in request.body["notifications"]:
            received[(n["incident"].get("id"), n["dedup_key"], n["reason"])].add(n["id"])
    return SoakResult(
        daemon=daemon_outcome,
        replayed=replayed,
        received=dict(received),
        outbox=outbox,
        exited_on_its_own=exits,
        final_exit_code=code,
        timeline=timeline,
        logs=logs,
    )


def _fresh_database(pg: PostgresServer) -> str:
    admin = Database(pg.url())
    with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text('CREATE DATABASE "soak"'))
    admin.dispose()
    url = pg.url("soak")
    database = Database(url)
    database.upgrade()
    database.dispose()
    return url


def _pending(url: str) -> int:
    return sum(1 for row in _outbox(url) if row[4] == "pending")


def _outbox(url: str) -> list[tuple[int, int | None, str, str, str]]:
    db = Database(url)
    try:
        with db.session() as session:
            return [
                (n.id, n.incident_id, n.dedup_key or "", n.reason, n.state)
                for n in session.scalars(select(Notification).order_by(Notification.id))
            ]
    finally:
        db.dispose()
