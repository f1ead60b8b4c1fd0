"""The wheel carries every module, the web page and the migrations: a non-editable install
(`pip install .`) runs every command, not only a checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "streams", "detectors", "storage")


def _source_files() -> set[str]:
    """What the wheel must hold, by its path inside the wheel."""
    wanted = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                wanted.add(path.relative_to(ROOT).as_posix())
    for path in (ROOT / "alembic").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            wanted.add("storage/migrations/" + path.relative_to(ROOT / "alembic").as_posix())
    return wanted


def test_wheel_holds_every_module_asset_and_migration(tmp_path: Path) -> None:
    # Built from a copy: setuptools reuses a build/ folder, which may hold an older build's files.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "bench"),
    )
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("bulwark-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if ".dist-info/" not in name}
    wanted = _source_files()
    assert "agent/web/index.html" in wanted
    assert any(name.startswith("storage/migrations/versions/0001") for name in wanted)
    assert wanted - shipped == set(), "missing from the wheel: add the package to pyproject.toml"
