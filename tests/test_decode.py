"""Decoding: every malformed record becomes a dead letter with a precise reason."""

from __future__ import annotations

import json

import pytest

from streams.decode import decode_batch
from streams.events import Label, Position, Prediction, RawRecord
from streams.files import FileSource

GOOD = {
    "type": "prediction",
    "model": "fraud",
    "model_version": "3.1",
    "id": "p-1",
    "ts": 1767225600.0,
    "client": "key-42",
    "features": {"amount": 12.5, "age": 41, "country": "DE", "channel": None, "vip": True},
    "prediction": 1,
    "scores": {"0": 0.12, "1": 0.88},
    "latency_ms": 7.1,
}


def _records(*values: bytes) -> list[RawRecord]:
    return [RawRecord(v, Position("test", 0, i)) for i, v in enumerate(values)]


def _with(**changes: object) -> bytes:
    event = {**GOOD, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


def test_valid_prediction_and_label_decode_with_all_fields() -> None:
    label = b'{"type": "label", "model": "fraud", "id": "p-1", "label": 0, "ts": 1767229200}'
    batch = decode_batch(_records(_with(extra_field={"x": 1}), label))
    assert not batch.dead_letters
    (prediction,) = batch.predictions
    assert isinstance(prediction, Prediction)
    assert (prediction.model, prediction.id, prediction.client) == ("fraud", "p-1", "key-42")
    assert prediction.features["country"] == "DE" and prediction.features["channel"] is None
    assert prediction.scores == {"0": 0.12, "1": 0.88}
    assert prediction.extra == {"extra_field": {"x": 1}}  # unknown fields kept out of the way
    (lab,) = batch.labels
    assert isinstance(lab, Label) and (lab.id, lab.label, lab.ts) == ("p-1", 0, 1767229200.0)


def test_iso_timestamps_with_zone_are_epoch_seconds() -> None:
    batch = decode_batch(
        _records(_with(ts="2026-01-01T00:00:00Z"), _with(ts="2026-01-01T01:00:00+01:00"))
    )
    assert [p.ts for p in batch.predictions] == [1767225600.0, 1767225600.0]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"this is not json", "not valid JSON"),
        (b'{"type": "prediction",', "not valid JSON"),
        (b"[1, 2]", "not a JSON object but array"),
        (_with(type=...), "missing required field 'type'"),
        (_with(type="explanation"), "field 'type' must be 'prediction' or 'label'"),
        (_with(model=...), "missing required field 'model'"),
        (_with(model=7), "field 'model' must be a non-empty string, got number"),
        (_with(ts=...), "missing required field 'ts'"),
        (_with(ts=True), "field 'ts' must be a number, got boolean"),
        (_with(ts="yesterday"), "field 'ts' is not an ISO-8601 time"),
        (_with(ts="2026-01-01T00:00:00"), "field 'ts' has no time zone"),
        (_with(features=...), "missing required field 'features'"),
        (_with(features=[1, 2]), "field 'features' must be an object, got array"),
        (_with(features={"age": {"v": 1}}), "feature 'age' must be a number, string, boolean"),
        (_with(scores={"1": "high"}), "field 'scores.1' must be a number, got string"),
        (_with(latency_ms="fast"), "field 'latency_ms' must be a number, got string"),
        (_with(id=[1]), "field 'id' must be a non-empty string or an integer"),
        (b'{"type": "label", "model": "m", "label": 1, "ts": 1}', "missing required field 'id'"),
        (b'{"type": "label", "model": "m", "id": "a", "ts": 1}', "missing required field 'label'"),
        (
            b'{"type": "label", "model": "m", "id": "a", "ts": 1, "label": [1]}',
            "field 'label' must be a number, string or boolean, got array",
        ),
    ],
)
def test_malformed_records_become_dead_letters_with_precise_reasons(
    payload: bytes, reason: str
) -> None:
    batch = decode_batch(_records(payload, _with()))
    assert len(batch.predictions) == 1  # the good record after the bad one still decodes
    (letter,) = batch.dead_letters
    assert reason in letter.reason
    assert letter.payload == payload
    assert letter.position == Position("test", 0, 0)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (
            b'{"type": "prediction", "model": "m", "ts": 1, "features": {"amount": NaN}}',
            "features.amount",
        ),
        (b'{"type": "prediction", "model": "m", "ts": Infinity, "features": {}}', "ts"),
        (
            b'{"type": "prediction", "model": "m", "ts": 1, "features": {}, "score": -Infinity}',
            "score",
        ),
        (b'{"type": "prediction", "model": "m", "ts": 1e400, "features": {}}', "ts"),
    ],
)
def test_nan_and_infinity_are_named(payload: bytes, field: str) -> None:
    (letter,) = decode_batch(_records(payload)).dead_letters
    assert f"field '{field}' is NaN or infinite" in letter.reason


def test_oversized_record_is_rejected_before_parsing() -> None:
    big = _with(features={"blob": "x" * 2_000_000})
    (letter,) = decode_batch(_records(big), max_record_bytes=1_000_000).dead_letters
    assert letter.reason.startswith(f"record too large: {len(big)} bytes")
    assert len(letter.payload) <= 4096  # stored truncated


def test_file_source_cuts_a_10mb_line_without_losing_its_neighbours(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    huge = b'{"type": "prediction", "pad": "' + b"y" * 10_000_000 + b'"}'
    path.write_bytes(_with(id="before") + b"\n" + huge + b"\n\n" + _with(id="after") + b"\n")
    source = FileSource(str(path), batch_size=10)
    records = [r for batch, _ in source.batches() for r in batch]
    assert [r.position.offset for r in records] == [0, 1, 3]  # offsets are line numbers
    assert len(records[1].value) <= source.max_record_bytes + 1  # only a bounded prefix kept
    batch = decode_batch(records, source.max_record_bytes)
    assert [p.id for p in batch.predictions] == ["before", "after"]
    (letter,) = batch.dead_letters
    assert letter.reason == f"record too large: {len(huge)} bytes (limit 1000000)"
    assert letter.position.offset == 1


def test_file_source_reports_a_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match=r"no such file: /nonexistent\.jsonl"):
        FileSource("/nonexistent.jsonl")


def _label(**changes: object) -> bytes:
    event = {"type": "label", "model": "fraud", "id": "p-1", "label": 0, "ts": 1767229200}
    return json.dumps({**event, **changes}).encode()


def test_batch_decoding_agrees_with_the_per_record_decoder() -> None:
    """Each record of a mixed batch decodes as it does alone, and the bad ones are dead
    letters in their order, whichever columns they spoil for the others."""
    payloads = [
        _with(id=7, client=8, model_version=3),  # integer identifiers become strings
        _with(ts="2026-01-01T00:00:00Z"),
        _with(features={"amount": None}, scores=..., prediction="yes", score=0.5),
        _label(id=12, label="spam"),
        _with(ts="yesterday"),  # spoils the ts column of the fraud group
        _with(model="churn", features={"x": [1]}),
        _label(model=""),
        _with(scores={}),
        b"[]",
        _with(model="churn", features={}),
        _label(ts=True),
        _with(client=True),
    ]
    batch = decode_batch(_records(*payloads))
    alone = [decode_batch(_records(p)) for p in payloads]
    assert [p.position for p in batch.predictions] == [
        Position("test", 0, i) for i, a in enumerate(alone) if a.predictions
    ]
    first = batch.predictions[0]
    assert (first.id, first.client, first.model_version) == ("7", "8", "3")
    fraud = next(g for g in batch.prediction_groups if g.model == "fraud")
    assert (fraud.ids[0], fraud.clients[0], fraud.model_versions[0]) == ("7", "8", "3")
    assert fraud.ts[:2] == [1767225600.0, 1767225600.0]
    assert [lab.id for lab in batch.labels] == ["12"]
    assert [(d.position.offset, d.reason) for d in batch.dead_letters] == [
        (i, a.dead_letters[0].reason) for i, a in enumerate(alone) if a.dead_letters
    ]
    assert (len(batch.predictions), len(batch.labels), len(batch.dead_letters)) == (4, 1, 7)


def test_groups_hold_the_columns_and_empty_features_are_fine() -> None:
    batch = decode_batch(
        [
            RawRecord(_with(model="churn", features={}), Position("a", 0, 5)),
            RawRecord(_with(), Position("a", 1, 6)),
            RawRecord(_with(model="churn", features={"x": 1}), Position("a", 0, 7)),
            RawRecord(_label(), Position("a", 1, 8)),
        ]
    )
    groups = {(g.source, g.partition, g.model): g for g in batch.prediction_groups}
    churn = groups[("a", 0, "churn")]
    assert churn.positions == [Position("a", 0, 5), Position("a", 0, 7)]
    assert churn.features == [("x", (None, 1), {type(None), int})]
    (labels,) = batch.label_groups
    assert (labels.model, labels.ids, labels.values, labels.ts) == (
        "fraud",
        ["p-1"],
        [0],
        [1767229200.0],
    )


def test_file_source_keeps_line_numbers_across_chunks_blank_lines_and_crlf(
    tmp_path, monkeypatch
) -> None:
    import streams.files

    monkeypatch.setattr(streams.files, "_CHUNK_BYTES", 7)  # lines straddle chunk boundaries
    path = tmp_path / "events.jsonl"
    lines = [_with(id="a") + b"\r", b"", b"  ", _with(id="b"), b"x" * 40 + b"\r", _with(id="c")]
    path.write_bytes(b"\n".join(lines))  # no newline at the end
    source = FileSource(str(path), batch_size=2, max_record_bytes=len(_with(id="a")))
    batches = list(source.batches())
    records = [r for batch, _ in batches for r in batch]
    assert [r.position.offset for r in records] == [0, 3, 4, 5]
    assert records[0].value == _with(id="a") and records[0].size == len(_with(id="a"))
    assert records[2].value == b"x" * 40 and records[2].size == 40
    assert [consumed for _, consumed in batches] == [
        sum(len(line.rstrip(b"\r")) + 1 for line in lines[:4]),
        sum(len(line.rstrip(b"\r")) + 1 for line in lines),
    ]
