"""Accuracy through the whole pipeline: incidents, the performance table, restarts, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from agent.config import Settings
from agent.runtime.pipeline import Pipeline
from agent.runtime.replay import memory_batches, replay_batches
from detectors.accuracy import AccuracyDetector
from detectors.registry import DetectorSettings
from detectors.settings import AccuracySettings
from storage.db import Database
from storage.queries import IncidentFilter, Repository
from tests.accuracy_streams import error_scale
from tests.conftest import run_cli

START = 1_767_225_600.0
N = 7200
CHANGE_AT = 3000
DELAY = 300  # labels come this many events after their prediction


def lines(seed: int = 1, flip_after_change: float = 0.135) -> list[bytes]:
    """A scored binary classifier, accuracy ~0.87; after CHANGE_AT labels flip with the given
    probability (0.135: accuracy falls by 0.135 * (2 * 0.87 - 1) = 10 points)."""
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-4 * rng.normal(0, 1, N)))
    label = rng.random(N) < p
    label[CHANGE_AT:] ^= rng.random(N - CHANGE_AT) < flip_after_change
    out: list[bytes] = []
    for i in range(N + DELAY):
        if i < N:
            out.append(
                orjson.dumps(
                    {
                        "type": "prediction",
                        "model": "m",
                        "model_version": "2" if i >= N // 2 else "1",
                        "id": f"p{i}",
                        "ts": START + i,
                        "features": {"x": float(p[i])},
                        "prediction": int(p[i] > 0.5),
                        "scores": {"0": 1 - float(p[i]), "1": float(p[i])},
                    }
                )
            )
        j = i - DELAY
        if 0 <= j < N:
            out.append(
                orjson.dumps(
                    {
                        "type": "label",
                        "model": "m",
                        "id": f"p{j}",
                        "label": int(label[j]),
                        "ts": START + i,
                    }
                )
            )
    return out


def settings(url: str) -> Settings:
    accuracy = AccuracySettings(reference_size=1000, window_seconds=600)
    return Settings(database_url=url, detectors=DetectorSettings(accuracy=accuracy))


def accuracy_detector(pipeline: Pipeline) -> AccuracyDetector:
    monitor = pipeline.monitors[("t", 0)]["m"]
    return next(d for d in monitor.detectors if isinstance(d, AccuracyDetector))


def test_replay_raises_accuracy_drop_and_stores_the_history(database: Database) -> None:
    data = lines()
    pipeline = Pipeline(settings(database.url), database, consumer="c")
    replay_batches(pipeline, memory_batches(data, "t", 500))
    repository = Repository(database)
    incidents = repository.list_incidents(IncidentFilter(model="m", kind="accuracy_drop"))
    assert [i.subject for i in incidents] == ["accuracy"]
    details = incidents[0].details
    assert details["estimated"] is False and details["metric"] == "accuracy"
    assert details["before"]["value"] - details["after"]["value"] > 0.05
    # Found within 3,000 labelled events after the change (label i comes at START + i + DELAY).
    labelled_after_change = incidents[0].first_seen - (START + DELAY + CHANGE_AT) + 1
    assert 0 < labelled_after_change <= 3000

    history = repository.performance_history("m", metric="accuracy")
    measured = [r for r in history if not r["estimated"]]
    assert {r["model_version"] for r in measured} == {"1", "2"}
    assert len(measured) == N // 600  # twelve 10-minute windows, each of one version
    early, late = measured[0], measured[-1]
    assert early["value"] > late["value"] + 0.03
    assert early["n"] == 600 and early["ci_low"] < early["value"] < early["ci_high"]
    assert early["window_end"] - early["window_start"] == 600
    coverage = repository.performance_history("m", metric="coverage")
    assert all(r["value"] == pytest.approx(1.0) for r in coverage)

    # Processing the same records again (a crash before the commit of the offsets)
    # updates the same rows instead of adding new ones.
    again = Pipeline(settings(database.url), database, consumer="c")
    replay_batches(again, memory_batches(data, "t", 500))
    assert repository.performance_history("m", metric="accuracy") == history


def test_performance_points_are_stored_with_the_model_totals_not_per_batch(
    database: Database,
) -> None:
    """Quiet batches keep their points (the latest per row) until the totals are due or a
    checkpoint; a partition that moved away takes its unsaved points with it."""
    batches = list(memory_batches(lines(seed=3, flip_after_change=0.0), "t", 500))
    repository = Repository(database)
    pipeline = Pipeline(settings(database.url), database, consumer="c")
    pipeline.counts.store_every = 1e9  # never due by time in this test
    for records, _ in batches[:4]:
        pipeline.process(records)
    assert pipeline.points and not repository.performance_history("m")
    pipeline.counts.store_every = 0.0  # due now: the next batch writes what is pending
    pipeline.process(batches[4][0])
    assert not pipeline.points
    stored = repository.performance_history("m", metric="coverage")
    assert stored

    pipeline.counts.store_every = 1e9
    pipeline.process(batches[5][0])
    pipeline.checkpoint({("t", 0): batches[5][0][-1].position.offset + 1})
    assert not pipeline.points
    later = repository.performance_history("m", metric="coverage")
    assert sum(r["n"] for r in later) > sum(r["n"] for r in stored)

    pipeline.process(batches[6][0])
    assert pipeline.points
    pipeline.drop_partition("t", 0)
    assert not pipeline.points


def test_pipeline_checkpoint_keeps_pending_joins_across_a_restart(database: Database) -> None:
    data = lines(seed=2, flip_after_change=0.0)
    batches = list(memory_batches(data, "t", 500))
    straight = Pipeline(settings(database.url), database, consumer="straight")
    replay_batches(straight, batches)

    first = Pipeline(settings(database.url), database, consumer="restart")
    replay_batches(first, batches[:9])  # checkpoints at the end
    pending = len(accuracy_detector(first).join.pending)
    assert pending > 100
    second = Pipeline(settings(database.url), database, consumer="restart")
    assert second.restore_partition("t", 0) == batches[8][0][-1].position.offset + 1
    assert len(accuracy_detector(second).join.pending) == pending
    replay_batches(second, batches[9:])

    done, expected = (
        accuracy_detector(second).join.counters,
        accuracy_detector(straight).join.counters,
    )
    assert done == expected
    assert done.joined == N and done.expired_unlabelled == 0


def test_cli_shows_measured_and_estimated_history(sqlite_url: str) -> None:
    pipeline = Pipeline(settings(sqlite_url), Database(sqlite_url), consumer="c")
    replay_batches(pipeline, memory_batches(lines(), "t", 500))

    result = run_cli("performance", "m", "--db", sqlite_url, "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    kinds = {(r["metric"], r["estimated"]) for r in rows}
    assert {("accuracy", False), ("accuracy", True), ("f1", False), ("log_loss", False)} <= kinds
    assert all(r["model"] == "m" for r in rows)

    table = run_cli("performance", "m", "--db", sqlite_url, "--metric", "accuracy")
    assert table.returncode == 0, table.stderr
    assert "est. accuracy" in table.stdout and "2026-01-01" in table.stdout

    only_v2 = run_cli("performance", "m", "--db", sqlite_url, "--version", "2", "-f", "json")
    assert {r["model_version"] for r in json.loads(only_v2.stdout)} == {"2"}

    none = run_cli("performance", "nope", "--db", sqlite_url)
    assert none.returncode == 0 and "no performance history" in none.stdout
    bad = run_cli("performance", "m", "--db", sqlite_url, "--format", "xml")
    assert bad.returncode == 2 and "--format" in bad.stderr


def test_accuracy_settings_come_from_the_config_file(tmp_path: Path) -> None:
    from agent.config import ConfigError, load_settings

    path = tmp_path / "bulwark.toml"
    path.write_text(
        "[detectors.accuracy]\nmargin = 0.03\nlabel_ttl_seconds = 600\n"
        "[models.fraud.detectors.accuracy]\nreference_size = 2000\n"
    )
    loaded = load_settings(path, environ={})
    fraud = loaded.detectors_for("fraud").accuracy
    assert (fraud.margin, fraud.label_ttl_seconds, fraud.reference_size) == (0.03, 600, 2000)
    assert loaded.detectors_for("other").accuracy.reference_size == 5000

    path.write_text("[detectors.accuracy]\nmax_pending = 0\n")
    with pytest.raises(ConfigError, match=r"detectors\.accuracy\.max_pending"):
        load_settings(path, environ={})


def regression_lines(seed: int = 2, x1_shift: float = 1.0) -> list[bytes]:
    """A regressor that errs more where x1 is high (tests/accuracy_streams.py); after
    CHANGE_AT, x1 moves up by `x1_shift`: its MAE rises, which its inputs show."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(0, 1, N)
    x1[CHANGE_AT:] += x1_shift
    x2 = rng.normal(0, 1, N)
    c = rng.choice(np.array(["a", "b", "c"], dtype=object), N, p=[0.5, 0.3, 0.2])
    predicted = 50 + 10 * x1 + 5 * x2
    y = predicted + rng.normal(0, 1, N) * error_scale(x1, c)
    out: list[bytes] = []
    for i in range(N + DELAY):
        if i < N:
            features = {"x1": float(x1[i]), "x2": float(x2[i]), "c": str(c[i])}
            event = {"type": "prediction", "model": "r", "id": f"r{i}", "ts": START + i}
            out.append(
                orjson.dumps({**event, "features": features, "prediction": float(predicted[i])})
            )
        j = i - DELAY
        if 0 <= j < N:
            label = {"type": "label", "model": "r", "id": f"r{j}", "label": float(y[j])}
            out.append(orjson.dumps({**label, "ts": START + i}))
    return out


def test_a_regressors_estimated_mae_is_stored_next_to_the_measured_one(sqlite_url: str) -> None:
    database = Database(sqlite_url)
    pipeline = Pipeline(settings(sqlite_url), database, consumer="c")
    replay_batches(pipeline, memory_batches(regression_lines(), "t", 500))

    incidents = Repository(database).list_incidents(IncidentFilter(model="r", kind="accuracy_drop"))
    first = {i.subject: i for i in incidents}  # one incident per subject
    assert first["estimated_mae"].details["estimated"] is True
    # Found from the inputs, before the labels of the changed predictions said it.
    assert START + CHANGE_AT <= first["estimated_mae"].first_seen < first["mae"].first_seen

    result = run_cli("performance", "r", "--db", sqlite_url, "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    kinds = {(r["metric"], r["estimated"]) for r in rows}
    assert {("mae", False), ("mae", True), ("rmse", True), ("mae_estimate_error", False)} <= kinds
    table = run_cli("performance", "r", "--db", sqlite_url, "--metric", "mae")
    assert "est. mae" in table.stdout
