"""Population-level input anomalies: the share of out-of-reference inputs against its rate."""

from __future__ import annotations

import numpy as np

from detectors.base import Kind
from detectors.input_anomaly import InputAnomalyDetector, InputAnomalySettings, InputProfile
from tests.test_query_patterns import FEATURES, make_batch

SETTINGS = InputAnomalySettings(reference_size=2000, block_size=100)


def feed(detector: InputAnomalyDetector, x: np.ndarray, start: int) -> list:
    findings = []
    for i in range(0, len(x), 500):
        chunk = x[i : i + 500]
        ts = 1000.0 + start + i + np.arange(len(chunk), dtype=float)
        findings += detector.update(make_batch(chunk, [None] * len(chunk), ts, start + i))
    return findings


def test_profile_flags_values_outside_reference_ranges_and_unseen_categories() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 4))
    profile = InputProfile({"a": x[:, 0]}, {"kind": np.array(["u", "v"] * 1000, dtype=object)})
    batch = make_batch(np.array([[0.0, 0, 0, 0], [9.0, 0, 0, 0]]), [None, None], np.zeros(2), 0)
    batch.categorical["kind"] = np.array(["u", "never-seen"], dtype=object)
    flags = profile.anomalies(batch)
    assert flags.tolist() == [[False, False], [True, True]]
    encoded = profile.encode(batch)
    assert encoded.shape == (2, profile.dim)
    assert abs(encoded[0, 0]) < 0.1 and encoded[1, 0] > 5  # robust-scaled by median and IQR


def test_a_few_fractional_reference_values_do_not_erase_an_integer_lattice() -> None:
    """A count whose reference holds a few clients' fractional queries (5%) keeps its lattice:
    fractional inputs stay anomalous. A measured feature (prices in cents) has none."""
    rng = np.random.default_rng(1)
    counts = rng.poisson(5, 2000).astype(float)
    counts[:100] = rng.uniform(0, 10, 100)  # early extraction queries, capped in the reference
    prices = np.round(rng.lognormal(3, 1, 2000), 2)
    profile = InputProfile({"a": counts, "b": prices}, {})
    assert profile.integral.tolist() == [True, False]
    queries = np.array([[4.0, 20.5, 0, 0], [4.5, 20.5, 0, 0]])
    batch = make_batch(queries, [None, None], np.zeros(2), 0)
    assert profile.anomalies(batch)[:, 0].tolist() == [False, True]
    counts[:400] = rng.uniform(0, 10, 400)  # a fifth fractional: not a lattice
    assert not InputProfile({"a": counts}, {}).integral[0]


def test_a_mostly_zero_amount_is_no_lattice_and_a_mostly_zero_count_is() -> None:
    """A refund amount, 0 in 90% of rows and fractional otherwise, is no count: as a lattice
    every refund would be out of reference. A pixel that is mostly 0 and whole besides keeps
    its lattice, with a few fractional queries (5%) in its reference too."""
    rng = np.random.default_rng(3)
    refunds = np.where(rng.random(3000) < 0.9, 0.0, rng.lognormal(3, 1, 3000))
    pixels = np.where(rng.random(3000) < 0.9, 0.0, rng.integers(1, 17, 3000).astype(float))
    tainted = pixels.copy()
    tainted[:150] = rng.uniform(0, 16, 150)
    profile = InputProfile({"a": refunds, "b": pixels, "c": tainted}, {})
    assert profile.integral.tolist() == [False, True, True]


def test_the_in_control_rate_is_measured_with_the_lattice_that_monitors() -> None:
    """A count with 10% fractional values, 0.9 of the whole reference whole (a lattice) but
    0.89 of its even half: the rate is measured on the odd half with the full reference's
    lattice, so it counts the fractional values the monitor flags and stationary traffic
    stays quiet (measured with the half's own decision the rate, bound included, came out
    at 0.06 and the same traffic gave 17 findings)."""
    rng = np.random.default_rng(4)

    def counts(n: int, fractional: np.ndarray) -> np.ndarray:
        x = rng.normal(size=(n, len(FEATURES)))
        x[:, 0] = rng.poisson(5, n) + 1.0
        x[fractional, 0] += 0.5
        return x

    first = np.zeros(2000, dtype=bool)
    first[np.arange(0, 2000, 2)[:110]] = True  # even half: 110 of 1,000 fractional
    first[np.arange(1, 2000, 2)[:90]] = True  # odd half: 90
    detector = InputAnomalyDetector("m", SETTINGS)
    assert feed(detector, counts(2000, first), 0) == []
    assert detector.profile is not None and detector.profile.on_lattice("a")
    assert detector.rate > 0.08
    later = counts(20_000, rng.random(20_000) < 0.1)
    assert feed(detector, later, 2000) == []


def test_in_control_traffic_stays_quiet() -> None:
    rng = np.random.default_rng(1)
    detector = InputAnomalyDetector("m", SETTINGS)
    assert feed(detector, rng.normal(size=(40_000, len(FEATURES))), 0) == []
    assert 0.005 < detector.rate < 0.05  # cross-fitted, not biased to zero


def test_a_rise_in_anomalous_inputs_is_reported_once_per_change() -> None:
    rng = np.random.default_rng(2)
    detector = InputAnomalyDetector("m", SETTINGS)
    assert feed(detector, rng.normal(size=(5000, len(FEATURES))), 0) == []
    shifted = rng.normal(size=(3000, len(FEATURES)))
    outliers = rng.random(3000) < 0.15
    shifted[outliers, 1] = rng.uniform(6, 10, outliers.sum())
    findings = feed(detector, shifted, 5000)
    assert findings, "a 15% share of out-of-range inputs must be reported"
    first = findings[0]
    assert first.kind == Kind.INPUT_ANOMALY and first.subject == "*"
    assert first.ts < 1000 + 5000 + 1000  # within the first 1,000 shifted events
    assert 0.08 < first.details["anomalous_share"] < 0.3
    assert next(iter(first.details["share_by_feature"])) == "b"
    assert first.value > first.threshold


def test_the_model_wide_reference_size_and_budget_override_the_settings() -> None:
    detector = InputAnomalyDetector("m", SETTINGS, reference_size=500, false_alarms_per_million=1)
    assert detector.settings.reference_size == 500
    assert detector.settings.block_size == SETTINGS.block_size
    rng = np.random.default_rng(3)
    feed(detector, rng.normal(size=(600, len(FEATURES))), 0)
    assert detector.profile is not None  # learned from 500 events, not 2,000
    stricter = InputAnomalyDetector(
        "m", SETTINGS, reference_size=500, false_alarms_per_million=0.01
    )
    feed(stricter, rng.normal(size=(600, len(FEATURES))), 0)
    assert stricter.cusum.h > detector.cusum.h
