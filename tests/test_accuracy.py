"""The accuracy detector on synthetic streams: detection, no false alarms, metrics, restarts."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, f1_score, log_loss, precision_score, recall_score

from detectors.accuracy import AccuracyDetector
from detectors.base import Finding, Kind, Severity
from detectors.settings import AccuracySettings
from streams.batch import LabelColumns, ModelBatch
from streams.events import Position
from tests.accuracy_streams import (
    START,
    accuracy_of_spread,
    classification_batches,
    regression_batches,
    spread_for_accuracy,
)

CHANGE_AT = 8000
DELAY = 500


def run(batches: Iterable[ModelBatch], detector: AccuracyDetector) -> list[Finding]:
    found: list[Finding] = []
    for batch in batches:
        found.extend(detector.update(batch))
    return found


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_a_ten_point_drop_is_found_within_3000_labelled_events(seed: int) -> None:
    base = accuracy_of_spread(2.0)
    flip = 0.10 / (2 * base - 1)  # labels flip: accuracy falls 10 points, scores unchanged
    findings = run(
        classification_batches(CHANGE_AT + 4000, change_at=CHANGE_AT, flip=flip, seed=seed),
        AccuracyDetector("m"),
    )
    measured = [f for f in findings if f.subject == "accuracy"]
    assert measured, "the drop was not found"
    first = measured[0]
    # Labels come DELAY events after their prediction: the label at event time t is that of
    # prediction t - DELAY, so this many labelled events after the change were seen.
    labelled_after_change = int(first.ts - START) - DELAY - CHANGE_AT + 1
    assert 0 < labelled_after_change <= 3000
    assert first.kind is Kind.ACCURACY_DROP
    d = first.details
    assert d["metric"] == "accuracy" and d["estimated"] is False
    assert d["before"]["value"] == pytest.approx(base, abs=0.02)
    assert d["before"]["ci95"][0] < d["before"]["value"] < d["before"]["ci95"][1]
    assert d["after"]["value"] < d["before"]["value"] - 0.02
    assert d["after"]["n"] == first.support > 0
    assert first.effect_size == pytest.approx(d["before"]["value"] - d["after"]["value"], abs=1e-3)
    # Nothing before the change, and the label-free estimate cannot see flipped labels.
    assert all(int(f.ts - START) - DELAY >= CHANGE_AT for f in measured)
    assert not [f for f in findings if f.subject == "estimated_accuracy"]


def test_a_stationary_stream_of_a_million_labelled_events_raises_nothing() -> None:
    """One million predictions, each labelled: no finding at all (budget 0.1 per million)."""
    detector = AccuracyDetector("m")
    findings = run(classification_batches(1_000_000, batch_size=5000, seed=0), detector)
    assert findings == []
    assert detector.join.counters.joined == 1_000_000 - DELAY  # the last labels are not due
    assert detector.reference is not None and detector.estimate_test is not None


def test_the_estimate_sees_a_covariate_shift_before_the_labels_arrive() -> None:
    base = accuracy_of_spread(2.0)
    delay = 20_000  # labels a long way behind: only scores can tell in time
    findings = run(
        classification_batches(
            30_000,
            change_at=25_000,
            spread_after=spread_for_accuracy(base - 0.10),
            delay=delay,
            seed=3,
        ),
        AccuracyDetector("m", AccuracySettings(reference_size=2000)),
    )
    estimated = [f for f in findings if f.subject == "estimated_accuracy"]
    assert estimated, "no estimated accuracy drop"
    first = estimated[0]
    predictions_after_change = int(first.ts - START) - 25_000 + 1
    assert 0 < predictions_after_change <= 2000
    assert first.details["estimated"] is True
    low, high = first.details["before"]["ci95"]
    assert low < first.details["before"]["value"] < high
    assert first.details["predictions"] == first.support > 0
    assert first.details["before"]["value"] - first.details["after"]["value"] > 0.05
    assert not [f for f in findings if f.subject == "accuracy"]  # labels not yet there


def test_severity_grows_with_the_drop() -> None:
    base = accuracy_of_spread(2.0)
    worst = {}
    for drop in (0.04, 0.25):
        findings = run(
            classification_batches(
                CHANGE_AT + 8000, change_at=CHANGE_AT, flip=drop / (2 * base - 1), seed=21
            ),
            AccuracyDetector("m", AccuracySettings(estimate=False)),
        )
        assert findings
        worst[drop] = max(f.severity.rank for f in findings)
    assert worst[0.25] == Severity.CRITICAL.rank
    assert worst[0.04] < Severity.CRITICAL.rank


def test_a_bias_shift_in_a_regression_stream_raises_one() -> None:
    detector = AccuracyDetector("r")
    findings = run(
        regression_batches(CHANGE_AT + 3000, change_at=CHANGE_AT, bias_after=0.5), detector
    )
    assert detector.task == "regression"
    bias = [f for f in findings if f.subject == "bias"]
    assert bias
    first = bias[0]
    assert int(first.ts - START) - DELAY >= CHANGE_AT
    assert first.details["after"]["value"] == pytest.approx(0.5, abs=0.2)
    assert first.details["direction"] == "up"
    assert abs(first.details["before"]["value"]) < 0.1


def test_a_regression_improvement_is_reported_as_info() -> None:
    """MAE 0.8 -> 0.56 (noise std x0.7): reported, as information, never as a drop."""
    findings = run(
        regression_batches(CHANGE_AT + 4000, change_at=CHANGE_AT, noise_after=0.7),
        AccuracyDetector("r"),
    )
    assert {f.subject for f in findings} == {"mae_improved"}
    first = findings[0]
    assert first.severity == Severity.INFO and first.statistic == "cusum_abs_error_down"
    assert int(first.ts - START) - DELAY >= CHANGE_AT
    assert first.details["relative_change"] == pytest.approx(-0.3, abs=0.1)
    assert first.effect_size > 0.1 and first.details["direction"] == "improved"
    assert "fell" in first.title


def test_a_stationary_regression_stream_raises_nothing() -> None:
    findings = run(regression_batches(200_000, batch_size=5000, seed=8), AccuracyDetector("r"))
    assert findings == []


def test_window_metrics_match_a_direct_computation() -> None:
    rng = np.random.default_rng(4)
    n = 3000
    p = rng.random(n)
    y = (rng.random(n) < p).astype(int)
    pred = (p > 0.5).astype(int)
    detector = AccuracyDetector("m", AccuracySettings(window_seconds=1000))
    ts = START + np.arange(n, dtype=np.float64)
    ids = [f"i{i}" for i in range(n)]
    batch = ModelBatch(
        model="m",
        source="s",
        partition=3,
        ts=ts,
        offsets=np.arange(n),
        ids=ids,
        clients=[None] * n,
        model_versions=["a" if i % 2 else "b" for i in range(n)],
        rows=[{}] * n,
        predictions=pred.tolist(),
        scores=[{"0": 1 - q, "1": q} for q in p.tolist()],
    )
    labelled = np.arange(0, n, 3)  # a third of the predictions get a label
    batch.labels = LabelColumns(
        ids=[ids[i] for i in labelled],
        values=[bool(y[i]) for i in labelled],  # booleans agree with 0/1 predictions
        ts=ts[labelled] + 30,
        offsets=np.arange(n, n + len(labelled)),
    )
    detector.update(batch)
    points = {
        (q.model_version, q.window_start, q.metric, q.estimated): q for q in detector.metrics()
    }
    assert detector.metrics() == []  # drained
    window = START // 1000 * 1000 + 1000
    sel = [i for i in labelled if window <= ts[i] < window + 1000 and i % 2 == 1]
    yt, yp, pp = y[sel], pred[sel], p[sel]
    got = {m: points[("a", window, m, False)] for m in ("accuracy", "precision", "f1")}
    assert got["accuracy"].value == pytest.approx((yt == yp).mean())
    assert got["accuracy"].n == len(sel)
    assert got["accuracy"].ci_low < got["accuracy"].value < got["accuracy"].ci_high
    assert got["precision"].value == pytest.approx(precision_score(yt, yp))
    assert got["f1"].value == pytest.approx(f1_score(yt, yp))
    a = ("a", window)
    assert points[(*a, "recall", False)].value == pytest.approx(recall_score(yt, yp))
    assert points[(*a, "log_loss", False)].value == pytest.approx(log_loss(yt, pp, labels=[0, 1]))
    assert points[(*a, "brier", False)].value == pytest.approx(brier_score_loss(yt, pp))
    in_window = [i for i in range(n) if window <= ts[i] < window + 1000 and i % 2 == 1]
    assert points[(*a, "coverage", False)].value == pytest.approx(len(sel) / len(in_window))
    assert points[(*a, "label_delay", False)].value == pytest.approx(30)
    assert points[(*a, "accuracy", False)].partition == 3


def test_multiclass_metrics_are_macro_averaged() -> None:
    classes = ["cat", "dog", "eel"]
    rng = np.random.default_rng(9)
    n = 600
    yt = rng.choice(classes, n).tolist()
    yp = [c if rng.random() < 0.7 else rng.choice(classes) for c in yt]
    probs = [{c: (0.8 if c == q else 0.1) for c in classes} for q in yp]
    detector = AccuracyDetector("m", AccuracySettings(window_seconds=1e6))
    ids = [str(i) for i in range(n)]
    batch = ModelBatch(
        model="m",
        source="s",
        partition=0,
        ts=np.full(n, START),
        offsets=np.arange(n),
        ids=ids,
        clients=[None] * n,
        model_versions=[None] * n,
        rows=[{}] * n,
        predictions=list(yp),
        scores=probs,
    )
    batch.labels = LabelColumns(
        ids=ids, values=list(yt), ts=np.full(n, START + 1), offsets=np.arange(n, 2 * n)
    )
    detector.update(batch)
    points = {q.metric: q.value for q in detector.metrics() if not q.estimated}
    assert points["f1"] == pytest.approx(f1_score(yt, yp, average="macro"))
    assert points["precision"] == pytest.approx(precision_score(yt, yp, average="macro"))
    p_true = [pr[t] for pr, t in zip(probs, yt, strict=True)]
    assert points["log_loss"] == pytest.approx(-np.mean(np.log(p_true)))


def test_a_restart_keeps_pending_joins_and_gives_the_same_result() -> None:
    def stream() -> Iterable[ModelBatch]:
        base = accuracy_of_spread(2.0)
        return classification_batches(
            CHANGE_AT + 3000, change_at=CHANGE_AT, flip=0.1 / (2 * base - 1), delay=3000, seed=8
        )

    straight = AccuracyDetector("m")
    expected = run(stream(), straight)
    first = AccuracyDetector("m")
    batches = list(stream())
    got = run(batches[:4], first)
    assert len(first.join.pending) > 2000  # predictions waiting for labels at the restart
    second = AccuracyDetector("m")
    assert second.restore(first.snapshot())
    got += run(batches[4:], second)
    assert [(f.subject, f.ts, f.value) for f in got] == [
        (f.subject, f.ts, f.value) for f in expected
    ]
    assert second.join.counters == straight.join.counters
    assert second.join.counters.expired_unlabelled == 0


def test_margin_keeps_small_drops_quiet() -> None:
    base = accuracy_of_spread(2.0)
    findings = run(
        classification_batches(
            CHANGE_AT + 20_000, change_at=CHANGE_AT, flip=0.01 / (2 * base - 1), seed=30
        ),
        AccuracyDetector("m", AccuracySettings(margin=0.03, warning_drop=0.05)),
    )
    assert findings == []


def test_settings_reject_unordered_thresholds() -> None:
    with pytest.raises(ValueError, match="margin <= warning_drop"):
        AccuracySettings(margin=0.2, warning_drop=0.1)
    assert math.isfinite(AccuracySettings().label_ttl_seconds)


def test_constant_confidence_does_not_break_the_estimate() -> None:
    """Every prediction equally sure (the calibration curve is one point): no crash, and
    the measured test still works."""

    def constant(batches: Iterable[ModelBatch]) -> Iterable[ModelBatch]:
        for b in batches:
            b.scores = [{"0": 0.1, "1": 0.9} for _ in b.scores]
            b.predictions = [1] * len(b.predictions)
            yield b

    detector = AccuracyDetector("m", AccuracySettings(reference_size=1000))
    findings = run(constant(classification_batches(6000, seed=4)), detector)
    assert detector.reference is not None
    assert [f for f in findings if f.subject == "estimated_accuracy"] == []


def test_measured_findings_cite_the_real_topic_of_the_label_that_completed_them() -> None:
    """With Kafka, a detector's state key is ("kafka:<group>", partition) and predictions and
    labels come from two topics whose offsets overlap: a finding citing the state key's name
    would give two different events one evidence key (and the second would be dropped)."""
    base = accuracy_of_spread(2.0)
    flip = 0.10 / (2 * base - 1)
    predictions_seen = labels_seen = 0
    label_offsets: set[int] = set()
    batches = []
    for batch in classification_batches(CHANGE_AT + 4000, change_at=CHANGE_AT, flip=flip):
        batch.source = "kafka:bulwark"
        batch.positions = [
            Position("predictions", 0, predictions_seen + i) for i in range(len(batch))
        ]
        predictions_seen += len(batch)
        if batch.labels is not None:
            n = len(batch.labels.ids)
            offsets = range(labels_seen, labels_seen + n)  # overlaps the predictions' offsets
            batch.labels.offsets = np.array(offsets, dtype=np.int64)
            batch.labels.positions = [Position("labels", 0, o) for o in offsets]
            label_offsets.update(offsets)
            labels_seen += n
        batches.append(batch)

    measured = [f for f in run(batches, AccuracyDetector("m")) if not f.details["estimated"]]

    assert measured, "the drop was not found"
    assert {f.position.source for f in measured} == {"labels"}
    assert all(f.position.offset in label_offsets for f in measured)
