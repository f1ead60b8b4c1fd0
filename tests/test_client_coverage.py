"""Class coverage (`detectors.clients.coverage`) on small streams.

Benign clients each query their own corner of the input space (`tests.test_query_patterns`'s
stream); a natural-data extractor samples rows like the whole population's, at an ordinary
client's rate. When the benign clients themselves sample the whole population, the same
extractor is indistinguishable and must not be flagged for it.
"""

from __future__ import annotations

import zlib

import numpy as np

from detectors.clients.coverage import REGIONS, RegionCoverage, counts_at, labels_of
from detectors.clients.detector import QueryPatternDetector
from detectors.clients.null import STATISTICS, bucket_of
from tests.test_query_patterns import (
    first_by_client,
    population,
    run_mixed,
    whole_population,
)

STAT = STATISTICS.index("class_coverage")


def test_statistic_grows_with_history_for_the_traffics_mix_not_for_a_segment() -> None:
    rng = np.random.default_rng(0)
    coverage = RegionCoverage(86_400.0)
    mix = rng.dirichlet(np.ones(10))
    coverage.observe(rng.choice(10, size=50_000, p=mix), 0.0)
    segment = mix * rng.dirichlet(np.ones(10))
    segment /= segment.sum()

    def value(p: np.ndarray, n: int) -> float:
        counts = np.bincount(rng.choice(10, size=n, p=p), minlength=REGIONS)
        return float(coverage.statistic(counts[None])[0])

    # Like the traffic: divergence ~ (classes - 1) / (2 n), so minus its log grows like log n.
    assert value(mix, 2000) - value(mix, 200) > 1.0
    assert abs(value(segment, 2000) - value(segment, 200)) < 0.5  # its own mix: a level
    assert value(mix, 500) > value(segment, 500) + 1.0
    assert np.isnan(coverage.statistic(np.zeros((1, REGIONS)))[0])  # no queries, no value


def test_the_traffics_mix_decays_with_event_time() -> None:
    coverage = RegionCoverage(100.0)
    coverage.observe(np.zeros(10, dtype=np.int64), 0.0)
    coverage.observe(np.ones(10, dtype=np.int64), 100.0)
    assert coverage.traffic[0] == np.float64(10 * np.exp(-1.0))  # one time constant later
    assert coverage.traffic[1] == 10.0


def test_counts_at_each_look_match_counting_by_hand() -> None:
    rng = np.random.default_rng(1)
    regions = rng.integers(REGIONS, size=40)
    stored = rng.integers(5, size=(3, REGIONS))
    start, stop = np.array([0, 0, 25]), np.array([10, 20, 40])
    got = counts_at(stored, regions, start, stop)
    for i in range(3):
        want = stored[i] + np.bincount(regions[start[i] : stop[i]], minlength=REGIONS)
        assert (got[i] == want).all()
    # Per-feature labels (the coverage histograms: looks x features x bins).
    bins = rng.integers(8, size=(40, 3))
    stored = rng.integers(5, size=(3, 3, 8))
    got = counts_at(stored, bins, start, stop)
    for i in range(3):
        for f in range(3):
            want = stored[i, f] + np.bincount(bins[start[i] : stop[i], f], minlength=8)
            assert (got[i, f] == want).all()


def test_the_class_comes_from_the_prediction_else_the_top_score() -> None:
    scores = [{"a": 0.2, "b": 0.8}, None]
    assert labels_of(["x", "y"], scores, 2) == ["x", "y"]
    assert labels_of([], scores, 2) == ["b", None]
    assert labels_of([None, None], [], 2) == [None, None]
    # A stable slot per class (a checkpoint resumed in another process keeps its counts).
    slots = RegionCoverage(1.0).regions(["b", "a", "b", None])
    assert slots[0] == slots[2] == zlib.crc32(b"b") % REGIONS


def _judged(detector: QueryPatternDetector) -> tuple[np.ndarray, np.ndarray, int]:
    """Every client's class_coverage now and its p-value against the null, and the
    thief's row."""
    names = list(detector.clients)
    states = list(detector.clients.values())
    stats = detector._statistics(states)
    counts = np.array([state.count for state in states])
    buckets = np.repeat(bucket_of(counts, detector.edges)[:, None], stats.shape[1], axis=1)
    p = detector.null.p_values(stats, buckets)
    return stats[:, STAT], p[:, STAT], names.index("thief")


def test_a_natural_data_extractor_among_segment_clients_stands_out_in_class_coverage() -> None:
    """Benign clients each in their own corner (their own class mix); the extractor reaches
    every class as the whole traffic does, and its class_coverage leaves every benign
    client's behind. (Not flagged here: 40 peers whose corners overlap give a tail too wide
    for alpha; with purer segments it is, `tests/test_query_patterns.py`.)"""
    detector, stream = population(seed=31, spread=3.0)
    rows = whole_population(stream, 300)  # at a benign client's rate (5 of 200 per batch)
    run_mixed(detector, stream, rows, ["thief"] * 300, per_batch=5)
    values, p, thief = _judged(detector)
    benign = np.delete(np.arange(len(values)), thief)
    assert values[thief] > values[benign].max() + 1.0
    assert p[thief] < 0.01 and p[thief] < p[benign].min()


def test_among_clients_that_sample_the_whole_population_it_does_not_stand_out() -> None:
    """What the statistic cannot see: every benign key samples the whole population too."""
    detector, stream = population(seed=32, spread=0.0)  # every client: one population
    rows = whole_population(stream, 300)
    flagged = first_by_client(run_mixed(detector, stream, rows, ["thief"] * 300, per_batch=5))
    assert "thief" not in flagged
    _, p, thief = _judged(detector)
    assert p[thief] > 0.05
