"""The database handle: engine, sessions, schema migrations, and connection retries.

This module is the only place that creates engines. The default database is a SQLite file in
the user's data directory; any SQLAlchemy URL works through `--db` / `BULWARK_DB_URL`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
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


class DatabaseError(RuntimeError):
    """The database is unreachable or unusable; the message is one line, without secrets."""


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
    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
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
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except (ArgumentError, ImportError) as exc:
            raise DatabaseError(f"cannot use database {redact(self.url)}: {exc}") from None
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self.sessions.begin() as session:
            yield session

    def retrying(self, work: Callable[[], T], attempts: int = 5, first_delay: float = 0.5) -> T:
        """Runs `work`, retrying with exponential backoff while the database is unreachable."""
        delay = first_delay
        for attempt in range(1, attempts + 1):
            try:
                return work()
            except OperationalError as exc:
                if attempt == attempts:
                    raise DatabaseError(
                        f"database {redact(self.url)} unreachable after {attempts} attempts: "
                        f"{_first_line(exc)}"
                    ) from None
                log.warning(
                    "database %s unreachable (attempt %d/%d), retrying in %.1fs: %s",
                    redact(self.url),
                    attempt,
                    attempts,
                    delay,
                    _first_line(exc),
                )
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

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


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
