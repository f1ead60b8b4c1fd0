"""One suite every detector the registry builds must pass (River's `check_estimator` idea).

The model: continuous and discrete numeric features, categorical and boolean ones, a field
that is sometimes missing, class scores, clients, and labels arriving a few events after
their predictions; its inputs, scores and accuracy shift halfway and it falls silent once,
so detectors have something to find. Events go through the real decoder, as in the pipeline.

- A snapshot restored into a detector built the same way goes on with identical findings,
  metrics and state, from any point of the stream (while learning, just after, much later).
- A snapshot is data only: it starts with the codec's magic, and a pickle is refused unread.
- An empty batch and a labels-only batch are accepted and produce no findings.
- A detector never reads the wall clock: time is the events' time.
- A reference handed over is used exactly by the detectors declaring a reference baseline.
"""

from __future__ import annotations

import ast
import datetime
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from detectors import state_codec
from detectors.base import Detector, Finding
from detectors.baseline import takes_reference
from detectors.registry import DetectorSettings, build_detectors
from detectors.state_codec import StateError
from streams.batch import ModelBatch, concat_batches, split_batch
from streams.decode import decode_batch
from streams.events import Position, RawRecord

START = 1_767_225_600.0
MODEL = "m"
PREDICTIONS = 3000
SHIFT_AT = 1500  # inputs, scores and accuracy change from this prediction on
LABEL_DELAY = 7  # a prediction's label comes this many records later
BATCH = 100  # records per batch
SILENCE_AT, SILENCE = 2200, 600.0  # the stream falls silent for 10 minutes before this one

SETTINGS = DetectorSettings.model_validate(
    {
        "reference_size": 400,  # the multivariate test needs 400 events
        "false_alarms_per_million": 100,
        "accuracy": {"reference_size": 200, "block_size": 20, "false_alarms_per_million": 100},
        "query_patterns": {
            "reference_size": 200,
            "buffer_size": 32,
            "min_queries": 10,
            "check_every": 5,
            "max_clients": 20,
        },
        "input_anomaly": {"block_size": 20},
        "numeric_drift": {"block_size": 20},
        "categorical_drift": {"window": 100},
        "prediction_drift": {"block_size": 20, "window": 100},
        "data_quality": {"window": 100},
        "stream_stall": {"min_gaps": 20, "min_span": 0, "min_stall": 1},
        "shape_drift": {"windows": [200]},
        "multivariate_drift": {"window": 200},
    }
)
NAMES = [d.name for d in build_detectors(MODEL, SETTINGS)]


def ts(i: int) -> float:
    """The event time of prediction `i`: one a second, with one silence."""
    return START + i + (SILENCE if i >= SILENCE_AT else 0.0)


def records(seed: int = 3) -> list[bytes]:
    """The model's stream: predictions with labels interleaved a few records later."""
    rng = np.random.default_rng(seed)
    out: list[bytes] = []
    labels: list[tuple[int, bytes]] = []
    for i in range(PREDICTIONS):
        shifted = i >= SHIFT_AT
        p1 = float(rng.beta(2, 5) if not shifted else rng.beta(5, 2))
        predicted = int(p1 > 0.5)
        correct = rng.random() < (0.9 if not shifted else 0.55)
        features: dict[str, Any] = {
            "amount": round(float(rng.lognormal(3, 0.5) * (2.5 if shifted else 1)), 3),
            "age": int(rng.integers(18, 80)),
            "items": int(
                rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1] if not shifted else [0.1, 0.3, 0.6])
            ),
            "country": str(
                rng.choice(
                    ["DE", "FR", "US"], p=[0.5, 0.3, 0.2] if not shifted else [0.1, 0.2, 0.7]
                )
            ),
            "vip": bool(rng.random() < 0.2),
        }
        if rng.random() < (0.1 if not shifted else 0.5):
            features["note"] = None
        else:
            features["note"] = str(rng.choice(["x", "y"]))
        event = {
            "type": "prediction",
            "model": MODEL,
            "id": f"p{i}",
            "ts": ts(i),
            "client": f"c{int(rng.integers(0, 30))}",
            "features": features,
            "prediction": predicted,
            "scores": {"0": round(1 - p1, 6), "1": round(p1, 6)},
        }
        out.append(orjson.dumps(event))
        label = predicted if correct else 1 - predicted
        labels.append(
            (
                i + LABEL_DELAY,
                orjson.dumps(
                    {
                        "type": "label",
                        "model": MODEL,
                        "id": f"p{i}",
                        "label": label,
                        "ts": ts(i) + 3,
                    }
                ),
            )
        )
        while labels and labels[0][0] <= i:
            out.append(labels.pop(0)[1])
    out.extend(line for _, line in labels)
    return out


def batches(lines: list[bytes]) -> list[ModelBatch]:
    """The stream as the pipeline cuts it: one columnar batch per `BATCH` records."""
    out = []
    for start in range(0, len(lines), BATCH):
        raw = [
            RawRecord(value, Position("stream", 0, start + i))
            for i, value in enumerate(lines[start : start + BATCH])
        ]
        decoded = decode_batch(raw, max_record_bytes=1 << 20)
        assert not decoded.dead_letters
        out.extend(split_batch(decoded).values())
    return out


STREAM = batches(records())


def build(name: str) -> Detector:
    (detector,) = [d for d in build_detectors(MODEL, SETTINGS) if d.name == name]
    return detector


def run(detector: Detector, parts: list[ModelBatch]) -> list[Finding]:
    findings: list[Finding] = []
    for part in parts:
        findings.extend(detector.update(part))
    return findings


def seen(findings: list[Finding]) -> list[str]:
    """Findings compared whole; repr, because a NaN in details equals nothing."""
    return [repr(f) for f in findings]


@pytest.mark.parametrize("name", NAMES)
def test_the_stream_gives_every_detector_something_to_find(name: str) -> None:
    """So the round trip below compares findings, not two empty lists."""
    assert run(build(name), STREAM), name


@pytest.mark.parametrize("cut", [2, 12, 30, 45])
@pytest.mark.parametrize("name", NAMES)
def test_a_restored_snapshot_goes_on_identically(name: str, cut: int) -> None:
    original = build(name)
    run(original, STREAM[:cut])
    original.metrics()
    data = original.snapshot()
    twin = build(name)
    assert twin.restore(data)
    rest = STREAM[cut:]
    first, second = [], []
    for part in rest:
        first += [*seen(original.update(part)), repr(original.metrics())]
        second += [*seen(twin.update(part)), repr(twin.metrics())]
    assert first == second
    assert original.snapshot() == twin.snapshot()


@pytest.mark.parametrize("name", NAMES)
def test_a_snapshot_is_data_only_and_a_pickle_is_refused(name: str) -> None:
    detector = build(name)
    assert state_codec.is_encoded(detector.snapshot())
    run(detector, STREAM[:20])
    data = detector.snapshot()
    assert data.startswith(state_codec.MAGIC)
    assert isinstance(state_codec.decode(data)["state"], dict)

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (exec, ("raise SystemExit('unpickled')",))

    with pytest.raises(StateError):
        build(name).restore(pickle.dumps({"state": Boom()}))


@pytest.mark.parametrize("name", NAMES)
def test_a_state_that_does_not_fit_the_schema_is_refused(name: str) -> None:
    """Encoded but forged, or written by a buggy layout: a clear error, not a half-restored
    detector going on (the pipeline then builds the monitor afresh)."""
    detector = build(name)
    run(detector, STREAM[:20])
    envelope = state_codec.decode(detector.snapshot())
    # Keys missing; or every value of the wrong kind (the objects rebuilt from them fail).
    for state in ({}, dict.fromkeys(envelope["state"], "?")):
        envelope["state"] = state
        with pytest.raises(StateError, match="does not fit its schema"):
            build(name).restore(state_codec.encode(envelope))


# Per detector, one of its own settings changed (a practical floor: nothing to rebuild).
OTHER_SETTING = {
    "numeric_drift": {"min_effect_size": 0.3},
    "categorical_drift": {"min_psi": 0.2},
    "prediction_drift": {"min_psi": 0.2},
    "data_quality": {"min_rate_increase": 0.03},
    "accuracy": {"margin": 0.03},
    "query_patterns": {"min_queries": 12},
    "input_anomaly": {"min_excess_share": 0.02},
    "stream_stall": {"factor": 6.0},
    "shape_drift": {"min_ks": 0.1},
    "multivariate_drift": {"min_relative_change": 0.1},
}


def test_every_detector_has_a_setting_to_change() -> None:
    assert set(OTHER_SETTING) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_snapshot_with_other_settings_is_not_resumed(name: str) -> None:
    detector = build(name)
    run(detector, STREAM[:20])
    other = SETTINGS.merged({name: OTHER_SETTING[name]})
    (changed,) = [d for d in build_detectors(MODEL, other) if d.name == name]
    assert not changed.restore(detector.snapshot())
    assert build(name).restore(detector.snapshot())


def labels_only(ids: list[str]) -> ModelBatch:
    lines = [
        orjson.dumps({"type": "label", "model": MODEL, "id": i, "label": 1, "ts": START + 10})
        for i in ids
    ]
    (batch,) = batches(lines)
    assert len(batch) == 0 and batch.labels is not None and len(batch.labels.ids) == len(ids)
    return batch


@pytest.mark.parametrize("warm", [0, 20])
@pytest.mark.parametrize("name", NAMES)
def test_empty_and_labels_only_batches_are_accepted_quietly(name: str, warm: int) -> None:
    detector, twin = build(name), build(name)
    run(detector, STREAM[:warm])
    run(twin, STREAM[:warm])
    assert detector.update(STREAM[0].slice(0, 0)) == []
    # An empty batch changes nothing the continuation would show.
    assert seen(run(detector, STREAM[warm:])) == seen(run(twin, STREAM[warm:]))
    # Labels only (for ids never predicted: they wait, or count as unknown ids).
    assert detector.update(labels_only(["never-predicted-1", "never-predicted-2"])) == []


class _NoClock(datetime.datetime):
    @classmethod
    def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
        raise AssertionError("a detector read the wall clock (datetime.now)")

    @classmethod
    def utcnow(cls) -> Any:  # type: ignore[override]
        raise AssertionError("a detector read the wall clock (datetime.utcnow)")

    @classmethod
    def today(cls) -> Any:  # type: ignore[override]
        raise AssertionError("a detector read the wall clock (datetime.today)")


@pytest.mark.parametrize("name", NAMES)
def test_a_detector_never_reads_the_wall_clock(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    detector = build(name)

    def clock(*_: object) -> float:
        raise AssertionError("a detector read the wall clock")

    with monkeypatch.context() as patched:
        for attr in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter"):
            patched.setattr(time, attr, clock)
        patched.setattr(datetime, "datetime", _NoClock)
        findings = run(detector, STREAM)
        detector.metrics()
        twin = build(name)
        twin.restore(detector.snapshot())
    assert findings


def test_no_detector_module_imports_a_clock() -> None:
    """The run-time check above cannot see `from time import time`; this one can."""
    root = Path(__file__).resolve().parent.parent / "detectors"
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not {"time", "datetime"} & set(names), f"{path.name} imports {names}"


def events(first: int, last: int) -> list[ModelBatch]:
    """The stream's batches cut to predictions [first, last) (their labels left out)."""
    parts, seen_so_far = [], 0
    for part in STREAM:
        lo, hi = max(first - seen_so_far, 0), min(last - seen_so_far, len(part))
        if lo < hi:
            parts.append(part.slice(lo, hi))
        seen_so_far += len(part)
    return parts


@pytest.mark.parametrize("name", NAMES)
def test_a_reference_handed_over_is_used_exactly_when_declared(name: str) -> None:
    """Judging the shifted half of the stream: against a reference of the first events it
    was handed, a detector declaring a reference baseline judges otherwise than when it
    learns its reference from the shifted events themselves; any other ignores it."""
    reference = concat_batches(events(0, SETTINGS.reference_size))
    shifted = events(SHIFT_AT, PREDICTIONS)
    handed, learning = build(name), build(name)
    handed.set_reference(reference)
    differs = seen(run(handed, shifted)) != seen(run(learning, shifted))
    assert differs == takes_reference(handed)
