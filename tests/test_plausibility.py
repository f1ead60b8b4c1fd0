"""Implausible records (times, magnitudes, probabilities, NUL) are dead letters with a precise
reason, on the batch path and the per-record path alike, and never move a model's clock."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from agent.config import AlertSettings, ConfigError, Settings, load_settings
from agent.incidents import lifecycle
from agent.runtime.pipeline import Pipeline
from agent.runtime.replay import memory_batches, replay_batches
from storage.db import Database
from storage.queries import Repository
from storage.unit_of_work import UnitOfWork
from streams.decode import Limits, decode_batch
from streams.events import Position, RawRecord
from streams.watermark import StreamClocks
from tests.synthetic import START, prediction_lines

T = 1767225600  # 2026-01-01T00:00:00Z
GOOD = {
    "type": "prediction",
    "model": "fraud",
    "id": "p-1",
    "ts": T,
    "features": {"amount": 12.5, "age": 41, "country": "DE"},
    "prediction": 1,
    "scores": {"0": 0.12, "1": 0.88},
}


def _with(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def _label(**changes: object) -> bytes:
    return json.dumps(
        {"type": "label", "model": "fraud", "id": "p-1", "label": 0, "ts": T, **changes}
    ).encode()


def _records(*values: bytes, source: str = "test") -> list[RawRecord]:
    return [RawRecord(v, Position(source, 0, i)) for i, v in enumerate(values)]


IMPLAUSIBLE = [
    (_with(ts=1e300), "field 'ts' 1e+300 is after 2100-01-01T00:00:00Z"),
    (
        _with(ts=T * 1000),
        f"field 'ts' {T * 1000} looks like epoch milliseconds (2026-01-01T00:00:00Z)",
    ),
    (_with(ts=T * 1_000_000), "looks like epoch microseconds"),
    (_with(ts=T * 1_000_000_000), "looks like epoch nanoseconds"),
    (_with(ts="0001-01-01T00:00:00Z"), "is before 2000-01-01T00:00:00Z, the earliest plausible"),
    (_with(ts="9999-12-31T00:00:00Z"), "is after 2100-01-01T00:00:00Z"),
    (_with(ts=-5), "field 'ts' -5 is before 2000-01-01T00:00:00Z"),
    (_label(ts=T * 1000.0), "looks like epoch milliseconds"),
    (
        b'{"type": "prediction", "model": "fraud", "ts": %d, '
        b'"features": {"amount": 123456789012345678901234567890}}' % T,
        "feature 'amount' is 1.2345678901234568e+29, beyond the plausible magnitude 1e+15",
    ),
    (_with(features={"amount": -2e15}), "feature 'amount' is -2000000000000000.0, beyond"),
    (
        _with(features={"amount": 18446744073709551615}),
        "feature 'amount' is 18446744073709551615, beyond",
    ),
    (
        b'{"type": "prediction", "model": "fraud", "ts": %d, "features": {}, '
        b'"scores": {"0": 0, "1": 123456789012345678901234567890}}' % T,
        "field 'scores.1' is 1.2345678901234568e+29, not a probability in [0, 1]",
    ),
    (
        b'{"type": "label", "model": "fraud", "id": 123456789012345678901234567890, '
        b'"label": 1, "ts": %d}' % T,
        "field 'id' is an integer too large to keep exactly (1.235e+29); send it as a string",
    ),
    (_with(scores={"0": -0.1, "1": 1.1}), "field 'scores.0' is -0.1, not a probability in [0, 1]"),
    (_with(scores={"0": 0.7, "1": 0.8}), "field 'scores' sums to 1.5, not 1 within 0.02"),
    (_with(scores={"a": 0.2, "b": 0.2, "c": 0.2}), "field 'scores' sums to 0.6"),
    (_with(score=1.5), "field 'score' is 1.5, not a probability in [0, 1]"),
    (_with(prediction=1e20), "field 'prediction' is 1e+20, beyond the plausible magnitude"),
    (_label(label=-1e16), "field 'label' is -1e+16, beyond the plausible magnitude"),
    (_with(latency_ms=-3), "field 'latency_ms' is -3; a latency cannot be negative"),
    (_with(features={"country": "D\u0000E"}), "field 'features.country' contains a NUL character"),
    (_with(features={"a\u0000b": 1}), "field 'features.a\\u0000b' contains a NUL character"),
    (_with(model="fr\u0000aud"), "field 'model' contains a NUL character"),
    (_with(client="\u0000"), "field 'client' contains a NUL"),
    (_with(note={"deep": ["x", "\u0000"]}), "field 'note.deep[1]' contains a NUL"),
    (_label(label="sp\u0000am"), "field 'label' contains a NUL"),
]


@pytest.mark.parametrize(("payload", "reason"), IMPLAUSIBLE)
def test_implausible_records_are_dead_letters_with_precise_reasons(
    payload: bytes, reason: str
) -> None:
    batch = decode_batch(_records(_with(id="before"), payload, _with(id="after")))
    assert [p.id for p in batch.predictions] == ["before", "after"]
    (letter,) = batch.dead_letters
    assert reason in letter.reason, letter.reason
    assert (letter.position.offset, letter.payload) == (1, payload)


def test_plausible_edge_values_pass() -> None:
    fine = [
        _with(ts=946684800),  # 2000-01-01 itself
        _with(ts="2099-12-31T23:59:59Z"),
        _with(features={"amount": 1e15, "n": -1000000000000000, "flag": True}),
        _with(scores={"a": 0.333, "b": 0.333, "c": 0.333}),  # rounded: within the tolerance
        _with(scores={"1": 0.4}),  # one class: a score, not a distribution
        _with(score=0, scores=None),
        _with(features={"path": "C:\\\\u0000"}),  # a backslash and 'u0000': no NUL
        _label(label="spam"),
    ]
    batch = decode_batch(_records(*fine))
    assert not batch.dead_letters, [d.reason for d in batch.dead_letters]
    assert len(batch.predictions) + len(batch.labels) == len(fine)


def test_the_limits_are_configurable_and_checked_alike_on_both_paths() -> None:
    limits = Limits(max_magnitude=10.0, scores_sum_to_one=False, max_ts=T + 10.0)
    payloads = [
        _with(features={"amount": 11}),
        _with(features={"amount": 1}, scores={"a": 0.9, "b": 0.9}),  # multi-label: allowed
        _with(features={"amount": 1}, ts=T + 11),
        _with(features={"amount": 1}),
    ]
    batch = decode_batch(_records(*payloads), limits=limits)
    alone = [decode_batch(_records(p), limits=limits) for p in payloads]
    assert [(d.position.offset, d.reason) for d in batch.dead_letters] == [
        (i, a.dead_letters[0].reason) for i, a in enumerate(alone) if a.dead_letters
    ]
    assert [d.position.offset for d in batch.dead_letters] == [0, 2]
    assert "beyond the plausible magnitude 10" in batch.dead_letters[0].reason


def test_batch_and_record_checks_agree_on_a_mixed_batch() -> None:
    payloads = [p for p, _ in IMPLAUSIBLE] + [_with(id=f"ok{i}") for i in range(5)]
    batch = decode_batch(_records(*payloads))
    alone = [decode_batch(_records(p)) for p in payloads]
    assert [(d.position.offset, d.reason) for d in batch.dead_letters] == [
        (i, a.dead_letters[0].reason) for i, a in enumerate(alone) if a.dead_letters
    ]
    assert [p.position for p in batch.predictions] == [
        Position("test", 0, i) for i, a in enumerate(alone) if a.predictions
    ]


# --- each stream's clock -------------------------------------------------------------------


def _at(*times: float, model: str = "fraud") -> list[bytes]:
    return [_with(id=f"e{i}", ts=t, model=model) for i, t in enumerate(times)]


def test_a_record_far_ahead_of_its_stream_is_rejected_and_does_not_move_it() -> None:
    clocks = StreamClocks(max_future_skew=86400.0, max_clock_skew=0)
    first = decode_batch(_records(*_at(T, T + 60, T + 120)), clocks=clocks)
    assert not first.dead_letters
    year = 365 * 86400.0
    batch = decode_batch(_records(*_at(T + 180, T + year, T + 240)), clocks=clocks)
    (letter,) = batch.dead_letters
    assert letter.position.offset == 1
    assert letter.reason.startswith(
        "field 'ts' 1798761600 is 365d ahead of its stream's latest event time "
        "2026-01-01T00:03:00Z (ingest.max_future_skew is 1d)"
    )
    assert [p.ts for p in batch.predictions] == [T + 180, T + 240]
    (group,) = batch.prediction_groups
    assert group.ts == [T + 180, T + 240] and len(group.rows) == 2
    assert clocks.watermarks[("test", 0, "fraud")] == T + 240
    # Another model of the same source has its own clock.
    other = decode_batch(_records(*_at(T + year, model="churn")), clocks=clocks)
    assert not other.dead_letters


def test_a_wild_record_among_a_new_streams_first_ones_cannot_set_its_clock() -> None:
    clocks = StreamClocks(max_future_skew=3600.0, max_clock_skew=0)
    batch = decode_batch(_records(*_at(T + 4e8, T, T + 1, T + 2, T + 3)), clocks=clocks)
    assert [d.position.offset for d in batch.dead_letters] == [0]
    assert clocks.watermarks[("test", 0, "fraud")] == T + 3


def test_a_stream_that_really_jumps_is_followed_after_three_records_in_a_row() -> None:
    clocks = StreamClocks(max_future_skew=3600.0, max_clock_skew=0, confirmations=3)
    decode_batch(_records(*_at(T, T + 1)), clocks=clocks)
    week = 7 * 86400.0
    # One at a time, as a quiet daemon would see them: two dead letters, then followed.
    outcomes = [
        decode_batch(
            [RawRecord(_with(ts=T + week + i), Position("test", 0, 10 + i))], clocks=clocks
        )
        for i in range(5)
    ]
    assert [len(o.dead_letters) for o in outcomes] == [1, 1, 0, 0, 0]
    assert "a jump is followed once 3 records in a row agree" in outcomes[0].dead_letters[0].reason
    # Scattered wild records (not agreeing with one another) are never followed.
    wild = decode_batch(
        _records(*_at(T + week + 10, T + 2 * week, T + week + 11, T + 3 * week, T + 4 * week)),
        clocks=clocks,
    )
    assert [d.position.offset for d in wild.dead_letters] == [1, 3, 4]


def test_the_daemon_rejects_records_ahead_of_the_wall_clock() -> None:
    clocks = StreamClocks(max_future_skew=86400.0, max_clock_skew=3600.0)
    batch = decode_batch(_records(*_at(T, T + 600, T + 7200)), clocks=clocks, wall_now=T + 60)
    (letter,) = batch.dead_letters
    assert letter.position.offset == 2
    assert "is 1.98h ahead of the wall clock (ingest.max_clock_skew is 1h)" in letter.reason


def test_ingest_config_keys_are_validated_and_named(tmp_path: Path) -> None:
    config = tmp_path / "bulwark.toml"
    config.write_text(
        '[ingest]\nmin_event_time = 2010-01-01T00:00:00Z\nmax_future_skew = "2h"\n'
        "max_magnitude = 1e9\nscores_sum_tolerance = 0.05\n"
    )
    ingest = load_settings(config, environ={}).ingest
    limits = ingest.limits()
    assert (limits.min_ts, limits.max_magnitude, limits.scores_sum_tolerance) == (
        1262304000.0,
        1e9,
        0.05,
    )
    assert ingest.clocks().max_future_skew == 7200.0
    for bad, key in [
        ('max_future_skew = "soon"', "ingest.max_future_skew"),
        ("min_event_time = 2010-01-01T00:00:00", "ingest.min_event_time"),  # no zone
        ("max_event_time = 1999-01-01T00:00:00Z", "ingest"),
        ("max_magnitude = -1", "ingest.max_magnitude"),
        ("max_skew = 3", "ingest.max_skew"),
    ]:
        config.write_text(f"[ingest]\n{bad}\n")
        with pytest.raises(ConfigError, match=rf"invalid config key '{key}'"):
            load_settings(config, environ={})


# --- through the pipeline: one bad record moves no clock and resolves nothing ---------------


def test_one_wild_record_never_resolves_a_models_open_incidents(database: Database) -> None:
    settings = Settings(database_url=database.url)
    pipeline = Pipeline(settings, database, consumer="replay")
    lines = prediction_lines(8000, model="m", seed=3, shift=("x0_normal", 5000, 3.0))
    replay_batches(pipeline, memory_batches(lines, "events", 2000))
    repository = Repository(database)
    opened = {i.id for i in repository.list_incidents() if i.status == "open"}
    assert opened, "the shift opens incidents"
    last = START + 7999
    wild = [
        orjson.dumps(
            {"type": "prediction", "model": "m", "ts": 1e300, "features": {"x0_normal": 1.0}}
        ),
        orjson.dumps({"type": "prediction", "model": "m", "ts": int(last * 1000), "features": {}}),
        orjson.dumps(
            {"type": "label", "model": "m", "id": "m-1", "label": 0, "ts": last + 400 * 86400}
        ),
    ]
    for i, line in enumerate(wild):  # one at a time, each a batch of its own
        pipeline.process([RawRecord(line, Position("events", 0, 8000 + i))])
    pipeline.checkpoint({("events", 0): 8003})
    resolved = lifecycle.auto_resolve(
        database, AlertSettings(), quiet_for=86400.0, wall_now=last + 1e9
    )
    assert resolved == []
    assert {i.id for i in repository.list_incidents() if i.status == "open"} == opened
    with database.session() as session:
        assert UnitOfWork(session).model_stats.event_time("m") == last
    reasons = [d.reason for d in repository.list_dead_letters()]
    assert any("looks like epoch milliseconds" in r for r in reasons)
    assert any("1e+300 is after 2100-01-01" in r for r in reasons)
    assert any("ahead of its stream's latest event time" in r for r in reasons)


def test_nul_in_a_record_is_a_dead_letter_and_the_batch_is_stored_on_every_backend(
    database: Database,
) -> None:
    pipeline = Pipeline(Settings(database_url=database.url), database, consumer="replay")
    lines = [
        _with(id="a"),
        _with(id="b", features={"country": "D\u0000E"}),
        _with(id="c", client="key\u0000"),
        b'{"type": "prediction", "model": "m\\u0000", "ts": 1767225600, "features": {}}',
        _with(id="d"),
    ]
    pipeline.process(_records(*lines, source="nul.jsonl"))
    letters = Repository(database).list_dead_letters()
    assert sorted(d.offset for d in letters) == [1, 2, 3]
    assert all("contains a NUL character" in d.reason for d in letters)
    assert pipeline.stats.predictions == 2
