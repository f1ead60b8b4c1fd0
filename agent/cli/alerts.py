"""`bulwark alerts list|test|flush` (the outbox) and `bulwark silence add|list|expire`."""

from __future__ import annotations

import getpass
import time
from typing import Annotated

import typer

from agent.alerts.dispatcher import Dispatcher
from agent.alerts.outbox import enqueue_test
from agent.cli.common import (
    ConfigOption,
    DbOption,
    FormatOption,
    LimitOption,
    ModelOption,
    UsageError,
    check_format,
    folded_table,
    open_database,
    out,
    print_json,
    read_database,
    settings_for,
    when,
)
from agent.config import parse_duration
from storage.enums import NotificationState
from storage.notifications import OutboxStore
from storage.unit_of_work import transaction

alerts_app = typer.Typer(help="Notification channels and the outbox.", no_args_is_help=True)
silence_app = typer.Typer(help="Hold back notifications for a while.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(alerts_app, name="alerts")
    root.add_typer(silence_app, name="silence")


@alerts_app.command("list")
def alerts_list(
    db: DbOption = None,
    state: Annotated[
        str | None, typer.Option(help="pending, delivered, failed or silenced.")
    ] = None,
    limit: LimitOption = 50,
    fmt: FormatOption = "table",
) -> None:
    """Show the outbox: notifications with their delivery state, newest first."""
    check_format(fmt)
    if state is not None and state not in tuple(NotificationState):
        raise UsageError(f"--state must be one of {', '.join(NotificationState)}, not {state!r}")
    database = read_database(db, fmt)
    if database is None:
        return
    with database.reading() as session:
        wanted = None if state is None else NotificationState(state)
        items = [n.to_dict() for n in OutboxStore(session).list(limit=limit, state=wanted)]
    if fmt == "json":
        print_json(items)
        return
    table = folded_table(
        f"notifications ({len(items)})",
        (
            "id",
            "created",
            "channel",
            "action",
            "reason",
            "incident",
            "state",
            "tries",
            "error",
        ),
    )
    for n in items:
        table.add_row(
            str(n["id"]),
            when(n["created_at"]),
            n["channel"],
            n["action"],
            n["reason"],
            "" if n["incident_id"] is None else str(n["incident_id"]),
            n["state"],
            str(n["attempts"]),
            n["last_error"] or "",
        )
    out.print(table)


@alerts_app.command("test")
def alerts_test(
    channel: Annotated[str, typer.Argument(help="A channel name from the config or environment.")],
    config: ConfigOption = None,
    db: DbOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the outcome.")] = 30.0,
) -> None:
    """Send a test notification through the outbox and report what the receiver said."""
    settings = settings_for(config, db)
    if channel not in settings.alerts.channels:
        known = ", ".join(sorted(settings.alerts.channels)) or "none configured"
        raise UsageError(f"unknown channel {channel!r} (channels: {known})")
    database = open_database(settings)
    is_pagerduty = settings.alerts.channels[channel].type == "pagerduty"
    with transaction(database) as uow:
        ids = [r.id for r in enqueue_test(uow, channel, resolve=is_pagerduty)]
    dispatcher = Dispatcher(database, settings.alerts)
    try:
        counts = dispatcher.wait_settled(ids[0] - 1, timeout)
    finally:
        dispatcher.close()
    with transaction(database) as uow:
        rows = uow.outbox.get_many(ids)
        outcome = [(r.id, r.state, r.last_error) for r in rows]
    failed = [
        (i, state, error) for i, state, error in outcome if state != NotificationState.DELIVERED
    ]
    if not failed:
        out.print(f"Test notification {ids[0]} delivered to channel {channel}.")
        return
    row_id, state, error = failed[0]
    detail = f": {error}" if error else ""
    if counts.get(NotificationState.PENDING):
        raise UsageError(f"test notification {row_id} still pending after {timeout:g}s{detail}")
    raise UsageError(f"test notification {row_id} to channel {channel} {state}{detail}")


@alerts_app.command("flush")
def alerts_flush(
    config: ConfigOption = None,
    db: DbOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to keep trying.")] = 60.0,
) -> None:
    """Deliver what is pending in the outbox now (e.g. after a crash), then exit."""
    settings = settings_for(config, db)
    database = open_database(settings)
    dispatcher = Dispatcher(database, settings.alerts)
    try:
        counts = dispatcher.wait_settled(0, timeout)
    finally:
        dispatcher.close()
    pending = counts.get(NotificationState.PENDING, 0)
    out.print(f"Outbox: {pending} pending" + (" (still retrying)" if pending else ""))


@silence_app.command("add")
def silence_add(
    reason: Annotated[str, typer.Option(help="Why (shown in silence list).")],
    duration: Annotated[str, typer.Option("--for", help="How long: 30m, 2h, 1d...")],
    model: ModelOption = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    subject: Annotated[str | None, typer.Option(help="Only this subject.")] = None,
    db: DbOption = None,
) -> None:
    """Hold back notifications of matching incidents (at least one of --model/--kind/--subject)."""
    if model is None and kind is None and subject is None:
        raise UsageError("a silence needs at least one of --model, --kind, --subject")
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise UsageError(f"--for: {exc}") from None
    if seconds <= 0:
        raise UsageError("--for must be longer than zero")
    database = open_database(settings_for(None, db))
    now = time.time()
    with transaction(database) as uow:
        silence = uow.outbox.add_silence(
            model=model,
            kind=kind,
            subject=subject,
            reason=reason,
            created_by=_user(),
            starts_at=now,
            ends_at=now + seconds,
        )
        silence_id = silence.id
    out.print(f"Silence {silence_id} active until {when(now + seconds)} UTC.")


@silence_app.command("list")
def silence_list(
    db: DbOption = None,
    all_: Annotated[bool, typer.Option("--all", help="Include expired silences.")] = False,
    fmt: FormatOption = "table",
) -> None:
    """Active silences (all with --all), newest first."""
    check_format(fmt)
    database = read_database(db, fmt)
    if database is None:
        return
    with database.reading() as session:
        items = [s.to_dict() for s in OutboxStore(session).list_silences(time.time(), all_)]
    if fmt == "json":
        print_json(items)
        return
    table = folded_table(
        f"silences ({len(items)})", ("id", "model", "kind", "subject", "until", "by", "reason")
    )
    for s in items:
        table.add_row(
            str(s["id"]),
            s["model"] or "*",
            s["kind"] or "*",
            s["subject"] or "*",
            when(s["ends_at"]),
            s["created_by"] or "",
            s["reason"],
        )
    out.print(table)


@silence_app.command("expire")
def silence_expire(
    silence_id: Annotated[int, typer.Argument(metavar="ID")], db: DbOption = None
) -> None:
    """End a silence now."""
    database = open_database(settings_for(None, db), migrate=False)
    with transaction(database) as uow:
        silence = uow.outbox.expire_silence(silence_id, time.time())
        if silence is None:
            raise UsageError(f"no silence with id {silence_id}")
    out.print(f"Silence {silence_id} expired.")


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
