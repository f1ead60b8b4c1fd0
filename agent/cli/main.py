"""The `bulwark` app: global options, the command groups in the order `--help` lists them, and
`main()`, which turns the expected errors into one line on stderr and exit code 2."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
from typing import Annotated

import typer

from agent import tune_garbage_collector
from agent.cli import (
    alerts,
    db,
    dead_letters,
    demo,
    incidents,
    kafka,
    performance,
    reference,
    replay,
    serve,
)
from agent.cli.common import UsageError, err, out, state
from agent.config import ConfigError
from storage.db import DatabaseError

app = typer.Typer(
    help="Bulwark: a runtime guard for ML models in production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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
    state["debug"] = debug


for _group in (
    incidents,
    dead_letters,
    db,
    demo,
    replay,
    reference,
    serve,
    alerts,
    performance,
    kafka,
):
    _group.register(app)


def main() -> None:
    tune_garbage_collector()
    try:
        app()
    except (ConfigError, DatabaseError, UsageError, FileNotFoundError, IsADirectoryError) as exc:
        if state["debug"]:
            raise
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
