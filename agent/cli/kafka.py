"""`bulwark run` (the Kafka daemon) and `bulwark kafka produce` (push a recorded stream)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from kafka.errors import KafkaError

from agent.cli.common import (
    ConfigOption,
    DbOption,
    UsageError,
    err,
    out,
    require_token,
    settings_for,
    state,
)
from agent.config import ConfigError, Settings
from agent.runtime.background import Background
from agent.runtime.daemon import Daemon, check_settings
from storage.db import Database, DatabaseUnavailable
from streams.files import require_file
from streams.kafka import KEY_FIELDS, ProduceError, make_producer, produce_lines

log = logging.getLogger("agent.runtime.daemon")
DAEMON_DB_ATTEMPTS = 2

kafka_app = typer.Typer(help="Kafka tools.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.add_typer(kafka_app, name="kafka")


def run(
    config: ConfigOption = None,
    db: DbOption = None,
    api: Annotated[
        bool, typer.Option("--api", help="Also serve the HTTP API ([api] host/port, tokens).")
    ] = False,
) -> None:
    """The daemon: consume Kafka until SIGTERM/SIGINT, then checkpoint, commit and exit.

    Kafka settings come from the [kafka] section of the config file and the BULWARK_KAFKA_*
    environment variables. Run several processes with the same group to scale out. Beside the
    consumer it runs the scheduled jobs (reports, auto-resolve, retention) and delivers alerts.
    """
    settings = settings_for(config, db)
    check_settings(settings)  # before touching the database
    if api:
        require_token(settings)
    logging.getLogger("agent").setLevel(logging.DEBUG if state["debug"] else logging.INFO)
    if not state["debug"]:
        # kafka-python logs every failed connection attempt; the daemon reports outages itself.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    database = _database_when_up(settings)
    daemon = Daemon(settings, database)
    background = Background(settings, database).start()
    server = None
    if api:
        from agent.api import ApiServer, create_app  # the web framework: only when serving

        app = create_app(settings, database, readiness={"kafka": daemon.check_ready})
        server = ApiServer(app, settings.api.host, settings.api.port)
        server.start()
        log.info("HTTP API on http://%s:%d/", settings.api.host, server.port)
    try:
        daemon.run()
    finally:
        if server is not None:
            server.stop()
        background.stop()


def _database_when_up(settings: Settings) -> Database:
    """The migrated database, waiting with capped backoff while it is unreachable (a daemon
    started during an outage waits for its end; SIGTERM stops it). Permanent errors raise."""
    # Two tries (0.5 s apart) before a database call gives up and the daemon pauses: the
    # main thread must keep polling, or a broker before 0.10.1 drops it from its group
    # after session_timeout_ms.
    database = Database(settings.database_url, attempts=DAEMON_DB_ATTEMPTS)
    attempt = 0
    while True:
        try:
            database.upgrade()
            return database
        except DatabaseUnavailable as exc:
            attempt += 1
            if attempt == 1:
                log.warning("%s; waiting for it before consuming", exc)
            time.sleep(min(2.0**attempt, settings.daemon.retry_max_delay))


@kafka_app.command("produce")
def produce(
    file: Annotated[Path, typer.Argument(help="JSONL file of events, one message per line.")],
    topic: Annotated[str, typer.Option("--topic", "-t", help="Topic to produce to.")],
    bootstrap: Annotated[
        str | None,
        typer.Option(help="host:port list (default: config / BULWARK_KAFKA_BOOTSTRAP)."),
    ] = None,
    api_version: Annotated[
        str | None, typer.Option(help="Broker API version, e.g. 0.9 (default: probe).")
    ] = None,
    key_field: Annotated[
        str, typer.Option(help="Message key: the event's 'model' or 'id' field, or 'none'.")
    ] = "model",
    config: ConfigOption = None,
) -> None:
    """Push a JSONL file into a topic, one message per non-empty line, in order.

    Keying by model keeps each model's events in one partition, in order, so the daemon sees
    them as a replay would; label topics must be keyed the same way (see docs/kafka.md).
    Lines that are not JSON are sent as they are (unkeyed), to exercise dead letters.
    """
    if key_field not in KEY_FIELDS:
        raise UsageError(f"--key-field must be 'model', 'id' or 'none', not {key_field!r}")
    require_file(file)
    settings = settings_for(config, None)
    updates: dict[str, object] = {}
    if bootstrap:
        updates["bootstrap_servers"] = [s.strip() for s in bootstrap.split(",") if s.strip()]
    if api_version is not None:
        updates["api_version"] = api_version
    try:
        kafka = settings.kafka.model_validate({**settings.kafka.model_dump(), **updates})
    except ValueError as exc:
        raise ConfigError(f"invalid --bootstrap/--api-version: {exc}") from None
    started = time.perf_counter()
    try:
        producer = make_producer(kafka)
    except KafkaError as exc:
        raise UsageError(
            f"Kafka at {', '.join(kafka.bootstrap_servers)} unreachable: {exc}"
        ) from None
    try:
        with open(file, "rb") as handle:
            sent = produce_lines(producer, topic, handle, key_field)
    except ProduceError as exc:
        raise UsageError(f"{file}: {exc}") from None
    finally:
        producer.close()
    seconds = time.perf_counter() - started
    out.print(f"Produced {sent:,} messages to {topic} in {seconds:.2f}s.")
    err.print(f"Consume them with: bulwark run (topics: {topic})", highlight=False)
