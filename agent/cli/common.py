"""What every command group shares: the consoles, the common options, opening the settings and
the database, one-line usage errors, and the table and JSON printers.

Command modules import this module and nothing else of the CLI, so the package has no cycle.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from agent.config import Settings, load_settings
from storage.contract import IncidentJSON
from storage.db import Database, DatabaseError, data_dir, default_url, redact
from storage.queries import Repository
from streams.decode import InvalidEvent, parse_ts

# Off a terminal (pipes, CI logs) rich would wrap tables at 80 columns; give them room.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

# Set by the global --debug option (agent.cli.main) before any command runs.
state: dict[str, Any] = {"debug": False}

DB_HELP = (
    "SQLAlchemy URL of the incident database (env BULWARK_DB_URL). "
    f"Default: sqlite:///{data_dir() / 'bulwark.db'}"
)
DbOption = Annotated[str | None, typer.Option("--db", help=DB_HELP, show_default=False)]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file.", show_default=False)
]
FormatOption = Annotated[str, typer.Option("--format", "-f", help="table or json.")]
ModelOption = Annotated[str | None, typer.Option(help="Only this model.")]
LimitOption = Annotated[int, typer.Option(min=1, help="At most this many, newest first.")]

EVENT_TIME_HELP = (
    "epoch seconds, ISO-8601 with a zone, or an age like 30m, 6h, 7d. Event time: an age "
    "counts back from the latest event time in the database, not from now, so a replay of "
    "last month's traffic keeps its incidents."
)


class UsageError(ValueError):
    """A bad option value; reported in one line."""


class NothingYet(Exception):
    """A read command on a SQLite file that does not exist: nothing was recorded yet."""


def settings_for(config: Path | None, db: str | None) -> Settings:
    """The settings from the config file, with --db on top."""
    settings = load_settings(config)
    if db:
        settings = settings.model_copy(update={"database_url": db})
    return settings


def open_database(settings: Settings, migrate: bool = True) -> Database:
    """The database; a read (`migrate=False`) of a SQLite file that does not exist raises
    NothingYet instead of creating an empty file."""
    if not migrate:
        path = sqlite_file(settings.database_url or default_url())
        if path is not None and not path.exists():
            raise NothingYet(str(path))
    database = Database(settings.database_url)
    if migrate:
        database.upgrade()
    elif not database.retrying(database.is_current):
        raise DatabaseError(
            f"database {redact(database.url)} has no Bulwark schema; run 'bulwark db upgrade'"
        )
    return database


def read_database(db: str | None, fmt: str) -> Database | None:
    """The database of a read command that lists things; None, once `nothing_yet` has said
    so, when nothing was recorded yet."""
    try:
        return open_database(settings_for(None, db), migrate=False)
    except NothingYet as missing:
        nothing_yet(str(missing), fmt)
        return None


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # Database() reports a bad URL in its own words
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def nothing_yet(path: str, fmt: str = "table", empty: Any = None) -> None:
    """Says that nothing was recorded yet (and where the demo's data is, if it ran); prints
    the empty answer in JSON so that scripts see a valid document."""
    demo = data_dir() / "demo.db"
    hint = "run 'bulwark replay FILE' or 'bulwark demo' first"
    if demo.exists() and Path(path).resolve() != demo.resolve():
        hint = f"the demo's database is sqlite:///{demo} (pass it with --db)"
    err.print(
        f"Nothing recorded yet: no database at {path}; {hint}.", highlight=False, soft_wrap=True
    )
    if fmt == "json":
        print_json([] if empty is None else empty)


def check_format(fmt: str) -> str:
    if fmt not in ("table", "json"):
        raise UsageError(f"--format must be 'table' or 'json', not {fmt!r}")
    return fmt


def one_of(option: str, value: str | None, valid: tuple[str, ...]) -> str | None:
    if value is not None and value not in valid:
        raise UsageError(f"unknown {option} {value!r}; valid: {', '.join(valid)}")
    return value


def require_token(settings: Settings) -> None:
    """The API serves nothing without a token: refuse to start rather than run open."""
    if not settings.api.tokens.admin and not settings.api.tokens.read_only:
        raise UsageError(
            "no API token configured: set BULWARK_API_TOKEN or api.tokens.admin in the config"
        )


def print_incidents(items: Sequence[IncidentJSON]) -> None:
    table = Table(title=f"incidents ({len(items)})", title_justify="left")
    for column in (
        "id", "model", "kind", "subject", "severity", "status", "last seen (UTC)", "count"
    ):  # fmt: skip
        table.add_column(column, no_wrap=True)
    table.add_column("cause", no_wrap=True)
    table.add_column("title", overflow="fold", min_width=20)
    for i in items:
        related = i.get("related_ids") or []
        cause = (
            f"see #{i['parent_id']}"
            if i.get("parent_id") is not None
            else f"root, +{len(related)} related"
            if related
            else "root"
        )
        table.add_row(
            str(i["id"]),
            i["model"],
            i["kind"],
            i["subject"],
            i["severity"],
            i["status"],
            when(i["last_seen"]),
            str(i["count"]),
            cause,
            i["title"],
        )
    out.print(table)


def folded_table(title: str, columns: Iterable[str]) -> Table:
    """A titled table whose long cells wrap within their column rather than being cut."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def num(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_AGE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def event_time(option: str, value: str | None, repository: Repository) -> float | None:
    """An event time from epoch seconds, ISO-8601, or an age counted back from the latest
    event time in the database (the wall clock only when the database holds no event)."""
    if value is None:
        return None
    if match := _AGE.match(value.strip()):
        latest = repository.latest_event_time()
        return (time.time() if latest is None else latest) - float(match[1]) * _AGE_SECONDS[
            match[2]
        ]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parse_ts(value)
    except InvalidEvent:
        raise UsageError(
            f"{option} must be epoch seconds, ISO-8601 with a zone, or an age like 6h: {value!r}"
        ) from None
