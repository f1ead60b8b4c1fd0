"""The database handle: engine, sessions, schema migrations, and connection retries.

This module is the only place that creates engines. The default database is a SQLite file in
the user's data directory; any SQLAlchemy URL works through `--db` / `BULWARK_DB_URL`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

# In an installed wheel the migrations ship as storage/migrations (pyproject.toml maps them
# there); in a source checkout they are the repository's alembic/ folder.
_INSTALLED_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATIONS_DIR = (
    _INSTALLED_MIGRATIONS
    if (_INSTALLED_MIGRATIONS / "env.py").is_file()
    else Path(__file__).resolve().parent.parent / "alembic"
)
T = TypeVar("T")
READ_ONLY = "bulwark_read_only"  # execution option of `Database.reading` sessions


class DatabaseError(RuntimeError):
    """The database is unreachable or unusable; the message is one line, without secrets."""


class DatabaseUnavailable(DatabaseError):
    """Transient: the server did not answer (refused, reset, restarting); worth retrying."""


class DatabaseUnusable(DatabaseError):
    """Permanent: retrying cannot help (bad credentials, no such database, schema missing)."""


# SQLSTATEs (or their two-character classes) that no retry can fix: invalid authorization
# (28), no such database (3D000) or schema (3F000), a missing table (42P01: not migrated),
# insufficient privilege (42501).
PERMANENT_SQLSTATES = ("28", "3D000", "3F000", "42P01", "42501")
# libpq reports a failed connection without a SQLSTATE, only as text: these are permanent.
PERMANENT_MESSAGES = (
    "password authentication failed",
    "authentication failed for user",
    "no pg_hba.conf entry",
    "does not exist",  # database "x" / role "x" does not exist
    "no such table",  # SQLite without the schema
    "unable to open database file",  # SQLite: the directory does not exist
)
Failure = Literal["transient", "permanent"]


def classify(exc: BaseException) -> Failure | None:
    """Whether a database error is worth retrying; None if it is no connection trouble at all
    (a constraint violation, bad data: a bug or a bad record, not an outage)."""
    if not isinstance(exc, DBAPIError):
        return None
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(code, str) and code.startswith(PERMANENT_SQLSTATES):
        return "permanent"
    message = str(orig or exc).lower()
    if any(text in message for text in PERMANENT_MESSAGES):
        return "permanent"
    if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
        return "transient"
    return None


def data_dir() -> Path:
    """$XDG_DATA_HOME/bulwark, else ~/.local/share/bulwark."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bulwark"


def default_url() -> str:
    return f"sqlite:///{data_dir() / 'bulwark.db'}"


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


class Database:
    def __init__(self, url: str | None = None, attempts: int = 5) -> None:
        """`attempts`: how often `retrying` tries by default (0.5, 1, 2, 4 s apart)."""
        self.url = url or default_url()
        self.attempts = attempts
        try:
            parsed = make_url(self.url)
        except ArgumentError:
            raise DatabaseError(f"invalid database URL: {self.url!r}") from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, object] = {"pool_pre_ping": True}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                _sqlite_directory(Path(parsed.database).expanduser())
            kwargs["connect_args"] = {"timeout": 30}
        elif parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in (
            "psycopg",
            "psycopg2",
        ):
            # A server that accepts nothing (a network partition) fails a connection attempt
            # in this many seconds, instead of the OS's minutes: the outage is noticed.
            kwargs["connect_args"] = {"connect_timeout": 10}
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except (ArgumentError, ImportError) as exc:
            raise DatabaseError(f"cannot use database {redact(self.url)}: {exc}") from None
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads begin deferred on SQLite (`_sqlite_begin`): they never hold the write lock.
        self.read_sessions = sessionmaker(
            self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )
        # Outage bookkeeping shared by every thread using this handle: one log line when the
        # database stops answering and one when it answers again, however many retries.
        self._down_since: float | None = None
        self._outage_lock = threading.Lock()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self.sessions.begin() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only: on SQLite it does not take the write lock, so the API
        and the CLI never make the daemon's writes wait (WAL lets them read meanwhile)."""
        with self.read_sessions.begin() as session:
            yield session

    def retrying(
        self, work: Callable[[], T], attempts: int | None = None, first_delay: float = 0.5
    ) -> T:
        """Runs `work`, retrying with exponential backoff while the database is unreachable.

        Raises `DatabaseUnusable` at once on a permanent error, `DatabaseUnavailable` when the
        attempts are spent; errors that are no connection trouble pass through unchanged."""
        attempts = attempts or self.attempts
        delay = first_delay
        for attempt in range(1, attempts + 1):
            try:
                result = work()
            except DBAPIError as exc:
                failure = classify(exc)
                if failure is None:
                    raise
                if failure == "permanent":
                    raise DatabaseUnusable(
                        f"database {redact(self.url)} unusable: {_first_line(exc)}"
                    ) from None
                self._mark_down(exc)
                if attempt == attempts:
                    raise DatabaseUnavailable(
                        f"database {redact(self.url)} unreachable after {attempts} attempts: "
                        f"{_first_line(exc)}"
                    ) from None
                log.debug("database unreachable (attempt %d/%d)", attempt, attempts)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
            else:
                if self._down_since is not None:
                    self._mark_up()
                return result
        raise AssertionError("unreachable")

    def probe(self) -> None:
        """One trivial query, no retry: raises `DatabaseUnavailable` or `DatabaseUnusable`."""

        def ping() -> None:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        self.retrying(ping, attempts=1)

    @property
    def down_for(self) -> float | None:
        """Seconds since the database stopped answering, None while it answers."""
        since = self._down_since
        return None if since is None else time.monotonic() - since

    def _mark_down(self, exc: BaseException) -> None:
        with self._outage_lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        log.warning(
            "database %s unreachable (%s); retrying with backoff",
            redact(self.url),
            _first_line(exc),
        )

    def _mark_up(self) -> None:
        with self._outage_lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning(
                "database %s reachable again after %.0fs",
                redact(self.url),
                time.monotonic() - since,
            )

    def upgrade(self) -> None:
        """Brings the schema to the newest migration (alembic upgrade head)."""
        from alembic.config import Config

        from alembic import command

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["engine"] = self.engine
        self.retrying(lambda: command.upgrade(config, "head"))

    def is_current(self) -> bool:
        return "incidents" in inspect(self.engine).get_table_names()

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_directory(path: Path) -> None:
    """Creates Bulwark's own data directory for a SQLite file in it; any other directory
    must exist (a mistyped --db path should fail, not scatter directories)."""
    parent = path.parent
    if parent.is_dir():
        return
    if parent.resolve().is_relative_to(data_dir().resolve()):
        parent.mkdir(parents=True, exist_ok=True)
        return
    raise DatabaseError(f"cannot use SQLite database {path}: directory {parent} does not exist")


def _sqlite_connect(dbapi_connection: object, _record: object) -> None:
    """WAL, foreign keys, and transactions SQLAlchemy begins itself (`_sqlite_begin`).

    pysqlite's legacy transaction control emits BEGIN only before INSERT/UPDATE/DELETE, so a
    SAVEPOINT taken first (an incident's nested transaction) runs outside any transaction
    and is committed on release: a failed batch kept its incident. `isolation_level = None`
    stops pysqlite's own BEGIN; SQLAlchemy's pysqlite recipe ("Serializable isolation /
    Savepoints / Transactional DDL"), with BEGIN IMMEDIATE (`_sqlite_begin`)."""
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]


def _sqlite_begin(connection: Connection) -> None:
    """A transaction that may write takes SQLite's write lock when it begins, waiting up to
    the busy timeout for it. A deferred BEGIN would take it at the first write, and a
    transaction that read first fails at once ("database is locked") when another wrote
    meanwhile: the dispatcher, the scheduler and the API share one SQLite file. One writer at
    a time is all SQLite allows anyway. Read-only sessions (`Database.reading`) begin
    deferred: under WAL they read a snapshot without waiting for, or blocking, the writer."""
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
