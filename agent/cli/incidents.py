"""`bulwark incidents list|show|acknowledge|resolve|reopen`: incident history and lifecycle."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated

import typer
from rich.table import Table

from agent.cli.common import (
    EVENT_TIME_HELP,
    ConfigOption,
    DbOption,
    FormatOption,
    LimitOption,
    ModelOption,
    NothingYet,
    UsageError,
    check_format,
    event_time,
    num,
    one_of,
    open_database,
    out,
    print_incidents,
    print_json,
    read_database,
    settings_for,
    when,
)
from agent.incidents.lifecycle import LifecycleError, set_status
from detectors.base import Kind
from storage.enums import OPEN_STATUSES, IncidentStatus
from storage.queries import IncidentFilter, Repository

app = typer.Typer(help="Query incident history.", no_args_is_help=True)

KINDS = tuple(k.value for k in Kind)
STATUSES = (*OPEN_STATUSES, IncidentStatus.RESOLVED)
SinceOption = Annotated[
    str | None, typer.Option(help=f"Latest evidence at or after T: {EVENT_TIME_HELP}")
]
UntilOption = Annotated[
    str | None, typer.Option(help=f"First evidence at or before T: {EVENT_TIME_HELP}")
]


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="incidents")


@app.command("list")
def incidents_list(
    db: DbOption = None,
    model: ModelOption = None,
    kind: Annotated[str | None, typer.Option(help=f"Only this kind: {', '.join(KINDS)}.")] = None,
    status: Annotated[
        str | None, typer.Option(help=f"Only this status: {', '.join(STATUSES)}.")
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: LimitOption = 1000,
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
    check_format(fmt)
    one_of("--kind", kind, KINDS)
    one_of("--status", status, STATUSES)
    database = read_database(db, fmt)
    if database is None:
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
        print_json(items)
    else:
        print_incidents(items)


@app.command("show")
def incidents_show(
    incident_id: Annotated[int, typer.Argument(metavar="ID")],
    db: DbOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Show one incident with its evidence."""
    check_format(fmt)
    try:
        repository = Repository(open_database(settings_for(None, db), migrate=False))
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
        print_json({**item, "evidence": evidence, "reports": reports})
        return
    table = Table(show_header=False, box=None)
    for key in ("id", "model", "kind", "subject", "severity", "status", "title", "count"):
        table.add_row(f"[bold]{key}[/]", str(item[key]))
    table.add_row("[bold]first_seen[/]", when(item["first_seen"]) + " UTC")
    table.add_row("[bold]last_seen[/]", when(item["last_seen"]) + " UTC")
    out.print(table)
    out.print("[bold]details[/]")
    out.print_json(json.dumps(item["details"], default=str))
    ev = Table(title=f"evidence ({len(evidence)})")
    for column in ("ts (UTC)", "detector", "statistic", "value", "threshold", "effect", "support"):
        ev.add_column(column)
    for e in evidence:
        ev.add_row(
            when(e["ts"]),
            e["detector"],
            e["statistic"],
            f"{e['value']:.3g}",
            f"{e['threshold']:.3g}",
            num(e["effect_size"]),
            str(e["support"]),
        )
    out.print(ev)
    for report in reports:
        out.print(f"report {report['id']}: {report['html_path']}")


def _status_command(status: str) -> Callable[..., None]:
    def command(
        incident_id: Annotated[int, typer.Argument(metavar="ID")],
        config: ConfigOption = None,
        db: DbOption = None,
        fmt: FormatOption = "table",
    ) -> None:
        check_format(fmt)
        settings = settings_for(config, db)
        try:
            incident = set_status(open_database(settings), settings.alerts, incident_id, status)
        except LifecycleError as exc:
            raise UsageError(str(exc)) from None
        if fmt == "json":
            print_json(incident.to_contract())
        else:
            print_incidents([incident.to_contract()])

    return command


for _status, _verb in (
    ("acknowledged", "acknowledge"),
    ("resolved", "resolve"),
    ("open", "reopen"),
):
    app.command(_verb, help=f"Mark an incident {_status} and notify its channels.")(
        _status_command(_status)
    )
