"""The `bulwark` command line (contract section 2).

Errors are one line on stderr and a non-zero exit; `--debug` (before the command) shows the
traceback as well.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from agent import tune_garbage_collector
from agent.alerts.dispatcher import Delivering
from agent.config import ConfigError, Settings, load_settings
from agent.demo import demo_scenario
from agent.runtime.pipeline import Pipeline
from agent.runtime.replay import (
    REPLAY_CONSUMER,
    ReplayResult,
    memory_batches,
    mostly_dead_letters,
    replay_batches,
    waiting_for_labels,
)
from detectors.base import Kind
from storage.db import Database, DatabaseError, data_dir, default_url, redact
from storage.enums import OPEN_STATUSES, IncidentStatus
from storage.queries import IncidentFilter, Repository
from streams.decode import InvalidEvent, parse_ts
from streams.files import FileSource

app = typer.Typer(
    help="Bulwark: a runtime guard for ML models in production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
incidents_app = typer.Typer(help="Query incident history.", no_args_is_help=True)
dead_letters_app = typer.Typer(
    help="Inspect records that could not be decoded.", no_args_is_help=True
)
db_app = typer.Typer(help="Manage the incident database schema.", no_args_is_help=True)
app.add_typer(incidents_app, name="incidents")
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(db_app, name="db")

# Off a terminal (pipes, CI logs) rich would wrap tables at 80 columns; give them room.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

DB_HELP = (
    "SQLAlchemy URL of the incident database (env BULWARK_DB_URL). "
    f"Default: sqlite:///{data_dir() / 'bulwark.db'}"
)
DbOption = Annotated[str | None, typer.Option("--db", help=DB_HELP, show_default=False)]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file.", show_default=False)
]
FormatOption = Annotated[str, typer.Option("--format", "-f", help="table or json.")]


class UsageError(ValueError):
    """A bad option value; reported in one line."""


def _version(value: bool) -> None:
    if value:
        try:
            version = importlib.metadata.version("bulwark")
        except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
            version = "unknown (not installed)"
        out.print(f"bulwark {version}", highlight=False)
        raise typer.Exit()


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_version
        ),
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _state["debug"] = debug


_state: dict[str, Any] = {"debug": False}


def _settings(config: Path | None, db: str | None) -> Settings:
    settings = load_settings(config)
    if db:
        settings = settings.model_copy(update={"database_url": db})
    return settings


class NothingYet(Exception):
    """A read command on a SQLite file that does not exist: nothing was recorded yet."""


def _database(settings: Settings, migrate: bool = True) -> Database:
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
        _print_json([] if empty is None else empty)


def _check_format(fmt: str) -> str:
    if fmt not in ("table", "json"):
        raise UsageError(f"--format must be 'table' or 'json', not {fmt!r}")
    return fmt


@app.command()
def demo(
    db: DbOption = None,
    events: Annotated[int, typer.Option(help="Predictions per model.", min=5000)] = 20_000,
) -> None:
    """Run the pipeline on a built-in scenario (3 models, 2 injected drifts, malformed lines).

    Needs no network and no service. Uses a fresh SQLite file in the data directory unless
    --db is given.
    """
    url = db or f"sqlite:///{data_dir() / 'demo.db'}"
    if not db:
        Path(data_dir() / "demo.db").unlink(missing_ok=True)
    settings = _settings(None, url)
    scenario = demo_scenario(events_per_model=events)
    out.print(
        f"[bold]Bulwark demo[/]: {len(scenario.lines):,} records, 3 models "
        f"(fraud, churn, price), {scenario.malformed} malformed lines, injected drifts:"
    )
    for drift in scenario.drifts:
        out.print(
            f"  - {drift.model}.{drift.feature} at prediction {drift.at_event:,}: "
            f"{drift.description}"
        )
    database = _database(settings)
    pipeline = Pipeline(settings, database, consumer="demo")
    batches = memory_batches(scenario.lines, "demo", settings.batch_size)
    result = _run_with_progress(pipeline, batches, total=len(scenario.lines), unit="records")
    _print_summary(result)
    _after_run(pipeline, result, database, strict=False)
    incidents = Repository(database).list_incidents()
    _print_incidents([i.to_contract() for i in incidents])
    out.print(f"\nDatabase: {redact(database.url)}")
    out.print(f"Try: bulwark incidents list --db {redact(database.url)}")


@app.command()
def replay(
    file: Annotated[str, typer.Argument(help="JSONL file of events, or - for standard input.")],
    config: ConfigOption = None,
    db: DbOption = None,
    alerts: Annotated[
        bool, typer.Option("--alerts", help="Send notifications (off: a backfill pages nobody).")
    ] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 1 when most records became dead letters (not events)."),
    ] = False,
) -> None:
    """Feed a file of events through the daemon's pipeline, in event time, then exit.

    Warns when most records become dead letters, and says which models' accuracy monitoring
    still waits for labels."""
    settings = _settings(config, db)
    source = FileSource(
        file, batch_size=settings.batch_size, max_record_bytes=settings.max_record_bytes
    )
    database = _database(settings)
    pipeline = Pipeline(settings, database, consumer=REPLAY_CONSUMER, notify=alerts)
    if not alerts:
        result = _run_with_progress(
            pipeline, source.batches(), total=source.size_bytes(), unit="bytes"
        )
        _print_summary(result)
        _after_run(pipeline, result, database, strict)
        return
    if not settings.alerts.channels:
        err.print("warning: --alerts given but no alert channel is configured")
    with Delivering(database, settings.alerts) as delivering:
        result = _run_with_progress(
            pipeline, source.batches(), total=source.size_bytes(), unit="bytes"
        )
    _print_summary(result)
    assert delivering.settled is not None
    out.print(delivering.settled.describe())
    if delivering.settled.pending:
        err.print(
            f"warning: {delivering.settled.pending} notifications still pending after "
            f"{settings.alerts.replay_wait:g}s (alerts.replay_wait); they stay in the outbox"
        )
    _after_run(pipeline, result, database, strict)


def _after_run(pipeline: Pipeline, result: ReplayResult, database: Database, strict: bool) -> None:
    """What a user should know after a run: records that were not events, accuracy
    monitoring that has not started for want of labels."""
    for wait in waiting_for_labels(pipeline):
        per = f" per partition ({wait.partitions} partitions)" if wait.partitions > 1 else ""
        err.print(
            f"note: accuracy monitoring of model {wait.model!r} waits for labels: "
            f"{wait.have:,} labelled predictions of the {wait.needed:,} it needs{per} "
            "(detectors.accuracy.reference_size) before it tests for an accuracy drop",
            highlight=False,
            soft_wrap=True,
        )
    if mostly_dead_letters(result):
        total = result.events
        latest = Repository(database).list_dead_letters(1)
        example = f"; e.g. {latest[0].reason}" if latest else ""
        err.print(
            f"warning: {result.dead_letters:,} of {total:,} records "
            f"({result.dead_letters / total:.0%}) became dead letters{example}. Is this a "
            "JSONL file of Bulwark events? See 'bulwark dead-letters list'.",
            highlight=False,
            soft_wrap=True,
        )
        if strict:
            raise typer.Exit(1)


def _run_with_progress(
    pipeline: Pipeline, batches: Any, total: int | None, unit: str
) -> ReplayResult:
    if not err.is_terminal:
        return replay_batches(pipeline, batches)
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(f"processing ({unit})", total=total)
        return replay_batches(
            pipeline, batches, on_progress=lambda done: progress.update(task, completed=done)
        )


def _print_summary(result: ReplayResult) -> None:
    out.print(
        f"Processed {result.events:,} records in {result.seconds:.2f}s "
        f"({result.events_per_second:,.0f} events/s): {result.dead_letters:,} dead letters, "
        f"{result.findings:,} findings, {result.incidents_opened:,} incidents opened."
    )


KINDS = tuple(k.value for k in Kind)
STATUSES = (*OPEN_STATUSES, IncidentStatus.RESOLVED)
EVENT_TIME_HELP = (
    "epoch seconds, ISO-8601 with a zone, or an age like 30m, 6h, 7d. Event time: an age "
    "counts back from the latest event time in the database, not from now, so a replay of "
    "last month's traffic keeps its incidents."
)
SinceOption = Annotated[
    str | None, typer.Option(help=f"Latest evidence at or after T: {EVENT_TIME_HELP}")
]
UntilOption = Annotated[
    str | None, typer.Option(help=f"First evidence at or before T: {EVENT_TIME_HELP}")
]


def _one_of(option: str, value: str | None, valid: tuple[str, ...]) -> str | None:
    if value is not None and value not in valid:
        raise UsageError(f"unknown {option} {value!r}; valid: {', '.join(valid)}")
    return value


@incidents_app.command("list")
def incidents_list(
    db: DbOption = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    kind: Annotated[str | None, typer.Option(help=f"Only this kind: {', '.join(KINDS)}.")] = None,
    status: Annotated[
        str | None, typer.Option(help=f"Only this status: {', '.join(STATUSES)}.")
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 1000,
    every: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Also incidents attributed to another one (by default only root incidents, "
            "one per cause; the others are listed under `related` of their root).",
        ),
    ] = False,
    fmt: FormatOption = "table",
) -> None:
    """List root incidents (one per cause), newest first; --all for every incident.
    Times are event times, UTC."""
    _check_format(fmt)
    _one_of("--kind", kind, KINDS)
    _one_of("--status", status, STATUSES)
    try:
        database = _database(_settings(None, db), migrate=False)
    except NothingYet as missing:
        nothing_yet(str(missing), fmt)
        return
    repository = Repository(database)
    where = IncidentFilter(
        model=model,
        kind=kind,
        status=status,
        since=event_time("--since", since, repository),
        until=event_time("--until", until, repository),
        roots_only=not every,
    )
    items = [i.to_contract() for i in repository.list_incidents(where, limit=limit)]
    if fmt == "json":
        _print_json(items)
    else:
        _print_incidents(items)


@incidents_app.command("show")
def incidents_show(
    incident_id: Annotated[int, typer.Argument(metavar="ID")],
    db: DbOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Show one incident with its evidence."""
    _check_format(fmt)
    try:
        repository = Repository(_database(_settings(None, db), migrate=False))
    except NothingYet as missing:
        raise UsageError(
            f"no incident with id {incident_id}: no database at {missing} yet"
        ) from None
    incident = repository.get_incident(incident_id)
    if incident is None:
        raise UsageError(f"no incident with id {incident_id}")
    item = incident.to_contract()
    evidence = [e.to_contract() for e in repository.evidence_of(incident_id)]
    reports = [r.to_contract() for r in repository.reports_of_incident(incident_id)]
    if fmt == "json":
        _print_json({**item, "evidence": evidence, "reports": reports})
        return
    table = Table(show_header=False, box=None)
    for key in ("id", "model", "kind", "subject", "severity", "status", "title", "count"):
        table.add_row(f"[bold]{key}[/]", str(item[key]))
    table.add_row("[bold]first_seen[/]", _when(item["first_seen"]) + " UTC")
    table.add_row("[bold]last_seen[/]", _when(item["last_seen"]) + " UTC")
    out.print(table)
    out.print("[bold]details[/]")
    out.print_json(json.dumps(item["details"], default=str))
    ev = Table(title=f"evidence ({len(evidence)})")
    for column in ("ts (UTC)", "detector", "statistic", "value", "threshold", "effect", "support"):
        ev.add_column(column)
    for e in evidence:
        ev.add_row(
            _when(e["ts"]),
            e["detector"],
            e["statistic"],
            f"{e['value']:.3g}",
            f"{e['threshold']:.3g}",
            _num(e["effect_size"]),
            str(e["support"]),
        )
    out.print(ev)
    for report in reports:
        out.print(f"report {report['id']}: {report['html_path']}")


@dead_letters_app.command("list")
def dead_letters_list(
    db: DbOption = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
    fmt: FormatOption = "table",
) -> None:
    """List dead letters (undecodable records) with their reasons, newest first."""
    _check_format(fmt)
    try:
        database = _database(_settings(None, db), migrate=False)
    except NothingYet as missing:
        nothing_yet(str(missing), fmt)
        return
    rows = Repository(database).list_dead_letters(limit)
    items = [r.to_contract() for r in rows]
    if fmt == "json":
        _print_json(items)
        return
    table = Table(title=f"dead letters ({len(items)})")
    for column in ("id", "received (UTC)", "source", "offset", "reason", "payload"):
        table.add_column(column, overflow="fold")
    for d in items:
        table.add_row(
            str(d["id"]),
            _when(d["received_at"]),
            Path(d["source"]).name,
            f"{d['partition']}:{d['offset']}",
            d["reason"],
            d["payload"][:60],
        )
    out.print(table)


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None, config: ConfigOption = None) -> None:
    """Create or migrate the schema to the newest version."""
    database = Database(_settings(config, db).database_url)
    database.upgrade()
    out.print(f"Database {redact(database.url)} is at the newest schema.")


def _print_incidents(items: list[dict[str, Any]]) -> None:
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
            _when(i["last_seen"]),
            str(i["count"]),
            cause,
            i["title"],
        )
    out.print(table)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _num(value: float | None) -> str:
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


from agent.cli_reference import register as register_reference  # noqa: E402

register_reference(app)
from agent import cli_api  # noqa: E402

cli_api.register(app)
from agent import cli_alerts  # noqa: E402

cli_alerts.register(app)
from agent import cli_performance  # noqa: E402

cli_performance.register(app)
from agent import cli_kafka  # noqa: E402 - registers `run` and `kafka` on the app above

cli_kafka.register(app)


def main() -> None:
    tune_garbage_collector()
    try:
        app()
    except (ConfigError, DatabaseError, UsageError, FileNotFoundError, IsADirectoryError) as exc:
        if _state["debug"]:
            raise
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
