"""Numeric drift: quiet on stationary data, fast and specific on a real shift."""

from __future__ import annotations

import numpy as np
import pytest

from detectors import state_codec
from detectors.numeric_drift import (
    Floors,
    NumericDriftDetector,
    NumericDriftSettings,
    NumericMonitor,
    numeric_arl0,
)
from detectors.prediction_drift import PredictionDriftDetector
from detectors.reference import is_continuous
from detectors.registry import DetectorSettings
from detectors.stats.scores import NormalScores
from streams.batch import ModelBatch
from tests.synthetic import numeric_columns


def batch_of(columns: dict[str, np.ndarray], start: int) -> ModelBatch:
    n = len(next(iter(columns.values())))
    return ModelBatch(
        model="m",
        source="s",
        partition=0,
        ts=np.arange(start, start + n, dtype=float),
        offsets=np.arange(start, start + n),
        ids=[None] * n,
        clients=[None] * n,
        model_versions=[None] * n,
        rows=[],
        numeric=columns,
    )


def run(
    detector: NumericDriftDetector,
    n: int,
    seed: int,
    features: int = 8,
    change=None,
    batch: int = 2500,
) -> list:
    """Feeds n events; `change(columns, start)` may alter each batch's columns in place."""
    rng = np.random.default_rng(seed)
    findings = []
    for start in range(0, n, batch):
        columns = numeric_columns(batch, rng, features)
        if change is not None:
            change(columns, start)
        findings += detector.update(batch_of(columns, start))
    return findings


def test_long_stationary_stream_of_skewed_and_heavy_tailed_features_is_quiet() -> None:
    assert run(NumericDriftDetector("m"), n=400_000, seed=1) == []


@pytest.mark.parametrize(("size", "max_delay"), [(0.5, 1000), (1.0, 400), (-0.5, 1000)])
def test_mean_shift_is_found_fast_on_that_feature_only(size: float, max_delay: int) -> None:
    at = 20_000

    std = float(np.std(np.random.default_rng(0).lognormal(2, 0.7, 1_000_000)))

    def shift(columns, start):
        if start >= at:
            columns["x1_lognormal"] += size * std

    findings = run(NumericDriftDetector("m"), n=30_000, seed=2, change=shift)
    assert findings, "a real shift must be detected"
    assert {f.subject for f in findings} == {"x1_lognormal"}
    first = findings[0]
    assert first.statistic == "cusum_mean_shift"
    assert 0 <= first.ts - at <= max_delay
    assert np.sign(first.effect_size) == np.sign(size)
    assert first.value > first.threshold
    details = first.details
    assert {"reference", "current", "events_seen", "block_size"} <= details.keys()


def test_spread_change_is_found() -> None:
    def widen(columns, start):
        if start >= 20_000:
            c = columns["x0_normal"]
            columns["x0_normal"] = 50 + (c - 50) * 1.6

    findings = run(NumericDriftDetector("m"), n=30_000, seed=3, change=widen)
    assert {(f.subject, f.statistic) for f in findings} >= {("x0_normal", "cusum_scale_change")}
    assert {f.subject for f in findings} == {"x0_normal"}


def zero_inflated(rng: np.random.Generator, n: int, zeros: float, nonzero: float = 1.0) -> dict:
    """Two features that are mostly 0: a count (1 to 16 otherwise) and an amount (log-normal
    otherwise); `nonzero` scales how often they are not 0."""
    share = 1 - (1 - zeros) * nonzero
    count = np.where(rng.uniform(size=n) < share, 0.0, rng.integers(1, 17, n).astype(float))
    amount = np.where(rng.uniform(size=n) < share, 0.0, np.round(rng.lognormal(size=n), 3))
    return {"count": count, "amount": amount}


@pytest.mark.parametrize("zeros", [0.9, 0.95])
def test_a_stationary_feature_that_is_mostly_zero_is_quiet(zeros: float) -> None:
    """Most values equal: with mid-rank scores most blocks had one score and a variance of 0,
    which the spread test took for a spread narrowed to nothing on every stationary stream
    (and the standardised gap scores of the amount's new values for a widened one). With
    ties broken at random, quiet; a real change of how often they are not 0 is still found."""
    rng = np.random.default_rng(11)
    detector = NumericDriftDetector("m", reference_size=3000)
    detector.update(batch_of(zero_inflated(rng, 3000, zeros), 0))
    assert set(detector.monitors) == {"count", "amount"}  # ranked, not counted
    quiet = []
    for start in range(3000, 63_000, 5000):
        quiet += detector.update(batch_of(zero_inflated(rng, 5000, zeros), start))
    assert quiet == []
    changed = []
    for start in range(63_000, 73_000, 5000):
        changed += detector.update(batch_of(zero_inflated(rng, 5000, zeros, 3.0), start))
    assert {f.subject for f in changed} == {"count", "amount"}


def test_normal_scores_with_random_ties_are_standard_normal_and_do_not_depend_on_batching() -> None:
    rng = np.random.default_rng(12)
    reference = zero_inflated(rng, 3000, 0.95)["amount"]
    stream = zero_inflated(rng, 100_000, 0.95)["amount"]
    scores = NormalScores(reference)
    randomized = scores.randomized(stream, 0)
    assert abs(randomized.mean()) < 0.02 and abs(randomized.var() - 1) < 0.03
    blocks = randomized.reshape(-1, 50)
    assert abs(blocks.var(axis=1, ddof=1).mean() - 1) < 0.03  # what the spread test sees
    midrank = scores(stream).reshape(-1, 50).var(axis=1, ddof=1)
    assert np.mean(midrank < 1e-9) > 0.05  # blocks of one score, variance 0
    pieces = [scores.randomized(stream[i : i + 777], i) for i in range(0, len(stream), 777)]
    assert np.array_equal(np.concatenate(pieces), randomized)


def test_a_feature_almost_always_one_value_is_counted_not_ranked() -> None:
    """Fewer than 100 reference values besides the one that holds most of it: their mass is
    known too roughly for the spread test; categorical drift's two-sample test takes it."""
    rng = np.random.default_rng(13)
    assert is_continuous(zero_inflated(rng, 3000, 0.9)["count"])  # 300 others
    assert not is_continuous(zero_inflated(rng, 3000, 0.99)["count"])  # about 30
    assert is_continuous(rng.normal(size=60))  # a small continuous sample stays ranked
    assert not is_continuous(rng.integers(0, 5, 1000).astype(float))  # a code


def test_shift_below_the_practical_floor_is_not_reported() -> None:
    settings = NumericDriftSettings(min_effect_size=0.4)

    def nudge(columns, start):
        if start >= 10_000:
            columns["x0_normal"] += 0.2 * 10  # 0.2 std, real but below the 0.4 floor

    assert run(NumericDriftDetector("m", settings), n=150_000, seed=4, change=nudge) == []


def test_snapshot_restore_continues_exactly() -> None:
    def shift(columns, start):
        if start >= 25_000:
            columns["x0_normal"] += 8

    original = NumericDriftDetector("m")
    before = run(original, n=20_000, seed=5)
    clone = NumericDriftDetector("m")
    assert clone.restore(original.snapshot())
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    for start in range(20_000, 40_000, 2500):
        a, b = numeric_columns(2500, rng_a, 8), numeric_columns(2500, rng_b, 8)
        shift(a, start)
        shift(b, start)
        fa, fb = original.update(batch_of(a, start)), clone.update(batch_of(b, start))
        assert [(f.subject, f.ts, f.value) for f in fa] == [(f.subject, f.ts, f.value) for f in fb]
        before += fa
    assert before  # the shift after the restore point was seen by both


def test_per_feature_sensitivity_override() -> None:
    settings = NumericDriftSettings(features={"x0_normal": {"min_effect_size": 5.0}})

    def shift(columns, start):
        if start >= 10_000:
            columns["x0_normal"] += 20  # 2 std: reported unless the feature's floor forbids

    assert run(NumericDriftDetector("m", settings), n=20_000, seed=6, change=shift) == []
    assert run(NumericDriftDetector("m"), n=20_000, seed=6, change=shift) != []


def _shift_found(seed: int, drift, statistic: str, sign: float) -> bool:
    """Whether a monitor set up as the default detector's for an 8-feature model reports
    `drift` (applied to 30,000 values after 2,000 stationary ones), in the right direction."""
    rng = np.random.default_rng(seed)
    floors = Floors(0.2, 0.2, 1.0)
    arl0 = numeric_arl0(50, 8, DetectorSettings().budget_of("numeric_drift"))
    monitor = NumericMonitor(rng.normal(0, 1, 3000), 50, 0.25, arl0, floors)
    stream = np.concatenate([rng.normal(0, 1, 2000), drift(rng.normal(0, 1, 30_000))])
    for chunk in np.array_split(stream, 16):
        for alarm in monitor.feed(chunk):
            verdict = monitor.judge("x", alarm, floors)
            if verdict and verdict.statistic == statistic and verdict.effect_size * sign > 0:
                return True
    return False


@pytest.mark.parametrize(
    ("drift", "statistic", "sign"),
    [
        (lambda x: 0.8 * x, "cusum_scale_change", -1.0),
        (lambda x: x + 0.25, "cusum_mean_shift", 1.0),
    ],
    ids=["std x0.8", "mean +0.25 std"],
)
def test_a_shift_first_measured_under_the_floor_is_still_reported(drift, statistic, sign) -> None:
    """Both changes are above their floors (log 0.8 = -0.22; 0.25 std) but an alarm's first
    few blocks often measure them under it; the monitor must keep watching, not drop them."""
    missed = [s for s in range(40) if not _shift_found(s, drift, statistic, sign)]
    assert missed == []


def test_an_alarm_under_the_floor_is_watched_until_the_effect_since_the_change_clears_it() -> None:
    floors = Floors(0.2, 0.2, 1.0)
    watched = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        monitor = NumericMonitor(rng.normal(0, 1, 3000), 50, 0.25, 1e5, floors)
        alarms = monitor.feed(0.8 * rng.normal(0, 1, 20_000))
        verdicts = [monitor.judge("x", a, floors) for a in alarms]
        assert verdicts[-1] is not None and verdicts[-1].statistic == "cusum_scale_change"
        if verdicts[0] is None:  # the alarm measured the effect under the floor
            watched += 1
            first, last = alarms[0], alarms[-1]
            assert last.blocks_watched > 0
            # judged on every block since the change, not on the alarm's few
            assert last.blocks_since_change == first.blocks_since_change + last.blocks_watched
            assert last.window.count == last.blocks_since_change * 50
            assert verdicts[-1].details["blocks_watched_after_alarm"] == last.blocks_watched
        assert "spread" not in monitor.watching  # reported: nothing left to watch
    assert watched >= 2  # seeds 0 and 9


@pytest.mark.parametrize("detector", [NumericDriftDetector, PredictionDriftDetector])
def test_a_checkpoint_of_monitors_before_watching_is_not_resumed(detector) -> None:
    """Monitors checkpointed before alarms under the floor were watched lack that state: the
    detector starts again (the pipeline rebuilds it from the reference) instead of failing."""
    original = detector("m")
    run(original, n=5000, seed=12)
    envelope = state_codec.decode(original.snapshot())
    assert detector("m").restore(state_codec.encode(envelope))
    del envelope["configuration"]["monitor_layout"]  # as written before
    assert not detector("m").restore(state_codec.encode(envelope))
