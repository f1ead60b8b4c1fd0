"""Migrations apply in the order of their numbers, and databases stamped with the revision
numbers used before the renumbering upgrade as if nothing had changed."""

from __future__ import annotations

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from alembic import command
from storage.db import MIGRATIONS_DIR, Database


def _config(database: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = database.engine
    return config


def test_revisions_apply_in_numeric_order() -> None:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    chain = list(reversed(list(script.walk_revisions())))  # base first
    numbers = [int(revision.revision[:4]) for revision in chain]
    assert numbers == list(range(1, len(chain) + 1))
    for revision in chain:
        assert revision.path is not None
        assert revision.path.rsplit("/", 1)[-1].startswith(revision.revision[:5])
        assert len(revision.revision) <= 32  # alembic_version.version_num is VARCHAR(32)


def test_a_database_stamped_with_an_old_number_upgrades(unmigrated_db_url: str) -> None:
    database = Database(unmigrated_db_url)
    config = _config(database)
    command.upgrade(config, "0003_notes_model_stats")
    with database.engine.begin() as connection:
        # What the same schema was stamped with before the renumbering.
        connection.execute(text("UPDATE alembic_version SET version_num = '0007'"))
    assert "notifications" not in inspect(database.engine).get_table_names()

    database.upgrade()

    tables = inspect(database.engine).get_table_names()
    assert {"notifications", "silences", "performance"} <= set(tables)
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    with database.engine.connect() as connection:
        stamped = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert stamped == head
    database.dispose()
