"""`bulwark dead-letters list`: records that could not be decoded, with their reasons."""

from __future__ import annotations

from pathlib import Path

import typer

from agent.cli.common import (
    DbOption,
    FormatOption,
    LimitOption,
    check_format,
    folded_table,
    out,
    print_json,
    read_database,
    when,
)
from storage.queries import Repository

app = typer.Typer(help="Inspect records that could not be decoded.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="dead-letters")


@app.command("list")
def dead_letters_list(
    db: DbOption = None,
    limit: LimitOption = 100,
    fmt: FormatOption = "table",
) -> None:
    """List dead letters (undecodable records) with their reasons, newest first."""
    check_format(fmt)
    database = read_database(db, fmt)
    if database is None:
        return
    rows = Repository(database).list_dead_letters(limit)
    items = [r.to_contract() for r in rows]
    if fmt == "json":
        print_json(items)
        return
    table = folded_table(
        f"dead letters ({len(items)})",
        ("id", "received (UTC)", "source", "offset", "reason", "payload"),
    )
    for d in items:
        table.add_row(
            str(d["id"]),
            when(d["received_at"]),
            Path(d["source"]).name,
            f"{d['partition']}:{d['offset']}",
            d["reason"],
            d["payload"][:60],
        )
    out.print(table)
