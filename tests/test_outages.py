"""Database outages against a private PostgreSQL server (tests/pg_server.py): errors are
classified as transient or permanent; `bulwark run` rides out an outage mid-stream (paused,
not ready, still in its group) and ends with the incidents of a clean replay; a permanent
error ends it at once with a one-line reason."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from agent.demo import demo_scenario
from storage.db import Database, DatabaseUnavailable, DatabaseUnusable, classify
from tests.conftest import run_cli
from tests.kafka_broker import free_port
from tests.pg_server import PostgresError, PostgresServer
from tests.test_kafka import (
    EVENTS_PER_MODEL,
    Daemons,
    _config,
    _consumed,
    _lines,
    _outcome,
    _produce,
    _terminate,
    _wait,
    replay_outcome,
)

TOKEN = "outage-reader"


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer().init()
        server.start()
    except PostgresError as exc:
        pytest.skip(f"no private PostgreSQL server: {exc}")
    yield server
    server.destroy()


@pytest.fixture
def pg_database(private_pg: PostgresServer) -> Iterator[str]:
    """A fresh, migrated database on the private server."""
    if not private_pg.running():
        private_pg.start()
    name = f"b_{uuid.uuid4().hex[:10]}"
    admin = Database(private_pg.url())
    with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = private_pg.url(name)
    database = Database(url)
    database.upgrade()
    database.dispose()
    yield url


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = demo_scenario(events_per_model=EVENTS_PER_MODEL).lines
    path = tmp_path_factory.mktemp("stream") / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture(scope="module")
def replayed(stream: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return replay_outcome(stream, tmp_path_factory.mktemp("replay"))


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    running = Daemons(tmp_path)
    yield running
    running.stop_all()


def _attempts(database: Database, attempts: int) -> tuple[int, BaseException]:
    """How many times `retrying` ran its work before giving up, and what it raised."""
    calls = 0

    def work() -> None:
        nonlocal calls
        calls += 1
        with database.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    with pytest.raises(Exception) as raised:
        database.retrying(work, attempts=attempts, first_delay=0.01)
    return calls, raised.value


def test_permanent_errors_are_not_retried_and_transient_ones_are(
    private_pg: PostgresServer, pg_database: str
) -> None:
    wrong_password = Database(private_pg.url(pg_database.rsplit("/", 1)[1], password="nope"))
    calls, error = _attempts(wrong_password, attempts=4)
    assert calls == 1 and isinstance(error, DatabaseUnusable)
    assert "password authentication failed" in str(error) and "nope" not in str(error)

    calls, error = _attempts(Database(private_pg.url("no_such_database")), attempts=4)
    assert calls == 1 and isinstance(error, DatabaseUnusable)
    assert "does not exist" in str(error) and "\n" not in str(error)

    # Schema missing: a table the code needs is not there.
    bare = Database(private_pg.url())
    with pytest.raises(DatabaseUnusable, match="incidents"):
        bare.retrying(lambda: _select_incidents(bare), attempts=4, first_delay=0.01)

    # The server is down: retried, then reported as unavailable (not unusable).
    database = Database(pg_database)
    database.probe()
    private_pg.stop()
    try:
        calls, error = _attempts(database, attempts=3)
        assert calls == 3 and isinstance(error, DatabaseUnavailable)
        assert database.down_for is not None
    finally:
        private_pg.start()
    database.probe()
    assert database.down_for is None
    database.dispose()


def _select_incidents(database: Database) -> None:
    with database.engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM incidents"))


def test_classify_tells_connection_trouble_from_bad_data() -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError

    class Orig(Exception):
        def __init__(self, message: str, sqlstate: str | None = None) -> None:
            super().__init__(message)
            self.sqlstate = sqlstate

    def op(message: str, sqlstate: str | None = None) -> OperationalError:
        return OperationalError("SELECT 1", {}, Orig(message, sqlstate))

    assert classify(op("connection refused")) == "transient"
    assert classify(op("server closed the connection unexpectedly")) == "transient"
    assert classify(op("terminating connection", "57P01")) == "transient"
    assert classify(op("the database system is starting up", "57P03")) == "transient"
    assert classify(op("bad password", "28P01")) == "permanent"
    assert classify(op("no such database", "3D000")) == "permanent"
    assert classify(op("no such table: incidents")) == "permanent"  # SQLite
    assert classify(op("database is locked")) == "transient"  # SQLite
    assert classify(IntegrityError("INSERT", {}, Orig("duplicate key", "23505"))) is None
    assert classify(ValueError("not a database error")) is None


@pytest.mark.parametrize("problem", ["credentials", "database"])
def test_run_stops_at_once_on_a_permanent_database_error(
    private_pg: PostgresServer, tmp_path: Path, problem: str
) -> None:
    url = (
        private_pg.url(password="wrong")
        if problem == "credentials"
        else private_pg.url("missing_db")
    )
    config = _config(tmp_path / "run.toml", f"127.0.0.1:{free_port()}", ["t"], "g")
    result = run_cli("run", "--config", str(config), "--db", url, timeout=60)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # one line, no traceback, no retry warnings
    assert "unusable" in lines[0] and "wrong" not in lines[0]
    expected = "password authentication failed" if problem == "credentials" else "does not exist"
    assert expected in lines[0]


def _ready(port: int) -> tuple[int, dict]:
    response = httpx.get(
        f"http://127.0.0.1:{port}/readyz", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    return response.status_code, response.json()


def _metric(port: int, name: str) -> float | None:
    response = httpx.get(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert response.status_code == 200
    for line in response.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.mark.kafka
def test_daemon_rides_out_a_database_outage_mid_stream(
    kafka_bootstrap: str, stream: Path, replayed: dict[str, object], daemons: Daemons,
    private_pg: PostgresServer, pg_database: str, tmp_path: Path,
) -> None:  # fmt: skip
    uid = uuid.uuid4().hex[:8]
    topic, group = f"events-{uid}", f"g-{uid}"
    lines = _lines(stream)
    half = len(lines) // 2
    _produce(kafka_bootstrap, lines[:half], topic)
    port = free_port()
    config = _config(
        tmp_path / "run.toml", kafka_bootstrap, [topic], group,
        daemon={"retry_max_delay": 2},  # probes at most 2 s apart: the test ends sooner
        tail=f'[api]\nport = {port}\n[api.tokens]\nread_only = ["{TOKEN}"]\n',
    )  # fmt: skip
    daemon = daemons.start(config, pg_database, "--api")
    _wait(lambda: _consumed(pg_database, group) == half, 90, "the first half", daemons)
    assert _ready(port)[0] == 200 and _metric(port, "bulwark_ready") == 1

    private_pg.stop()
    down_at = time.monotonic()
    _produce(kafka_bootstrap, lines[half:], topic)  # arrives while the database is down
    try:

        def paused() -> bool:
            status, body = _ready(port)
            return status == 503 and "paused" in body["checks"].get("kafka", "")

        _wait(paused, 60, "/readyz to say not ready", daemons)
        assert _metric(port, "bulwark_ready") == 0
        assert _metric(port, "bulwark_database_reachable") == 0
        while time.monotonic() - down_at < 20:
            assert daemon.poll() is None, daemons.log(daemon)  # rides it out
            time.sleep(1)
        assert _ready(port)[0] == 503
    finally:
        private_pg.start()

    total = len(lines)
    _wait(lambda: _consumed(pg_database, group) == total, 120, "the second half", daemons)
    _wait(lambda: _ready(port)[0] == 200, 30, "/readyz to say ready again", daemons)
    assert _metric(port, "bulwark_database_reachable") == 1
    code, _ = _terminate(daemon)
    log = daemons.log(daemon)
    assert code == 0, log
    assert _outcome(pg_database) == replayed
    # One line when consumption paused and one when it resumed, however many probes.
    assert log.count("agent.runtime.daemon: consumption paused") == 1, log
    assert log.count("agent.runtime.daemon: database reachable again") == 1, log
    assert log.count("storage.db: database") == 2, log  # unreachable, reachable again
    # It kept its group membership: no rebalance took its partitions away meanwhile.
    assert "lost (" not in log and log.count("assigned 4 partitions") == 1, log
