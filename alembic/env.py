"""Alembic environment: runs migrations on the engine `bulwark db upgrade` hands over, or on
`-x url=...` / BULWARK_DB_URL when alembic is run by hand."""

from __future__ import annotations

from sqlalchemy import Connection

from alembic import context
from storage.db import Database
from storage.models import Base


def run(connection: Connection) -> None:
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
