"""The drift benchmark's own 13-feature model and injections (bench/drift.py), on a few
streams: what the bench measures at scale must hold here too. A correlation flip and a bimodal
split keep every mean and variance; each must be found within 5,000 events, by the right
detector, and a stationary stream of the same model must raise nothing."""

from __future__ import annotations

import numpy as np
import pytest

from bench.drift import (
    CONTINUOUS,
    PARTNER,
    REFERENCE,
    TARGET_DELAY,
    _score,
    bimodal_split,
    correlation_flip,
    run_bulwark,
    stationary,
)
from detectors.base import Kind
from detectors.registry import DetectorSettings

AT = REFERENCE + 4000  # the drift's first event


def _drifted(seed: int, inject, feature: str) -> list:
    rng = np.random.default_rng(seed)
    s = stationary(rng, AT + TARGET_DELAY + 1000)
    inject(s, feature, AT)
    _score(s)  # the model's score follows its inputs, as in the bench
    findings, _ = run_bulwark(s, DetectorSettings())
    return findings


@pytest.mark.parametrize("feature", list(PARTNER))
def test_correlation_flip_with_unchanged_marginals_is_found_within_5000_events(
    feature: str,
) -> None:
    findings = _drifted(11, correlation_flip(0.8), feature)
    joint = [f for f in findings if f.kind == Kind.MULTIVARIATE_DRIFT]
    assert joint, "the flip was not found"
    first = min(int(f.position.offset) for f in joint)
    assert 0 <= first - AT <= TARGET_DELAY
    named = [
        c["feature"] for c in min(joint, key=lambda f: f.position.offset).details["contributors"]
    ]
    assert set(named[:2]) == {feature, PARTNER[feature]}
    # Every marginal is unchanged: no per-feature test may claim it.
    assert [f for f in findings if f.kind in (Kind.FEATURE_DRIFT, Kind.DATA_QUALITY)] == []


@pytest.mark.parametrize("feature", CONTINUOUS)
def test_bimodal_split_with_unchanged_mean_and_variance_is_found_within_5000_events(
    feature: str,
) -> None:
    findings = _drifted(12, bimodal_split(0.95), feature)
    per_feature = [f for f in findings if f.kind in (Kind.FEATURE_DRIFT, Kind.DATA_QUALITY)]
    assert {f.subject for f in per_feature} == {feature}
    first = min(int(f.position.offset) for f in per_feature)
    assert 0 <= first - AT <= TARGET_DELAY
    assert not [f for f in findings if int(f.position.offset) < AT]


def test_stationary_stream_of_the_13_feature_model_raises_nothing() -> None:
    """A tenth of the bench's million events (the bench runs the whole million)."""
    s = stationary(np.random.default_rng(20260102), 100_000)
    findings, _ = run_bulwark(s, DetectorSettings())
    assert findings == []
