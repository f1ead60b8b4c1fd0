"""Paths given on the command line: a mistyped one fails in one line naming what is wrong,
and creates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.db import Database, DatabaseError
from tests.conftest import run_cli


def test_a_sqlite_url_in_a_missing_directory_fails_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    result = run_cli("replay", "-", "--db", f"sqlite:///{missing / 'x.db'}", input=b"")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: cannot use SQLite database {missing / 'x.db'}: directory {missing} does not exist"
    )
    assert not (tmp_path / "nonexistent").exists()  # nothing created on the way


def test_the_default_data_directory_is_still_created(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    Database(None).dispose()
    assert (tmp_path / "data" / "bulwark").is_dir()
    with pytest.raises(DatabaseError, match="does not exist"):
        Database(f"sqlite:///{tmp_path / 'elsewhere' / 'x.db'}")


def test_a_directory_given_to_replay_is_reported_as_a_directory(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'bulwark.db'}"
    result = run_cli("replay", str(tmp_path), "--db", db)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path} is a directory, not a file"
    produce = run_cli("kafka", "produce", str(tmp_path), "--topic", "t", "--bootstrap", "x:1")
    assert produce.stderr.strip() == f"error: {tmp_path} is a directory, not a file"
