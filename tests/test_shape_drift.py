"""Shape drift: windowed KS tests calibrated from the budget, a bimodal split found while
mean and variance stay put, and a data-only checkpoint."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from detectors.base import Kind
from detectors.numeric_drift import NumericDriftDetector
from detectors.shape_drift import (
    ShapeDriftDetector,
    ShapeDriftSettings,
    ks_distance,
    ks_threshold,
)
from detectors.state_codec import StateError
from tests.drift_streams import batch, chunks, run

REFERENCE = 3000


def stream(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "x": rng.normal(0, 1, n),
        "amount": rng.lognormal(3, 0.8, n),
        "wait": rng.exponential(1, n),
        "age": rng.normal(41, 12, n).round(),
        "t": rng.standard_t(3, n),
    }


def split(values: np.ndarray, rng: np.random.Generator, spread: float = 0.95) -> np.ndarray:
    """Two modes at mean -/+ `spread` std, each a narrowed copy of the feature's own shape:
    mean and variance unchanged (in expectation), shape very different."""
    mean, std = values.mean(), values.std()
    z = (values - mean) / std
    side = rng.choice([-1.0, 1.0], len(values))
    return mean + std * (side * spread + np.sqrt(1 - spread**2) * z)


def test_ks_threshold_holds_its_level() -> None:
    """Windows of 1,000 against references of 3,000, all from one distribution: the share over
    the threshold at alpha = 1% is about 1% (Kolmogorov's limit, conservative with ties)."""
    rng = np.random.default_rng(5)
    threshold = ks_threshold(0.01, REFERENCE, 1000)
    over = [
        ks_distance(np.sort(rng.gamma(2, 1, REFERENCE)), np.sort(rng.gamma(2, 1, 1000))) > threshold
        for _ in range(3000)
    ]
    assert 0.004 < np.mean(over) < 0.015


def test_stationary_stream_of_assorted_shapes_is_quiet() -> None:
    rng = np.random.default_rng(1)
    whole = batch(numeric=stream(rng, 150_000))
    assert run(ShapeDriftDetector("m"), chunks(whole, 5000)) == []


@pytest.mark.parametrize("feature", ["x", "amount", "age"])
def test_bimodal_split_with_unchanged_mean_and_variance_is_found_within_5000_events(
    feature: str,
) -> None:
    rng = np.random.default_rng(2)
    at = 10_000
    columns = stream(rng, 20_000)
    columns[feature][at:] = split(columns[feature][at:], rng)
    whole = batch(numeric=columns)
    findings = run(ShapeDriftDetector("m"), chunks(whole, 2000))
    assert findings and {f.subject for f in findings} == {feature}
    first = findings[0]
    assert first.kind == Kind.FEATURE_DRIFT and first.statistic == "ks_distance"
    assert 0 <= first.position.offset - at <= 5000
    assert first.value > first.threshold and first.effect_size >= 0.05
    assert abs(first.details["standardized_mean_shift"]) < 0.1
    assert "distribution shape changed" in first.title  # neither its mean nor its spread
    if feature == "x":  # normal: its normal scores keep their mean and variance too
        # The mean/spread tests see nothing of it: this is what the shape test is for.
        assert run(NumericDriftDetector("m"), chunks(whole, 2000)) == []


def test_a_window_under_the_ks_floor_is_not_reported() -> None:
    rng = np.random.default_rng(3)
    columns = stream(rng, 20_000)
    columns["x"][10_000:] = split(columns["x"][10_000:], rng)
    whole = batch(numeric=columns)
    settings = ShapeDriftSettings(features={"x": {"min_ks": 0.5}})
    assert run(ShapeDriftDetector("m", settings), chunks(whole, 2000)) == []


def test_snapshot_is_data_and_restore_continues_exactly() -> None:
    rng = np.random.default_rng(4)
    columns = stream(rng, 30_000)
    columns["x"][20_000:] = split(columns["x"][20_000:], rng)
    parts = chunks(batch(numeric=columns), 1500)
    straight = run(ShapeDriftDetector("m"), parts)
    first = ShapeDriftDetector("m")
    resumed = run(first, parts[:7])  # mid-window for both sizes
    data = first.snapshot()
    with pytest.raises(StateError):
        ShapeDriftDetector("m").restore(pickle.dumps(first.__dict__))
    assert not ShapeDriftDetector("m", ShapeDriftSettings(min_ks=0.1)).restore(data)
    clone = ShapeDriftDetector("m")
    assert clone.restore(data)
    resumed += run(clone, parts[7:])
    assert straight and [(f.position, f.value) for f in resumed] == [
        (f.position, f.value) for f in straight
    ]


def test_ks_distance_is_the_largest_gap_between_the_distribution_functions() -> None:
    """Against evaluating both functions at every value either sample takes (ties included)."""
    rng = np.random.default_rng(6)
    for trial in range(100):
        if trial % 2:  # continuous: no ties within a sample
            a = np.sort(rng.normal(0, 1, rng.integers(50, 400)))
            b = np.sort(rng.normal(rng.uniform(-0.5, 0.5), 1, rng.integers(20, 300)))
        else:
            a = np.sort(rng.integers(0, 30, rng.integers(50, 400)).astype(float))
            b = np.sort(rng.integers(0, 30, rng.integers(20, 300)).astype(float) + rng.integers(3))
        points = np.concatenate([a, b])
        gaps = np.searchsorted(a, points, side="right") / len(a) - np.searchsorted(
            b, points, side="right"
        ) / len(b)
        assert ks_distance(a, b) == pytest.approx(np.abs(gaps).max(), abs=1e-12)


def test_a_mean_shift_found_by_the_shape_test_is_titled_by_its_mean() -> None:
    rng = np.random.default_rng(4)
    columns = stream(rng, 12_000)
    columns["x"][6_000:] += 1.0 * np.std(columns["x"][:6_000])
    findings = run(ShapeDriftDetector("m"), chunks(batch(numeric=columns), 2000))
    shifted = [f for f in findings if f.subject == "x"]
    assert shifted and shifted[0].title.startswith("x: mean shifted up by")
