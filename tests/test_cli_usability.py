"""The CLI as a new user meets it: event-time filters, rejected kinds and statuses, warnings
after a replay of the wrong file, the accuracy test waiting for labels, no database yet, and
`--version`."""

from __future__ import annotations

import importlib.metadata
import json
import math
from pathlib import Path

import orjson
import pytest

from detectors.base import Kind
from tests.conftest import run_cli
from tests.synthetic import START, prediction_lines

DAY = 86_400.0


def _labels(n: int, model: str = "m", every: int = 1) -> list[bytes]:
    """Labels (all 0, as the predictions) for every `every`-th prediction, an hour later."""
    return [
        orjson.dumps(
            {
                "type": "label",
                "model": model,
                "id": f"{model}-{i}",
                "label": 0,
                "ts": START + i + 60,
            }
        )
        for i in range(0, n, every)
    ]


def _json(*args: str) -> object:
    result = run_cli(*args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A drifted stream of January 2026 (long before the wall clock of any test run) with
    labels for every prediction, replayed once."""
    folder = tmp_path_factory.mktemp("usability")
    lines = prediction_lines(12_000, features=4, seed=3, shift=("x0_normal", 6_000, 1.5))
    path = folder / "events.jsonl"
    path.write_bytes(b"\n".join(lines + _labels(12_000)) + b"\n")
    url = f"sqlite:///{folder / 'bulwark.db'}"
    result = run_cli("replay", str(path), "--db", url)
    assert result.returncode == 0, result.stderr
    assert "waits for labels" not in result.stderr  # 12,000 labels: the test runs
    return url


def test_since_and_until_count_in_event_time(replayed: str) -> None:
    everything = _json("incidents", "list", "--db", replayed)
    assert everything, "the drift opened incidents"
    latest = max(i["last_seen"] for i in everything)
    assert latest < START + 2 * DAY  # the stream is of January 2026 ...
    # ... yet "the last 7 days" counts back from its latest event, not from the wall clock.
    assert _json("incidents", "list", "--db", replayed, "--since", "7d") == everything
    latest_event = START + 11_999 + 60  # the last label
    age = math.ceil(latest_event - latest)  # just reaches the newest incident
    newest = [i for i in everything if i["last_seen"] >= latest_event - age]
    assert newest and _json("incidents", "list", "--db", replayed, "--since", f"{age}s") == newest
    assert _json("incidents", "list", "--db", replayed, "--since", f"{age - 1}s") == []
    first = min(i["first_seen"] for i in everything)
    assert _json("incidents", "list", "--db", replayed, "--until", str(first - 1)) == []
    assert _json("incidents", "list", "--db", replayed, "--until", "1s") == everything
    assert "event time" in run_cli("incidents", "list", "--help").stdout

    history = _json("performance", "m", "--db", replayed, "--since", "7d")
    assert history and {r["metric"] for r in history} >= {"accuracy"}
    recent = _json("performance", "m", "--db", replayed, "--since", "1h")
    assert recent and len(recent) < len(history)
    end = max(r["window_end"] for r in history)
    assert all(r["window_end"] >= end - 3600 - 60 for r in recent)  # latest event ~ end


@pytest.mark.parametrize(
    ("option", "value", "valid"),
    [
        ("--kind", "feature_drfit", [k.value for k in Kind]),
        ("--status", "closed", ["open", "acknowledged", "resolved"]),
    ],
)
def test_unknown_kind_or_status_is_rejected_with_the_valid_ones(
    replayed: str, option: str, value: str, valid: list[str]
) -> None:
    result = run_cli("incidents", "list", "--db", replayed, option, value)
    assert result.returncode == 2
    assert f"error: unknown {option} '{value}'; valid: {', '.join(valid)}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_file_of_mostly_dead_letters_warns_and_fails_with_strict(
    tmp_path: Path, sqlite_url: str
) -> None:
    csv = tmp_path / "train.csv"
    csv.write_text("amount,age,country\n" + "".join(f"{i}.5,{i % 90},DE\n" for i in range(300)))
    result = run_cli("replay", str(csv), "--db", sqlite_url)
    assert result.returncode == 0, result.stderr
    assert "warning: 301 of 301 records (100%) became dead letters; e.g. " in result.stderr
    assert "not valid JSON" in result.stderr and "bulwark dead-letters list" in result.stderr
    strict = run_cli("replay", str(csv), "--db", sqlite_url, "--strict")
    assert strict.returncode == 1 and "became dead letters" in strict.stderr

    # A few bad lines among good ones: no warning, and --strict passes.
    good = tmp_path / "events.jsonl"
    good.write_bytes(b"\n".join([b"{not json", *prediction_lines(500, seed=1)]) + b"\n")
    ok = run_cli("replay", str(good), "--db", sqlite_url, "--strict")
    assert ok.returncode == 0, ok.stderr
    assert "became dead letters" not in ok.stderr and "1 dead letters" in ok.stdout


def test_replay_says_how_many_labels_accuracy_monitoring_still_needs(
    tmp_path: Path, sqlite_url: str
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(prediction_lines(3_000, seed=2) + _labels(3_000, every=3)))
    result = run_cli("replay", str(path), "--db", sqlite_url)
    assert result.returncode == 0, result.stderr
    assert (
        "note: accuracy monitoring of model 'm' waits for labels: 1,000 labelled predictions "
        "of the 5,000 it needs (detectors.accuracy.reference_size)"
    ) in " ".join(result.stderr.split())


def test_reads_before_any_run_say_there_is_nothing_yet(tmp_path: Path) -> None:
    home = tmp_path / "data"
    env = {"XDG_DATA_HOME": str(home), "BULWARK_DB_URL": ""}
    default = home / "bulwark" / "bulwark.db"
    result = run_cli("incidents", "list", env=env)
    assert result.returncode == 0, result.stderr
    assert f"Nothing recorded yet: no database at {default}" in " ".join(result.stderr.split())
    assert "bulwark demo" in result.stderr and "db upgrade" not in result.stderr
    assert not default.exists()  # and no empty file was made
    listed = run_cli("incidents", "list", "--format", "json", env=env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    assert json.loads(run_cli("dead-letters", "list", "-f", "json", env=env).stdout) == []
    assert run_cli("performance", "m", env=env).returncode == 0
    for command in (
        ("alerts", "list"),
        ("silence", "list"),
        ("reference", "list"),
        ("reports", "list"),
    ):
        read = run_cli(*command, "--format", "json", env=env)
        assert (read.returncode, json.loads(read.stdout)) == (0, []), (command, read.stderr)
        assert "Nothing recorded yet" in read.stderr, command
    shown = run_cli("incidents", "show", "3", env=env)
    assert shown.returncode == 2 and "no incident with id 3: no database at" in shown.stderr
    assert not default.exists()

    # After the demo, the bare command points at the demo's database.
    (home / "bulwark").mkdir(parents=True)
    (home / "bulwark" / "demo.db").write_bytes(b"")
    hinted = run_cli("incidents", "list", env=env)
    demo = home / "bulwark" / "demo.db"
    assert f"the demo's database is sqlite:///{demo}" in " ".join(hinted.stderr.split())


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"bulwark {importlib.metadata.version('bulwark')}"
