"""`bulwark db upgrade`: create or migrate the incident database's schema."""

from __future__ import annotations

import typer

from agent.cli.common import ConfigOption, DbOption, out, settings_for
from storage.db import Database, redact

app = typer.Typer(help="Manage the incident database schema.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="db")


@app.command("upgrade")
def db_upgrade(db: DbOption = None, config: ConfigOption = None) -> None:
    """Create or migrate the schema to the newest version."""
    database = Database(settings_for(config, db).database_url)
    database.upgrade()
    out.print(f"Database {redact(database.url)} is at the newest schema.")
