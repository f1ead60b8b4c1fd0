"""`bulwark demo`: the pipeline on a built-in scenario, with no network and no service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.cli.common import DbOption, open_database, out, print_incidents, settings_for
from agent.cli.replay import after_run, print_summary, run_with_progress
from agent.demo import demo_scenario
from agent.runtime.pipeline import Pipeline
from agent.runtime.replay import memory_batches
from storage.db import data_dir, redact
from storage.queries import Repository


def register(app: typer.Typer) -> None:
    app.command()(demo)


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
    settings = settings_for(None, url)
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
    database = open_database(settings)
    pipeline = Pipeline(settings, database, consumer="demo")
    batches = memory_batches(scenario.lines, "demo", settings.batch_size)
    result = run_with_progress(pipeline, batches, total=len(scenario.lines), unit="records")
    print_summary(result)
    after_run(pipeline, result, database, strict=False)
    incidents = Repository(database).list_incidents()
    print_incidents([i.to_contract() for i in incidents])
    out.print(f"\nDatabase: {redact(database.url)}")
    out.print(f"Try: bulwark incidents list --db {redact(database.url)}")
