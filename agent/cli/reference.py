"""`bulwark reference set|show|list`, `bulwark report MODEL` and `bulwark reports list`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.common import (
    ConfigOption,
    DbOption,
    FormatOption,
    ModelOption,
    UsageError,
    check_format,
    folded_table,
    num,
    open_database,
    out,
    print_json,
    read_database,
    settings_for,
    when,
)
from agent.reference import ReferenceFileError, load_reference_file
from storage.queries import Repository
from storage.unit_of_work import ReferenceInput

reference_app = typer.Typer(help="Reference data of models (what drift is judged against).")
reports_app = typer.Typer(help="Evidently reports stored in the database.", no_args_is_help=True)

VersionOption = Annotated[
    str | None,
    typer.Option("--model-version", help="The model version it applies to (default: any)."),
]


def register(app: typer.Typer) -> None:
    reference_app.info.no_args_is_help = True
    app.add_typer(reference_app, name="reference")
    app.add_typer(reports_app, name="reports")
    app.command("report")(report)


@reference_app.command("set")
def reference_set(
    model: Annotated[str, typer.Argument(help="The model's name, as in its events.")],
    file: Annotated[
        Path,
        typer.Argument(help="JSONL of prediction events, or CSV / Parquet of training data."),
    ],
    model_version: VersionOption = None,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Store a model's reference data from a file (a seeded sample of at most
    [reference] max_rows rows)."""
    settings = settings_for(config, db)
    try:
        loaded = load_reference_file(file, model, settings.reference.max_rows)
    except ReferenceFileError as exc:
        raise UsageError(str(exc)) from None
    version = model_version if model_version is not None else loaded.model_version
    database = open_database(settings)
    row = database.retrying(
        lambda: Repository(database).add_reference(
            ReferenceInput(
                model=model,
                model_version=version or "",
                origin=f"file:{file.resolve()}",
                rows=len(loaded.sample),
                source_rows=loaded.source_rows,
                summary=loaded.sample.summary(),
                sample=loaded.sample.encode(),
            )
        )
    )
    features = len(row.summary.get("features", {}))
    out.print(
        f"Reference {row.id} stored for model {model}"
        f"{f' version {version}' if version else ' (any version)'}: {row.rows:,} rows "
        f"(of {row.source_rows:,}), {features} features."
    )


@reference_app.command("show")
def reference_show(
    model: Annotated[str, typer.Argument()],
    model_version: VersionOption = None,
    db: DbOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Show the reference in force for a model (version), with its summary statistics."""
    check_format(fmt)
    database = open_database(settings_for(None, db), migrate=False)
    row = Repository(database).find_reference(model, model_version)
    if row is None:
        raise UsageError(f"model {model!r} has no reference")
    item = row.to_contract()
    if fmt == "json":
        print_json(item)
        return
    _print_references([item])
    table = folded_table(
        "features", ("feature", "missing", "mean", "std", "p05", "p50", "p95", "top categories")
    )
    for name, stats in item["summary"].get("features", {}).items():
        numeric = stats.get("numeric", {})
        top = stats.get("categorical", {}).get("top", {})
        table.add_row(
            name,
            f"{stats.get('missing_share', 0):.1%}",
            *(num(numeric.get(k)) for k in ("mean", "std", "p05", "p50", "p95")),
            ", ".join(f"{k} {v:.0%}" for k, v in list(top.items())[:4]),
        )
    out.print(table)


@reference_app.command("list")
def reference_list(
    model: ModelOption = None,
    db: DbOption = None,
    fmt: FormatOption = "table",
) -> None:
    """List stored references, newest first per model (the newest per version is in force)."""
    check_format(fmt)
    database = read_database(db, fmt)
    if database is None:
        return
    items = [r.to_contract() for r in Repository(database).list_references(model)]
    if fmt == "json":
        print_json(items)
    else:
        _print_references(items)


def report(
    model: Annotated[str, typer.Argument(help="The model to report on.")],
    window: Annotated[
        str | None,
        typer.Option(help="1h, 30m, 2d (event time) or 5000 (events); default: all kept."),
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the HTML report here.", show_default=False)
    ] = None,
    config: ConfigOption = None,
    db: DbOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Build an Evidently report now: the model's reference vs its recent window."""
    from agent.reports import ReportError, Window, build_report, parse_window

    check_format(fmt)
    settings = settings_for(config, db)
    database = open_database(settings, migrate=False)
    try:
        outcome = build_report(
            settings, database, model, parse_window(window) if window else Window(), out_file
        )
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    assert outcome is not None
    item = {**outcome.report.to_contract(), "incidents": outcome.incident_ids}
    if fmt == "json":
        print_json(item)
        return
    drift = item["summary"].get("drift", {})
    out.print(
        f"Report {item['id']} for model {model}: window {when(item['window']['start'])} to "
        f"{when(item['window']['end'])} ({item['summary']['window']['events']:,} events), "
        f"{drift.get('drifted_columns', 0)} of {len(drift.get('columns', {}))} columns drifted."
    )
    for name, column in drift.get("columns", {}).items():
        if column["drifted"]:
            out.print(f"  - {name}: {column['method']} {column['score']:.3g}")
    out.print(f"HTML: {item['html_path']}")
    if outcome.incident_ids:
        out.print(f"Linked to incidents: {', '.join(map(str, outcome.incident_ids))}")


@reports_app.command("list")
def reports_list(
    model: ModelOption = None,
    incident: Annotated[int | None, typer.Option(help="Only reports linked to it.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    db: DbOption = None,
    fmt: FormatOption = "table",
) -> None:
    """List stored reports, newest first."""
    check_format(fmt)
    database = read_database(db, fmt)
    if database is None:
        return
    repository = Repository(database)
    rows = (
        repository.reports_of_incident(incident)
        if incident is not None
        else repository.list_reports(model, limit)
    )
    items = [r.to_contract() for r in rows if model is None or r.model == model]
    if fmt == "json":
        print_json(items)
        return
    table = folded_table(
        f"reports ({len(items)})", ("id", "model", "window start", "window end", "drifted", "html")
    )
    for r in items:
        drift = r["summary"].get("drift", {})
        table.add_row(
            str(r["id"]),
            r["model"],
            when(r["window"]["start"]),
            when(r["window"]["end"]),
            f"{drift.get('drifted_columns', 0)}/{len(drift.get('columns', {}))}",
            r["html_path"] or "",
        )
    out.print(table)


def _print_references(items: list[dict[str, Any]]) -> None:
    table = folded_table(
        f"references ({len(items)})", ("id", "model", "version", "origin", "rows", "of", "created")
    )
    for r in items:
        table.add_row(
            str(r["id"]),
            r["model"],
            r["model_version"] or "(any)",
            r["origin"],
            f"{r['rows']:,}",
            f"{r['source_rows']:,}",
            r["created_at"][:19],
        )
    out.print(table)
