"""`bulwark performance MODEL`: a model's metric history, measured and estimated."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from agent.cli.common import (
    EVENT_TIME_HELP,
    DbOption,
    FormatOption,
    check_format,
    event_time,
    folded_table,
    out,
    print_json,
    read_database,
    when,
)
from storage.queries import Repository


def register(app: typer.Typer) -> None:
    app.command("performance")(performance)


def performance(
    model: Annotated[str, typer.Argument(help="The model whose history to show.")],
    db: DbOption = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Only this model version.")
    ] = None,
    metric: Annotated[
        str | None, typer.Option("--metric", help="Only this metric, e.g. accuracy.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help=f"Windows ending at or after T: {EVENT_TIME_HELP}")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help=f"Windows starting at or before T: {EVENT_TIME_HELP}")
    ] = None,
    fmt: FormatOption = "table",
) -> None:
    """Show a model's performance per event-time window (measured and estimated)."""
    check_format(fmt)
    database = read_database(db, fmt)
    if database is None:
        return
    repository = Repository(database)
    rows = repository.performance_history(
        model,
        model_version=version,
        metric=metric,
        since=event_time("--since", since, repository),
        until=event_time("--until", until, repository),
    )
    if fmt == "json":
        print_json(rows)
        return
    if not rows:
        out.print(f"no performance history for model {model!r} (no labels or scores yet)")
        return
    out.print(_pivot(model, rows))


METRIC_ORDER = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "log_loss",
    "brier",
    "mae",
    "rmse",
    "bias",
    "coverage",
    "label_delay",
)


def _pivot(model: str, rows: list[dict[str, Any]]) -> Table:
    """One line per (window, version); one column per metric, estimated ones marked."""
    lines: dict[tuple[float, str], dict[str, dict[str, Any]]] = {}
    names: set[str] = set()
    for r in rows:
        name = f"est. {r['metric']}" if r["estimated"] else r["metric"]
        names.add(name)
        lines.setdefault((r["window_start"], r["model_version"]), {})[name] = r
    order = {m: i for i, m in enumerate(METRIC_ORDER)}
    columns = sorted(names, key=lambda m: (order.get(m.removeprefix("est. "), 99), m))
    table = folded_table(
        f"performance of {model} (per event-time window; est. = estimated)",
        ("window start (UTC)", "version", "labelled", *columns),
    )
    for (start, version), values in sorted(lines.items()):
        delay = values.get("label_delay")
        table.add_row(
            when(start),
            version or "-",
            f"{delay['n']:,}" if delay else "0",
            *(_cell(values.get(c)) for c in columns),
        )
    return table


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    text = _fmt(row["value"])
    if row["ci_low"] is not None and row["ci_high"] is not None:
        half = max(row["value"] - row["ci_low"], row["ci_high"] - row["value"])
        text += f"±{half:.2g}"
    return text


def _fmt(value: float) -> str:
    return f"{value:.3g}"
