"""`bulwark serve`: the HTTP API, with its background jobs (auto-resolve, retention)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler

from agent import lifecycle, logs, retention
from agent.api import create_app
from agent.cli import ConfigOption, DbOption, UsageError, _database, _settings, err
from agent.config import Settings
from agent.scheduler import add_interval_job, make_scheduler
from storage.db import Database, redact

log = logging.getLogger("bulwark.serve")


def start_jobs(settings: Settings, db: Database) -> BackgroundScheduler:
    """The API's background jobs on a started scheduler (also for the daemon to call)."""
    scheduler = make_scheduler()
    api = settings.api
    if api.auto_resolve_after > 0:
        add_interval_job(
            scheduler,
            lambda: lifecycle.auto_resolve(db, api.auto_resolve_after),
            api.auto_resolve_interval,
            "auto-resolve",
        )
    add_interval_job(
        scheduler, lambda: retention.prune(db, api.retention), api.retention.interval, "retention"
    )
    scheduler.start()
    return scheduler


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
        port: Annotated[int | None, typer.Option(help="Port to listen on.", min=0)] = None,
        db: DbOption = None,
        config: ConfigOption = None,
    ) -> None:
        """Serve the HTTP API and web page (bearer token from BULWARK_API_TOKEN or config)."""
        settings = _settings(config, db)
        api = settings.api
        if not api.tokens.admin and not api.tokens.read_only:
            raise UsageError(
                "no API token configured: set BULWARK_API_TOKEN or api.tokens.admin in the config"
            )
        logs.configure(api.json_logs)
        database = _database(settings)
        scheduler = start_jobs(settings, database)
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
            scheduler.shutdown(wait=False)
            database.dispose()
