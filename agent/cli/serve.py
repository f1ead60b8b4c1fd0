"""`bulwark serve`: the HTTP API, with the background jobs and the alert dispatcher."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.common import (
    ConfigOption,
    DbOption,
    err,
    open_database,
    require_token,
    settings_for,
)
from agent.observability import logs
from agent.runtime.background import Background
from storage.db import redact


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.", min=0)] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Serve the HTTP API and web page (bearer token from BULWARK_API_TOKEN or config)."""
    # Imported here: the web framework and server would cost every other command ~0.2 s.
    import uvicorn

    from agent.api import create_app

    settings = settings_for(config, db)
    api = settings.api
    require_token(settings)
    logs.configure(api.json_logs)
    database = open_database(settings)
    background = Background(settings, database).start()
    host = host or api.host
    port = api.port if port is None else port
    err.print(f"Bulwark API on http://{host}:{port}/ (database {redact(database.url)})")
    try:
        uvicorn.run(
            create_app(settings, database),
            host=host,
            port=port,
            log_config=None,
            access_log=True,
        )
    finally:
        background.stop()
        database.dispose()
