"""The CLI end to end, as a user runs it: replay, incidents, dead letters, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.synthetic import prediction_lines

MALFORMED = [b"{not json", b'{"type": "prediction", "model": "m", "ts": 1, "features": 3}']


@pytest.fixture(scope="module")
def drifted_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30k predictions, a 0.75-std mean shift on one feature at event 20k, two bad lines."""
    lines = prediction_lines(30_000, features=6, seed=21, shift=("x2_uniform", 20_000, 0.75))
    lines[100:100] = MALFORMED
    path = tmp_path_factory.mktemp("replay") / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _incidents(db_url: str, *args: str) -> list[dict]:
    result = run_cli("incidents", "list", "--db", db_url, "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_replay_finds_the_drifted_feature_and_nothing_else(drifted_file: Path, db_url: str) -> None:
    result = run_cli("replay", str(drifted_file), "--db", db_url)
    assert result.returncode == 0, result.stderr
    assert "events/s" in result.stdout and "2 dead letters" in result.stdout

    incidents = _incidents(db_url)
    # A shifted uniform also leaves its reference range (data_quality, and input_anomaly whose
    # subject "*" is the population) and moves the joint distribution (multivariate_drift,
    # subject "*"); no other feature appears.
    assert {i["subject"] for i in incidents} - {"*"} == {"x2_uniform"}
    joint = {"input_anomaly", "multivariate_drift"}
    assert {i["kind"] for i in incidents if i["subject"] == "*"} <= joint
    (incident,) = [i for i in incidents if i["kind"] == "feature_drift"]
    assert set(incident) >= {
        "id",
        "model",
        "kind",
        "subject",
        "severity",
        "status",
        "title",
        "first_seen",
        "last_seen",
        "count",
        "details",
    }
    start = 1_767_225_600.0
    assert start + 20_000 <= incident["first_seen"] <= start + 21_000  # event time, not wall

    shown = run_cli("incidents", "show", str(incident["id"]), "--db", db_url, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["id"] == incident["id"] and len(detail["evidence"]) == incident["count"]
    assert detail["evidence"][0]["position"]["offset"] >= 20_000

    letters = json.loads(run_cli("dead-letters", "list", "--db", db_url, "--format", "json").stdout)
    assert [d["offset"] for d in letters] == [101, 100]
    assert letters[1]["payload"] == "{not json" and "not valid JSON" in letters[1]["reason"]

    # The same replay again changes nothing: same incidents, same counts, no new dead letters.
    assert run_cli("replay", str(drifted_file), "--db", db_url).returncode == 0
    assert _incidents(db_url) == incidents
    assert (
        len(json.loads(run_cli("dead-letters", "list", "--db", db_url, "--format", "json").stdout))
        == 2
    )


def test_replay_reads_standard_input_and_filters_work(tmp_path: Path, sqlite_url: str) -> None:
    lines = prediction_lines(12_000, model="a", seed=5, shift=("x0_normal", 6_000, 1.5))
    result = run_cli("replay", "-", "--db", sqlite_url, input=b"\n".join(lines))
    assert result.returncode == 0, result.stderr
    found = _incidents(sqlite_url, "--model", "a")
    assert {i["subject"] for i in found} - {"*"} == {"x0_normal"}
    joint = {"input_anomaly", "multivariate_drift"}
    assert {i["kind"] for i in found if i["subject"] == "*"} <= joint
    assert _incidents(sqlite_url, "--model", "other") == []
    assert _incidents(sqlite_url, "--kind", "accuracy_drop") == []
    assert _incidents(sqlite_url, "--status", "open", "--since", "1767225600")
    assert _incidents(sqlite_url, "--since", "2099-01-01T00:00:00Z") == []


def test_a_long_stationary_replay_raises_nothing(tmp_path: Path, sqlite_url: str) -> None:
    path = tmp_path / "calm.jsonl"
    path.write_bytes(b"\n".join(prediction_lines(100_000, features=5, seed=8)))
    result = run_cli("replay", str(path), "--db", sqlite_url)
    assert result.returncode == 0, result.stderr
    assert "Processed 100,000 records" in result.stdout and "events/s" in result.stdout
    assert _incidents(sqlite_url) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "/no/such/file.jsonl"], "error: no such file: /no/such/file.jsonl"),
        (["replay", "-", "--db", "nonsense://x"], "error: cannot use database nonsense://x"),
        (["incidents", "list", "--format", "xml"], "error: --format must be 'table' or 'json'"),
        (["incidents", "list", "--since", "last tuesday"], "error: --since must be"),
        (["incidents", "show", "424242"], "error: no incident with id 424242"),
        (
            ["incidents", "list", "--db", "postgresql+psycopg://u:pw@127.0.0.1:9/x"],
            "unreachable after",
        ),
    ],
)
def test_bad_input_fails_in_one_line_without_traceback(
    args: list[str], message: str, sqlite_url: str
) -> None:
    if "--db" not in args:
        args = [*args, "--db", sqlite_url]
    result = run_cli(*args, input=b"")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "pw@" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 or "unreachable after" in message


def test_bad_config_names_the_key(tmp_path: Path, sqlite_url: str) -> None:
    config = tmp_path / "bulwark.toml"
    config.write_text("[detectors.numeric_drift]\nblock_size = 'big'\n")
    result = run_cli("replay", "-", "--config", str(config), "--db", sqlite_url, input=b"")
    assert result.returncode != 0
    assert "invalid config key 'detectors.numeric_drift.block_size'" in result.stderr
    config.write_text("[detectors]\nnumeric_drft = {}\n")
    result = run_cli("replay", "-", "--config", str(config), "--db", sqlite_url, input=b"")
    assert "invalid config key 'detectors.numeric_drft'" in result.stderr


def test_demo_runs_offline_and_finds_its_injected_drifts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    result = run_cli("demo", "--db", url, "--events", "12000")
    assert result.returncode == 0, result.stderr
    assert "Database: " in result.stdout
    incidents = _incidents(url)
    drifted = {(i["model"], i["subject"]) for i in incidents if i["kind"] == "feature_drift"}
    assert drifted == {("fraud", "amount"), ("price", "distance_km")}
    # fraud's scores depend on amount, so its prediction drift is real; churn is stationary.
    assert {i["model"] for i in incidents} == {"fraud", "price"}
