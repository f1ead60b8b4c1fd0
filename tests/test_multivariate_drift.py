"""Multivariate drift: PCA reconstruction error, calibrated on held-out reference events,
finds a correlation flip no marginal shows and names the features involved."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy.special import ndtri

from detectors.base import Kind
from detectors.multivariate_drift import (
    Columns,
    MultivariateDriftDetector,
    MultivariateDriftSettings,
    ReconstructionMonitor,
)
from detectors.registry import DetectorSettings, build_detectors
from detectors.state_codec import StateError
from tests.drift_streams import batch, choice, chunks, run

REFERENCE = 3000


def correlated(rng: np.random.Generator, n: int, flip_at: int | None = None) -> dict:
    """Six numeric features (x and y correlated +0.8, and -0.8 from `flip_at`: each marginal
    unchanged) and two categorical ones."""
    x = rng.normal(0, 1, n)
    sign = np.ones(n)
    if flip_at is not None:
        sign[flip_at:] = -1.0
    y = sign * 0.8 * x + 0.6 * rng.normal(0, 1, n)
    return {
        "numeric": {
            "x": x,
            "y": 10 + 3 * y,
            "amount": rng.lognormal(3, 0.8, n),
            "wait": rng.exponential(1, n),
            "t": rng.standard_t(3, n),
            "age": rng.normal(41, 12, n).round(),
        },
        "categorical": {
            "country": choice(rng, ["DE", "FR", "NL", "ES"], [0.4, 0.3, 0.2, 0.1], n),
            "member": choice(rng, [True, False, None], [0.3, 0.65, 0.05], n),
        },
    }


def test_window_statistic_is_standard_normal_without_drift() -> None:
    """The first window's z over many independent references and streams: the held-out half
    of the reference makes it N(0, 1), the in-sample bias of PCA included."""
    zs = []
    settings = MultivariateDriftSettings()
    for seed in range(300):
        rng = np.random.default_rng(seed)
        whole = batch(**correlated(rng, REFERENCE + 1000))
        types = {n: "numeric" for n in whole.numeric} | {
            n: "categorical" for n in whole.categorical
        }
        monitor = ReconstructionMonitor.fit(
            Columns.of(whole.slice(0, REFERENCE)), types, settings, 1e-6
        )
        monitor.feed(whole.slice(REFERENCE, REFERENCE + 999))
        zs.append(monitor.z())
    zs = np.array(zs)
    assert abs(zs.mean()) < 0.2 and 0.85 < zs.std() < 1.15
    assert np.mean(np.abs(zs) > ndtri(0.995)) < 0.03  # about 1% beyond +-2.58


def test_stationary_stream_is_quiet() -> None:
    rng = np.random.default_rng(1)
    whole = batch(**correlated(rng, 200_000))
    assert run(MultivariateDriftDetector("m"), chunks(whole, 5000)) == []


def test_correlation_flip_with_unchanged_marginals_is_found_and_explained() -> None:
    at = 10_000
    rng = np.random.default_rng(2)
    whole = batch(**correlated(rng, 20_000, flip_at=at))
    findings = [f for d in build_detectors("m", DetectorSettings()) for f in run(d, chunks(whole))]
    joint = [f for f in findings if f.kind == Kind.MULTIVARIATE_DRIFT]
    assert joint and {f.subject for f in joint} == {"*"}
    first = min(joint, key=lambda f: f.position.offset)
    assert 0 <= first.position.offset - at <= 5000
    assert first.value > first.threshold and first.effect_size > 0.05
    named = [c["feature"] for c in first.details["contributors"]]
    assert set(named[:2]) == {"x", "y"}
    assert "x" in first.title and "y" in first.title
    # No per-feature test sees it: every marginal is unchanged.
    assert not [f for f in findings if f.kind == Kind.FEATURE_DRIFT]


def test_floor_on_the_relative_change() -> None:
    rng = np.random.default_rng(3)
    whole = batch(**correlated(rng, 20_000, flip_at=10_000))
    settings = MultivariateDriftSettings(min_relative_change=5.0)
    assert run(MultivariateDriftDetector("m", settings), chunks(whole)) == []


def test_snapshot_is_data_and_restore_continues_exactly() -> None:
    rng = np.random.default_rng(4)
    parts = chunks(batch(**correlated(rng, 20_000, flip_at=12_000)), 1500)
    straight = run(MultivariateDriftDetector("m"), parts)
    first = MultivariateDriftDetector("m")
    resumed = run(first, parts[:5])  # mid-window
    data = first.snapshot()
    with pytest.raises(StateError):
        MultivariateDriftDetector("m").restore(pickle.dumps(first.__dict__))
    assert not MultivariateDriftDetector("m", MultivariateDriftSettings(window=500)).restore(data)
    clone = MultivariateDriftDetector("m")
    assert clone.restore(data)
    resumed += run(clone, parts[5:])
    assert straight and [(f.position, f.value) for f in resumed] == [
        (f.position, f.value) for f in straight
    ]


def test_a_feature_with_almost_no_reference_values_is_left_out() -> None:
    rng = np.random.default_rng(5)
    columns = correlated(rng, 6000)
    rare = np.full(6000, np.nan)
    rare[1::1000] = 1.0  # three reference values, none in the half the encoder is fitted on
    columns["numeric"]["rare"] = rare
    detector = MultivariateDriftDetector("m")
    assert run(detector, chunks(batch(**columns))) == []
    assert detector.reconstruction is not None
    assert "rare" not in detector.reconstruction.encoder.names
