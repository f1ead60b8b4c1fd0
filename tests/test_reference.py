"""Reference data: loading files, versioning, learning once, handing it to detectors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import update
from typer.testing import CliRunner

from agent.cli import app
from agent.reference import ReferenceFileError, load_reference_file
from agent.runtime.pipeline import Pipeline
from agent.samples import RecentWindow, ReferenceCollector, Sample
from detectors import state_codec
from detectors.clients.coverage import CELLS_START, INPUT_CELLS
from detectors.input_anomaly import InputProfile
from detectors.registry import build_detectors
from storage.db import Database
from storage.models import Base, Checkpoint
from storage.queries import IncidentFilter, Repository
from storage.unit_of_work import ReferenceInput
from streams.batch import split_batch
from streams.decode import decode_batch
from streams.events import Position, RawRecord
from tests.conftest import run_cli
from tests.refdata import START, events, replay, settings_for


def _set(url: str, model: str, path: Path, *extra: str) -> None:
    """`bulwark reference set`, in-process (the CLI's imports cost seconds per subprocess)."""
    result = CliRunner().invoke(app, ["reference", "set", model, str(path), "--db", url, *extra])
    assert result.exit_code == 0, result.output
    assert "stored for model" in result.output


def test_schema_matches_models(database: Database) -> None:
    with database.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_reference_set_from_jsonl_csv_and_parquet(db_url: str, tmp_path: Path) -> None:
    jsonl = tmp_path / "ref.jsonl"
    lines = events(300, seed=1, version="3.1") + events(50, seed=2, model="other")
    lines.append(b'{"type": "label", "model": "fraud", "id": "x", "label": 1, "ts": 1}')
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    frame = pd.DataFrame(
        {
            "amount": [1.5, 2.5, None, 4.0],
            "code": ["1", "2", "1", None],  # strings that look like numbers stay strings
            "flag": [True, False, True, True],
            "prediction": [0, 1, 0, 1],
            "scores.1": [0.1, 0.9, 0.2, 0.8],
            "label": [0, 1, 1, 1],  # ignored: not an input of the model
        }
    )
    csv, parquet = tmp_path / "train.csv", tmp_path / "train.parquet"
    frame.to_csv(csv, index=False)
    frame.to_parquet(parquet)

    _set(db_url, "fraud", jsonl)
    _set(db_url, "churn", csv)
    _set(db_url, "price", parquet, "--model-version", "7")

    repository = Repository(Database(db_url))
    fraud = repository.find_reference("fraud")
    assert fraud is not None and fraud.rows == 300 and fraud.model_version == "3.1"
    assert fraud.origin == f"file:{jsonl.resolve()}"
    assert set(fraud.summary["features"]) == {"amount", "age", "country"}
    assert fraud.summary["features"]["amount"]["numeric"]["mean"] == pytest.approx(10, abs=0.5)

    # CSV has no types: pandas infers them (codes that look like numbers become numbers);
    # Parquet keeps the strings.
    for model, path, code in (("churn", csv, 1.0), ("price", parquet, "1")):
        row = repository.find_reference(model)
        assert row is not None and row.rows == 4 and row.source_rows == 4
        sample = Sample.decode(row.sample)
        assert set(sample.feature_names()) == {"amount", "code", "flag"}
        assert sample.features[2] == {"amount": None, "code": code, "flag": True}
        assert sample.features[3]["code"] is None
        assert sample.predictions == [0, 1, 0, 1]
        assert sample.scores[1] == {"1": 0.9}
        batch = sample.to_batch(model)
        assert "flag" in batch.categorical
        assert ("code" in batch.categorical) == isinstance(code, str)
        assert np.isnan(batch.numeric["amount"][2]), path
    assert repository.find_reference("price").model_version == "7"
    assert repository.find_reference("churn").model_version == ""


def test_large_files_are_sampled_uniformly_and_reproducibly(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    pd.DataFrame({"i": np.arange(20_000), "x": np.arange(20_000) % 7}).to_csv(path, index=False)
    first = load_reference_file(path, "m", max_rows=1000)
    again = load_reference_file(path, "m", max_rows=1000)
    kept = [row["i"] for row in first.sample.features]
    assert len(kept) == 1000 and first.source_rows == 20_000
    assert kept == sorted(kept) == [row["i"] for row in again.sample.features]
    assert 8_000 < np.mean(kept) < 12_000  # spread over the file, not its head

    jsonl = tmp_path / "big.jsonl"
    jsonl.write_bytes(b"\n".join(events(3000, seed=3)))
    loaded = load_reference_file(jsonl, "fraud", max_rows=500)
    ts = loaded.sample.ts
    assert len(ts) == 500 and loaded.source_rows == 3000 and ts == sorted(ts)
    assert ts[-1] - ts[0] > 2000  # a reservoir over the whole file


def test_references_are_versioned_per_model_version(database: Database) -> None:
    repository = Repository(database)

    def add(version: str, value: float) -> int:
        sample = Sample(ts=[0.0], features=[{"x": value}], predictions=[None], scores=[None])
        sample.score, sample.model_versions = [None], [version or None]
        row = repository.add_reference(
            ReferenceInput("m", version, "test", 1, 1, sample.summary(), sample.encode())
        )
        return row.id

    v1 = add("1", 1.0)
    v2_old = add("2", 2.0)
    v2 = add("2", 2.5)
    any_version = add("", 9.0)
    assert repository.find_reference("m", "1").id == v1
    assert repository.find_reference("m", "2").id == v2 != v2_old
    assert repository.find_reference("m", "3").id == any_version  # unknown: newest
    assert repository.find_reference("m").id == any_version
    assert repository.find_reference("other") is None
    assert [r.id for r in repository.list_references("m")] == [any_version, v2, v2_old, v1]


GOOD_LINE = b'{"type": "prediction", "model": "m", "ts": 1, "features": {}}\n'


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.jsonl", None, "no such file"),
        ("bad.jsonl", GOOD_LINE + b"{oops\n", "line 2: not valid JSON"),
        ("other.jsonl", GOOD_LINE.replace(b'"m"', b'"x"'), "no prediction events of model 'm'"),
        ("data.txt", b"a,b\n1,2\n", "unknown reference file type"),
        ("empty.csv", b"", "cannot read as CSV"),
        ("bad.parquet", b"not parquet at all", "cannot read as Parquet"),
        ("inf.csv", b"x\n1\ninf\n", "infinite"),
        ("labels.csv", b"label,id\n1,2\n", "no feature columns"),
    ],
)
def test_bad_reference_files_fail_with_one_line(
    sqlite_url: str, tmp_path: Path, name: str, content: bytes | None, expected: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ReferenceFileError, match=expected):
        load_reference_file(path, "m", max_rows=100)
    if name == "bad.jsonl":  # and through the CLI, as a user sees it
        result = run_cli("reference", "set", "m", str(path), "--db", sqlite_url)
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert Repository(Database(sqlite_url)).list_references() == []


def test_stored_reference_catches_a_stream_drifted_from_its_first_event(
    database: Database, tmp_path: Path
) -> None:
    reference = tmp_path / "ref.jsonl"
    reference.write_bytes(b"\n".join(events(3000, seed=11)))
    _set(database.url, "fraud", reference)
    settings = settings_for(database.url)
    drifted = events(1500, seed=12, shift=1.0, start=START + 10**6)
    replay(settings, database, drifted, consumer="a", name="live")

    incidents = Repository(database).list_incidents(IncidentFilter(kind="feature_drift"))
    assert [(i.model, i.subject) for i in incidents] == [("fraud", "amount")]
    # Detected within the first few blocks of the stream, long before a learned reference
    # (2000 events) would even exist.
    assert incidents[0].first_seen - (START + 10**6) < 500
    # The stored reference is the one in force: nothing was learned.
    assert [r.origin for r in Repository(database).list_references()] == [
        f"file:{reference.resolve()}"
    ]

    # Without a stored reference the same stream is its own reference: no alarm.
    other = settings_for(database.url)
    lines = [line.replace(b'"fraud"', b'"fresh"') for line in drifted]
    replay(other, database, lines, consumer="b", name="live2")
    assert Repository(database).list_incidents(IncidentFilter(model="fresh")) == []


def test_a_stored_reference_reaches_the_input_anomaly_detector(
    database: Database, tmp_path: Path
) -> None:
    """Inputs out of the stored reference's ranges from the first event on: judged against
    the stored reference at once (it once learned its own from the stream, and saw nothing)."""
    reference = tmp_path / "ref.jsonl"
    reference.write_bytes(b"\n".join(events(3000, seed=11)))
    _set(database.url, "fraud", reference)
    drifted = events(1500, seed=12, shift=2.0, start=START + 10**6)
    replay(settings_for(database.url), database, drifted, consumer="a", name="live")
    incidents = Repository(database).list_incidents(IncidentFilter(kind="input_anomaly"))
    assert [(i.model, i.subject) for i in incidents] == [("fraud", "*")]
    assert incidents[0].first_seen - (START + 10**6) < 1000

    # Without it, the stream is its own reference (not even learned yet): nothing.
    lines = [line.replace(b'"fraud"', b'"fresh"') for line in drifted]
    replay(settings_for(database.url), database, lines, consumer="b", name="live2")
    assert Repository(database).list_incidents(IncidentFilter(model="fresh")) == []


def test_only_a_stored_reference_anchors_the_client_detectors_population_mix(
    database: Database, tmp_path: Path
) -> None:
    """A reference stored from a file is rows drawn apart from the keys: the client
    detector shrinks the population's region mix towards its counts. One learned from the
    stream's first events is those keys' own queries, and anchors nothing."""
    reference = tmp_path / "ref.jsonl"
    reference.write_bytes(b"\n".join(events(3000, seed=11)))
    _set(database.url, "fraud", reference)
    stored = replay(settings_for(database.url), database, events(500, seed=12), "a", "live")
    learned = replay(
        settings_for(database.url, learn_events=2000),
        database,
        [line.replace(b'"fraud"', b'"fresh"') for line in events(2600, seed=13)],
        "b",
        "live2",
    )
    (watcher,) = next(iter(stored.monitors.values()))["fraud"].watching_clients
    assert watcher.regions is not None and watcher.regions.reference is not None
    cells = watcher.regions.reference[CELLS_START : CELLS_START + INPUT_CELLS]
    assert cells.sum() == 3000  # every row of the file in its input cell
    (watcher,) = next(iter(learned.monitors.values()))["fresh"].watching_clients
    assert watcher.regions is not None and watcher.regions.reference is None


def test_learned_reference_is_persisted_once_and_reused_after_restart(
    database: Database,
) -> None:
    settings = settings_for(database.url, learn_events=2000)
    first = replay(settings, database, events(2600, seed=21, version="5"), "p1", "day1")
    references = Repository(database).list_references()
    assert [(r.model, r.model_version, r.origin, r.rows) for r in references] == [
        ("fraud", "5", "learned", 2000)
    ]
    learned = Sample.decode(Repository(database).find_reference("fraud").sample)
    assert learned.ts[0] == START and learned.ts[-1] == START + 1999  # the first 2000 events
    assert first.references["fraud"].id == references[0].id

    # A new process (another consumer, no checkpoint) reuses it: a drift from its very first
    # event is caught, and no second reference is learned.
    drifted = events(1500, seed=22, shift=1.0, start=START + 10**6, version="5")
    replay(settings, database, drifted, "p2", "day2")
    assert len(Repository(database).list_references()) == 1
    incidents = Repository(database).list_incidents(IncidentFilter(kind="feature_drift"))
    assert [i.subject for i in incidents] == ["amount"]
    assert incidents[0].first_seen - (START + 10**6) < 500


def test_restart_while_the_reference_is_being_learned_resumes_the_learning(
    tmp_path: Path,
) -> None:
    """A checkpoint taken half-way through learning the reference carries the collection: the
    process that resumes learns the same reference and finds exactly the same incidents as a
    process that never stopped."""
    lines = events(2000, seed=41) + events(2000, seed=42, shift=1.5, start=START + 2000)

    def outcome(url: str) -> tuple[list[tuple], list[int]]:
        database = Database(url)
        repository = Repository(database)
        (reference,) = repository.list_references()
        incidents = sorted(
            (i.kind, i.subject, i.first_seen, i.last_seen, i.count)
            for i in repository.list_incidents(IncidentFilter(model="fraud"))
        )
        learned = Sample.decode(repository.find_reference("fraud").sample)
        assert reference.rows == 2000
        database.dispose()
        return incidents, [int(learned.ts[0]), int(learned.ts[-1])]

    whole = f"sqlite:///{tmp_path / 'whole.db'}"
    Database(whole).upgrade()
    settings = settings_for(whole, learn_events=2000)
    replay(settings, Database(whole), lines, consumer="c", name="src")

    resumed = f"sqlite:///{tmp_path / 'resumed.db'}"
    database = Database(resumed)
    database.upgrade()
    settings = settings_for(resumed, learn_events=2000)
    replay(settings, database, lines[:1000], consumer="c", name="src")  # checkpoints at 1000
    assert Repository(database).list_references() == []  # still learning
    pipeline = Pipeline(settings, database, consumer="c")
    assert pipeline.restore_partition("src", 0) == 1000
    for start in range(1000, len(lines), settings.batch_size):
        chunk = lines[start : start + settings.batch_size]
        pipeline.process(
            [RawRecord(line, Position("src", 0, start + i)) for i, line in enumerate(chunk)]
        )

    expected = outcome(whole)
    assert expected[0], "the shift should open incidents"
    assert expected[1] == [int(START), int(START) + 1999]
    assert outcome(resumed) == expected


def _records(lines: list[bytes], start: int, stop: int) -> list[RawRecord]:
    return [RawRecord(lines[i], Position("src", 0, i)) for i in range(start, stop)]


def _fraud_outcome(url: str, pipeline: Pipeline) -> tuple[list[tuple], int]:
    """The fraud model's incidents, and how many events its `amount` drift monitor judged."""
    database = Database(url)
    incidents = sorted(
        (i.kind, i.subject, i.first_seen, i.last_seen, i.count)
        for i in Repository(database).list_incidents(IncidentFilter(model="fraud"))
    )
    database.dispose()
    drift = pipeline.monitors[("src", 0)]["fraud"].detectors[0]
    return incidents, drift.monitors["amount"].seen


def _replayed_whole(tmp_path: Path, lines: list[bytes]) -> tuple[list[tuple], int]:
    whole = f"sqlite:///{tmp_path / 'whole.db'}"
    Database(whole).upgrade()
    pipeline = replay(settings_for(whole), Database(whole), lines, consumer="c", name="src")
    return _fraud_outcome(whole, pipeline)


@pytest.mark.parametrize("checkpoint_at", [None, 1000])
def test_partition_read_again_after_its_process_learned_the_reference_skips_what_it_took(
    tmp_path: Path, checkpoint_at: int | None
) -> None:
    """A process learns the reference (events 0-1999) and dies before checkpointing the
    partition after that (never, or half-way through learning). Its successor reads the
    partition again from the last checkpoint and finds the learned reference stored: it must
    skip the events the reference took, as the learning process did, so that the detectors
    see the same events in the same blocks and find exactly the same incidents."""
    lines = events(2000, seed=43) + events(3000, seed=44, shift=0.6, start=START + 2000)
    expected = _replayed_whole(tmp_path, lines)
    assert expected[0], "the shift should open incidents"
    assert expected[1] == 3000  # judged: everything after the reference

    url = f"sqlite:///{tmp_path / 'killed.db'}"
    database = Database(url)
    database.upgrade()
    settings = settings_for(url)
    pipeline = Pipeline(settings, database, consumer="c")
    if checkpoint_at:
        for start in range(0, checkpoint_at, 500):
            pipeline.process(_records(lines, start, start + 500))
        pipeline.checkpoint({("src", 0): checkpoint_at})
    for start in range(checkpoint_at or 0, 3000, 500):  # learns at 2000, then dies
        pipeline.process(_records(lines, start, start + 500))
    assert len(Repository(database).list_references()) == 1

    pipeline = Pipeline(settings, database, consumer="c")
    resume = pipeline.restore_partition("src", 0) or 0
    assert resume == (checkpoint_at or 0)
    for start in range(resume, len(lines), 500):
        pipeline.process(_records(lines, start, min(start + 500, len(lines))))
    assert _fraud_outcome(url, pipeline) == expected


def test_partition_taken_back_after_another_process_learned_the_reference(
    tmp_path: Path,
) -> None:
    """Two processes of a consumer group: b reads the partition while the reference is being
    learned, hands it over (revoked), a learns and stores the reference, and when a dies b
    takes the partition back. b must take the stored reference, not resume its own stale
    collection (which took 1,000 of the events after the takeover for learning, unjudged,
    and then reset the detectors): the same incidents as one process reading it all."""
    lines = events(2000, seed=43) + events(3000, seed=44, shift=0.6, start=START + 2000)
    expected = _replayed_whole(tmp_path, lines)

    url = f"sqlite:///{tmp_path / 'group.db'}"
    database = Database(url)
    database.upgrade()
    settings = settings_for(url)
    b = Pipeline(settings, database, consumer="c")
    b.process(_records(lines, 0, 500))
    b.checkpoint({("src", 0): 500})
    b.drop_partition("src", 0)
    a = Pipeline(settings, database, consumer="c")
    assert a.restore_partition("src", 0) == 500
    for start in range(500, 3000, 500):  # learns the reference at 2000
        a.process(_records(lines, start, start + 500))
    a.checkpoint({("src", 0): 3000})
    assert b.restore_partition("src", 0) == 3000
    for start in range(3000, len(lines), 500):
        b.process(_records(lines, start, start + 500))
    assert _fraud_outcome(url, b) == expected


def test_restored_checkpoint_built_on_an_older_reference_takes_the_new_one(
    database: Database, tmp_path: Path
) -> None:
    settings = settings_for(database.url, learn_events=2000)
    replay(settings, database, events(2500, seed=31), "same", "src")
    # A new reference arrives (shifted training data), then the consumer resumes.
    path = tmp_path / "new.jsonl"
    path.write_bytes(b"\n".join(events(2000, seed=32, shift=1.0)))
    _set(database.url, "fraud", path)
    pipeline = Pipeline(settings, database, consumer="same")
    pipeline.restore_partition("src", 0)
    monitor = pipeline.monitors[("src", 0)]["fraud"]
    assert monitor.reference is not None
    assert monitor.reference.id == Repository(database).find_reference("fraud").id
    drift = monitor.detectors[0]
    assert drift.monitors["amount"].ref_mean == pytest.approx(12, abs=0.3)


def test_changed_settings_take_effect_when_a_checkpoint_is_restored(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint holds detector state built with the settings of its day; a restart with
    other settings must apply them (not resume the old ones), losing no pending label."""
    settings = settings_for(database.url, learn_events=2000)
    first = replay(settings, database, events(3200, seed=35), "c", "src")
    before = {d.name: d for d in first.monitors[("src", 0)]["fraud"].detectors}
    assert before["categorical_drift"].ready and before["query_patterns"].profile is not None

    changed = settings.model_copy(deep=True)
    changed.detectors.numeric_drift.min_effect_size = 0.9
    changed.detectors.accuracy.max_pending = 450
    changed.detectors.query_patterns.buffer_size = 64
    pipeline = Pipeline(changed, database, consumer="c")
    with caplog.at_level("WARNING", logger="agent.runtime.checkpoints"):
        assert pipeline.restore_partition("src", 0) == 3200
    after = {d.name: d for d in pipeline.monitors[("src", 0)]["fraud"].detectors}
    warned = {r.getMessage().split(" detector")[0] for r in caplog.records}
    assert warned == {
        f"model fraud: the {n}" for n in ("numeric_drift", "accuracy", "query_patterns")
    }

    # Unchanged settings: the state resumes as it was (as a twin restores it, unchanged).
    twins = {d.name: d for d in build_detectors("fraud", settings.detectors)}
    for name in ("categorical_drift", "prediction_drift", "data_quality", "input_anomaly"):
        assert twins[name].restore(before[name].snapshot())
        assert after[name].snapshot() == twins[name].snapshot(), name
    # Reference-based: rebuilt at once from the stored reference, under the new settings.
    numeric = after["numeric_drift"]
    assert numeric.settings.min_effect_size == 0.9 and numeric.ready
    assert (
        numeric.monitors["amount"].ref_mean == before["numeric_drift"].monitors["amount"].ref_mean
    )
    assert after["query_patterns"].settings.buffer_size == 64
    assert after["query_patterns"].profile is not None and not after["query_patterns"].clients
    # Learned from the stream: learned again; the pending predictions are kept, within the cap.
    join = after["accuracy"].join
    assert join.max_pending == 450 and len(before["accuracy"].join.pending) == 3200
    assert list(join.pending) == list(before["accuracy"].join.pending)
    pipeline.process(
        [RawRecord(events(1, seed=36, start=START + 3200)[0], Position("src", 0, 3200))]
    )
    assert len(join.pending) == 450


class _Exploit:
    """What a forged checkpoint row could hold: unpickling it would run code."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, ("raise SystemExit('a checkpoint was unpickled')",))


def test_a_pickled_checkpoint_is_never_loaded_the_monitor_starts_from_the_reference(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """An older (pickled) or forged checkpoint row: refused unread, one warning naming the
    model, and the detectors start again from the stored reference at the stored position."""
    settings = settings_for(database.url, learn_events=2000)
    replay(settings, database, events(3200, seed=37), "c", "src")
    reference = Repository(database).find_reference("fraud")
    with database.session() as session:
        session.execute(
            update(Checkpoint).values(state=pickle.dumps({"numeric_drift": _Exploit()}))
        )
    pipeline = Pipeline(settings, database, consumer="c")
    with caplog.at_level("WARNING", logger="agent.runtime.checkpoints"):
        assert pipeline.restore_partition("src", 0) == 3200
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("model fraud: checkpoint of src partition 0 not loaded (not a")
    assert "pickled" in warning
    assert "\n" not in warning
    monitor = pipeline.monitors[("src", 0)]["fraud"]
    assert monitor.reference is not None and monitor.reference.id == reference.id
    detectors = {d.name: d for d in monitor.detectors}
    assert detectors["numeric_drift"].ready  # rebuilt from the stored reference
    assert detectors["numeric_drift"].monitors["amount"].seen == 0  # nothing of the old state
    assert len(detectors["accuracy"].join.pending) == 0
    pipeline.process(
        [
            RawRecord(line, Position("src", 0, 3200 + i))
            for i, line in enumerate(events(500, seed=38, start=START + 3200))
        ]
    )
    pipeline.checkpoint({("src", 0): 3700})  # written in the data-only format from now on
    restarted = Pipeline(settings, database, consumer="c")
    with caplog.at_level("WARNING", logger="agent.runtime.checkpoints"):
        caplog.clear()
        assert restarted.restore_partition("src", 0) == 3700
    assert caplog.records == []


def test_a_checkpoint_off_its_schema_rebuilds_the_whole_monitor(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A data-only row whose accuracy state does not fit the schema (forged, or a layout
    bug): the detectors restored before it are not kept half-way either."""
    settings = settings_for(database.url, learn_events=2000)
    replay(settings, database, events(3200, seed=37), "c", "src")
    (row,) = Repository(database).load_checkpoints("c", "src", 0).values()
    monitor_state = state_codec.decode(row.state)
    accuracy = state_codec.decode(monitor_state["detectors"]["accuracy"])
    accuracy["state"] = {"join": "?"}
    monitor_state["detectors"]["accuracy"] = state_codec.encode(accuracy)
    with database.session() as session:
        session.execute(update(Checkpoint).values(state=state_codec.encode(monitor_state)))
    pipeline = Pipeline(settings, database, consumer="c")
    with caplog.at_level("WARNING", logger="agent.runtime.checkpoints"):
        assert pipeline.restore_partition("src", 0) == 3200
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("model fraud: checkpoint of src partition 0 not loaded (accuracy")
    detectors = {d.name: d for d in pipeline.monitors[("src", 0)]["fraud"].detectors}
    assert detectors["categorical_drift"].ready  # from the stored reference, afresh
    assert all(m.seen == 0 for m in detectors["categorical_drift"].monitors.values())
    rebuilt = detectors["query_patterns"]  # its profile from the stored reference, no clients
    assert rebuilt.profile is not None and not rebuilt.clients


def test_recent_window_is_bounded_and_persisted_with_checkpoints(database: Database) -> None:
    settings = settings_for(database.url, recent_events=1000)
    replay(settings, database, events(3333, seed=41), "c", "src")
    rows = Repository(database).recent_samples("fraud")
    assert [(r.source, r.partition, r.rows) for r in rows] == [("src", 0, 1000)]
    sample = Sample.decode(rows[0].sample)
    assert sample.ts == [START + i for i in range(2333, 3333)]
    assert (rows[0].start_ts, rows[0].end_ts) == (START + 2333, START + 3332)
    assert sample.scores[-1] is not None
    assert set(sample.features[-1]) == {"amount", "age", "country"}

    # A restarted consumer picks the window up and extends it (not a fresh, short one).
    pipeline = Pipeline(settings, database, consumer="c")
    assert pipeline.restore_partition("src", 0) == 3333
    more = events(100, seed=42, start=START + 3333)
    records = [RawRecord(line, Position("src", 0, 3333 + i)) for i, line in enumerate(more)]
    pipeline.process(records)
    pipeline.checkpoint({("src", 0): 3433})
    (row,) = Repository(database).recent_samples("fraud")
    assert Sample.decode(row.sample).ts == [START + i for i in range(2433, 3433)]


def test_recent_window_keeps_the_last_events_in_bounded_memory() -> None:
    window = RecentWindow(capacity=250)
    lines = events(2000, seed=51)
    for start in range(0, 2000, 70):
        records = [
            RawRecord(line, Position("s", 0, start + i))
            for i, line in enumerate(lines[start : start + 70])
        ]
        (batch,) = split_batch(decode_batch(records)).values()
        window.add(batch)
        assert window.size < 2 * 250 + 70
    assert window.sample().ts == [START + i for i in range(1750, 2000)]
    assert orjson.loads(lines[-1])["features"] == window.sample().features[-1]


def test_recent_window_of_records_stores_what_the_decoded_events_hold() -> None:
    """The window keeps records and decodes them at a checkpoint: the stored sample must be
    the one the decoded objects make, for every form the contract allows (ISO times, integer
    versions, a lone score, missing and mixed-type features, labels and bad lines between)."""
    rng = np.random.default_rng(5)
    lines = []
    for i in range(600):
        event: dict[str, object] = {"type": "prediction", "model": "m", "ts": START + i}
        if i % 7 == 0:
            event["ts"] = f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z"
        event["features"] = {"x": round(float(rng.normal()), 3), "c": ["a", "b", 1, True][i % 4]}
        if i % 5 == 0:
            del event["features"]["x"]  # type: ignore[attr-defined]
        event["model_version"] = [None, "v1", 2][i % 3]
        if i % 2:
            event["scores"] = {"no": 0.25, "yes": 0.75}
            event["prediction"] = "yes"
        else:
            event["score"] = round(float(rng.random()), 3)
        lines.append(orjson.dumps({k: v for k, v in event.items() if v is not None}))
        if i % 9 == 0:
            lines.append(
                orjson.dumps({"type": "label", "model": "m", "id": "x", "label": 1, "ts": 1})
            )
        if i % 50 == 0:
            lines.append(b'{"type": "prediction", "model": "m"}')  # no ts: a dead letter
    of_records, of_objects = RecentWindow(capacity=250), RecentWindow(capacity=250)
    for start in range(0, len(lines), 90):
        records = [
            RawRecord(line, Position("s", 0, start + i))
            for i, line in enumerate(lines[start : start + 90])
        ]
        (batch,) = split_batch(decode_batch(records)).values()
        assert batch.records is not None and len(batch.records) == len(batch)
        of_records.add(batch)
        batch.records = None  # as a batch built from event objects
        of_objects.add(batch)
    assert of_records.size == of_objects.size
    stored = of_records.sample()
    assert stored == of_objects.sample()
    assert len(stored) == 250 and "2026-01-01T00" not in str(stored.ts)
    assert Sample.decode(stored.encode()) == Sample.decode(of_objects.sample().encode())


def test_events_of_a_version_use_that_versions_reference_also_after_restore(
    database: Database, tmp_path: Path
) -> None:
    v2, v1 = tmp_path / "v2.jsonl", tmp_path / "v1.jsonl"
    v2.write_bytes(b"\n".join(events(1000, seed=71, shift=1.0, version="2")))
    v1.write_bytes(b"\n".join(events(1000, seed=72, version="1")))
    _set(database.url, "fraud", v2)
    _set(database.url, "fraud", v1)  # the newest reference, but for version 1
    settings = settings_for(database.url)
    live = events(500, seed=73, shift=1.0, version="2")
    first = replay(settings, database, live, consumer="v", name="src")
    expected = Repository(database).find_reference("fraud", "2").id
    assert first.monitors[("src", 0)]["fraud"].reference.id == expected
    assert Repository(database).list_incidents() == []  # version 2 data vs its own reference

    restarted = Pipeline(settings, database, consumer="v")
    restarted.restore_partition("src", 0)
    assert restarted.monitors[("src", 0)]["fraud"].reference.id == expected


def _client_stream(
    n: int,
    seed: int,
    keys: int = 40,
    flood: int = 0,
    shift: float = 0.0,
    start: float = START,
    flooders: int = 1,
) -> list[bytes]:
    """`n` predictions of `keys` benign clients with log-normal volumes (one heavy-ish), an
    integer feature `items` and measured ones (`amount`, ...); with `flood`, a client sends every
    other one of the first 2 x `flood` events: uniform-random `items` and `amount` (synthetic
    extraction), fractional and far wider than the benign ones. With `flooders` > 1 those
    events go to that many clients in turn (`flooder-0`, ...)."""
    rng = np.random.default_rng(seed)
    volume = rng.lognormal(0, 1, keys)
    who = rng.choice(keys, n, p=volume / volume.sum())
    items = rng.poisson(3, n).astype(float)
    amount = np.round(rng.normal(10 + 2 * shift, 2, n), 2)
    other = np.round(rng.normal(0, 1, (n, 3)) * [10, 300, 0.2] + [40, 2000, 0.5], 3)
    clients = [f"key-{k}" for k in who]
    for i in range(0, 2 * flood, 2):
        items[i], amount[i] = rng.uniform(0, 40), rng.uniform(-30, 50)
        clients[i] = "flooder" if flooders == 1 else f"flooder-{i // 2 % flooders}"
    return [
        orjson.dumps(
            {
                "type": "prediction",
                "model": "fraud",
                "ts": start + i,
                "client": clients[i],
                "features": {
                    "items": float(items[i]),
                    "amount": float(amount[i]),
                    **dict(zip(("age", "income", "risk"), other[i].tolist(), strict=True)),
                },
                "prediction": int(amount[i] > 11),
                "scores": {"0": 0.4, "1": 0.6} if amount[i] > 11 else {"0": 0.6, "1": 0.4},
            }
        )
        for i in range(n)
    ]


def _learned_profile(url: str) -> tuple[Sample, InputProfile]:
    sample = Sample.decode(Repository(Database(url)).find_reference("fraud").sample)
    batch = sample.to_batch("fraud")
    return sample, InputProfile(batch.numeric, batch.categorical)


@pytest.mark.parametrize("batch_size", [500, 5000])
def test_a_client_flooding_the_first_events_is_capped_then_left_out_of_the_learned_reference(
    tmp_path: Path, batch_size: int
) -> None:
    """An extraction client sending half the first 3,000 events (uniform-random, fractional)
    gives the collection at most twice the mean client's share; flagged by the client
    detector in the learning window (against that collection), it gives the stored reference
    none. The reference keeps the integer lattice of `items`, its median and spread (all of
    which the flood erases when it is not capped) and the drift detectors stay quiet on the
    benign traffic after it, while a genuine shift is still caught. With 5,000-event batches
    the whole learning window is in the first batch (none of it kept by the client detector
    yet): it is judged too."""
    lines = _client_stream(6000, seed=61, flood=1500)
    lines += _client_stream(3000, seed=62, shift=1.5, start=START + 6000)
    url = f"sqlite:///{tmp_path / 'capped.db'}"
    Database(url).upgrade()
    settings = settings_for(url).model_copy(update={"batch_size": batch_size})
    replay(settings, Database(url), lines, consumer="c", name="src")
    sample, profile = _learned_profile(url)
    (stored,) = Repository(Database(url)).list_references()
    assert stored.source_rows == 2000 and stored.rows == len(sample)
    benign_keys = 40 - 1  # at least: all but the lightest may be absent early on
    assert 0 < 2000 - len(sample) <= 2 * 2000 / benign_keys + 1  # the flood's capped share
    assert all(row["items"] == round(row["items"]) for row in sample.features)
    flagged = Repository(Database(url)).list_incidents(IncidentFilter(kind="suspicious_client"))
    assert [i.subject for i in flagged] == ["flooder"]
    assert flagged[0].first_seen < START + 50  # at its first look, the 20th query
    # The integer feature keeps its lattice; the measured one its median and spread.
    plain = _client_stream(2000, seed=63)
    reference_batch = Sample.of_records(plain).to_batch("fraud")
    clean = InputProfile(reference_batch.numeric, reference_batch.categorical)
    items, amount = profile.numeric_names.index("items"), profile.numeric_names.index("amount")
    assert profile.integral[items] and clean.integral[items]
    assert abs(profile.median[amount] - clean.median[amount]) < 0.1 * clean.scale[amount]
    assert abs(profile.scale[amount] / clean.scale[amount] - 1) < 0.15
    # Drift: only the genuine shift (from event 6000 on) opens an incident.
    incidents = Repository(Database(url)).list_incidents(IncidentFilter(kind="feature_drift"))
    assert [i.subject for i in incidents] == ["amount"]
    assert incidents[0].first_seen >= START + 6000


def test_early_flooders_together_holding_an_eighth_of_the_collection_are_left_out(
    tmp_path: Path,
) -> None:
    """Four extraction clients share the first events: each capped, together they still hold
    an eighth of the collection, enough to erase the integer lattice of `items` if it were
    decided by events (and to set the reference's own out-of-reference rate, the level the
    prior judges against). Decided by one voice per client, the lattice stands, the typical
    client's rate is what the prior uses, and every flooder is flagged at its first look and
    left out of the stored reference."""
    lines = _client_stream(6000, seed=66, flood=1500, flooders=4)
    url = f"sqlite:///{tmp_path / 'flooders.db'}"
    Database(url).upgrade()
    replay(settings_for(url), Database(url), lines, consumer="c", name="src")
    sample, profile = _learned_profile(url)
    flooded = [i for i, line in enumerate(lines[:2000]) if b'"flooder-' in line]
    assert len(flooded) > 0.15 * 2000  # what the collection was offered (it took 12.8%)
    assert all(row["items"] == round(row["items"]) for row in sample.features)
    assert profile.integral[profile.numeric_names.index("items")]
    flagged = Repository(Database(url)).list_incidents(IncidentFilter(kind="suspicious_client"))
    assert sorted(i.subject for i in flagged) == [f"flooder-{k}" for k in range(4)]
    assert all(i.first_seen < START + 250 for i in flagged)  # their 20th queries
    assert Repository(Database(url)).list_incidents(IncidentFilter(kind="feature_drift")) == []


def test_ordinary_multi_client_traffic_learns_the_same_reference_as_uncapped() -> None:
    """Benign clients with log-normal volumes (the heaviest several times the mean): the cap
    XX describes the same
        inputs as the first events taken whole (what the pipeline learned before the cap)."""
    lines = _client_stream(4000, seed=64)
    records = [RawRecord(line, Position("src", 0, i)) for i, line in enumerate(lines)]
    (batch,) = split_batch(decode_batch(records, 10**6), lambda s, p: (s, p)).values()
    collector = ReferenceCollector(2000)
    window = collector.add(batch)
    assert collector.complete and 2000 < window < 3000  # the heaviest clients passed over
    capped = collector.sample().to_batch("fraud")
    whole = batch.slice(0, 2000)
    for name in ("items", "amount", "age", "income", "risk"):
        a, b = capped.numeric[name], whole.numeric[name]
        levels = [0.01, 0.25, 0.5, 0.75, 0.99]
        qa, qb = np.quantile(a, levels), np.quantile(b, levels)
        assert np.all(np.abs(qa - qb) <= 0.1 * (qb[3] - qb[1]) + 1e-9), name
    assert collector.taken_until == {("src", 0): window}  # the learning window, passed over too


def test_a_collection_resumed_from_a_checkpoint_keeps_each_clients_count(
    tmp_path: Path,
) -> None:
    """Checkpointed half-way through learning (the flooder already at its cap), the resumed
    collection passes over the same events and learns the same reference as a process that
    never stopped: the per-client counts travel with the checkpoint, and so does each
    event's caller (the flooder's events from before the checkpoint are left out too)."""
    lines = _client_stream(6000, seed=65, flood=1500)

    def learned(name: str, stop_at: int | None) -> tuple[list[float], int]:
        url = f"sqlite:///{tmp_path / name}"
        database = Database(url)
        database.upgrade()
        settings = settings_for(url)
        pipeline = Pipeline(settings, database, consumer="c")
        resume = 0
        if stop_at is not None:
            for start in range(0, stop_at, 500):
                pipeline.process(
                    [RawRecord(lines[i], Position("src", 0, i)) for i in range(start, start + 500)]
                )
            pipeline.checkpoint({("src", 0): stop_at})
            assert pipeline.collectors["fraud"].client_counts["flooder"] > 0
            pipeline = Pipeline(settings, database, consumer="c")
            resume = pipeline.restore_partition("src", 0) or 0
            assert resume == stop_at
        for start in range(resume, len(lines), 500):
            chunk = range(start, min(start + 500, len(lines)))
            pipeline.process([RawRecord(lines[i], Position("src", 0, i)) for i in chunk])
        (reference,) = Repository(database).list_references()
        sample = Sample.decode(Repository(database).find_reference("fraud").sample)
        database.dispose()
        return sample.ts, reference.rows

    whole = learned("whole.db", None)
    assert whole[0][-1] - START > 2000  # some events passed over
    assert whole[1] < 2000  # the flooder's, left out
    assert learned("resumed.db", 1000) == whole
