"""Alembic environment: runs migrations on the engine `bulwark db upgrade` hands over, or on
`-x url=...` / BULWARK_DB_URL when alembic is run by hand."""

from __future__ import annotations

from sqlalchemy import Connection, inspect, text

from alembic import context
from storage.db import Database
from storage.models import Base

# Until 2026-12 the revisions were bare numbers applied out of numeric order (0001, 0003, 0007,
# 0006, 0004, 0008). They were renumbered in their order of application; a database stamped
# with an old number is restamped with the same revision's new id before anything runs. New ids
# are never bare numbers, so the two cannot be confused.
RENUMBERED = {
    "0001": "0001_initial_schema",
    "0003": "0002_reference_data",
    "0007": "0003_notes_model_stats",
    "0006": "0004_alert_outbox",
    "0004": "0005_performance",
    "0008": "0006_reference_learned_until",
}


def restamp_renumbered(connection: Connection) -> None:
    if "alembic_version" not in inspect(connection).get_table_names():
        return
    for old, new in RENUMBERED.items():
        connection.execute(
            text("UPDATE alembic_version SET version_num = :new WHERE version_num = :old"),
            {"new": new, "old": old},
        )


def run(connection: Connection) -> None:
    restamp_renumbered(connection)
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


engine = context.config.attributes.get("engine")
if engine is None:
    import os

    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("BULWARK_DB_URL")
    engine = Database(url).engine
with engine.begin() as conn:
    run(conn)
