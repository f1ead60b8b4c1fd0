"""`bulwark replay FILE`, and the run helpers it shares with `bulwark demo`: the progress bar,
the summary line and what a user should know after a run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from agent.alerts.dispatcher import Delivering
from agent.cli.common import ConfigOption, DbOption, err, open_database, out, settings_for
from agent.runtime.pipeline import Pipeline
from agent.runtime.replay import (
    REPLAY_CONSUMER,
    ReplayResult,
    mostly_dead_letters,
    replay_batches,
    waiting_for_labels,
)
from storage.db import Database
from storage.queries import Repository
from streams.events import RawRecord
from streams.files import FileSource


def register(app: typer.Typer) -> None:
    app.command()(replay)


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
    settings = settings_for(config, db)
    source = FileSource(
        file, batch_size=settings.batch_size, max_record_bytes=settings.max_record_bytes
    )
    database = open_database(settings)
    pipeline = Pipeline(settings, database, consumer=REPLAY_CONSUMER, notify=alerts)
    if not alerts:
        result = run_with_progress(
            pipeline, source.batches(), total=source.size_bytes(), unit="bytes"
        )
        print_summary(result)
        after_run(pipeline, result, database, strict)
        return
    if not settings.alerts.channels:
        err.print("warning: --alerts given but no alert channel is configured")
    with Delivering(database, settings.alerts) as delivering:
        result = run_with_progress(
            pipeline, source.batches(), total=source.size_bytes(), unit="bytes"
        )
    print_summary(result)
    assert delivering.settled is not None
    out.print(delivering.settled.describe())
    if delivering.settled.pending:
        err.print(
            f"warning: {delivering.settled.pending} notifications still pending after "
            f"{settings.alerts.replay_wait:g}s (alerts.replay_wait); they stay in the outbox"
        )
    after_run(pipeline, result, database, strict)


def after_run(pipeline: Pipeline, result: ReplayResult, database: Database, strict: bool) -> None:
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


def run_with_progress(
    pipeline: Pipeline,
    batches: Iterable[tuple[list[RawRecord], int]],
    total: int | None,
    unit: str,
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


def print_summary(result: ReplayResult) -> None:
    out.print(
        f"Processed {result.events:,} records in {result.seconds:.2f}s "
        f"({result.events_per_second:,.0f} events/s): {result.dead_letters:,} dead letters, "
        f"{result.findings:,} findings, {result.incidents_opened:,} incidents opened."
    )
