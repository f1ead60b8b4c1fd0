"""The population null (`detectors.clients.null`) on small populations.

The cumulative statistics (coverage, class coverage) grow with history, so each history
bucket's null also takes the clients with more history: a client that runs ahead of its peers
(a natural-data extractor at an ordinary rate, looked at when few clients have its history)
is judged against those with more, and a benign population is not flagged by it.
"""

from __future__ import annotations

import numpy as np

from detectors.clients.coverage import REGIONS, RegionCoverage
from detectors.clients.null import (
    STATISTICS,
    PopulationNull,
    at_least_this_history,
    bucket_of,
    history_edges,
    tail_p,
    tail_parameters,
)

CLASS = STATISTICS.index("region_coverage")
RING = STATISTICS.index("knn_distance")
DAY = 86_400.0


def test_voices_of_cumulative_statistics_come_from_more_history_only() -> None:
    buckets, stats = 4, len(STATISTICS)
    values = np.full((3, buckets, stats), np.nan)
    fresh = np.zeros((3, buckets, stats), dtype=bool)
    values[0, 1], fresh[0, 1] = 1.0, True  # client 0: fresh in bucket 1 only
    values[1, 3], fresh[1, 3] = 3.0, True  # client 1: fresh in bucket 3
    values[1, 0] = 9.0  # ... and stale in bucket 0
    values[2, 0], fresh[2, 0] = 2.0, True  # client 2: bucket 0 only
    voices = at_least_this_history(values, fresh)
    column = [STATISTICS.index(name) for name in ("coverage", "region_coverage")]
    assert voices.shape == (3, buckets, len(column))
    # Client 0 speaks for buckets 0-1 (its value at 1), not for the larger ones.
    assert voices[0, :, 1].tolist()[:2] == [1.0, 1.0]
    assert np.isnan(voices[0, 2:, 1]).all()
    # Client 1's stale value in bucket 0 is not used: its fresh value at 3 is.
    assert voices[1, :, 1].tolist() == [3.0, 3.0, 3.0, 3.0]
    # Client 2 never reached bucket 1: no voice there (less history is not conservative).
    assert voices[2, 0, 1] == 2.0 and np.isnan(voices[2, 1:, 1]).all()


def _population(
    rng: np.random.Generator, coverage: RegionCoverage, mix: np.ndarray, n: int
) -> float:
    """region_coverage of a benign key with its own segment (a Dirichlet mix around the
    traffic's) after n queries."""
    own = rng.dirichlet(mix * len(mix))
    counts = np.bincount(rng.choice(len(mix), size=n, p=own), minlength=REGIONS)
    return float(coverage.statistic(counts[None])[0])


def test_a_sampler_ahead_of_its_peers_is_judged_against_more_history() -> None:
    rng = np.random.default_rng(3)
    edges = history_edges(25, 256)
    coverage = RegionCoverage(DAY)
    mix = rng.dirichlet(np.full(10, 5.0))
    coverage.observe(rng.choice(10, size=100_000, p=mix), 0.0)
    null = PopulationNull(edges, window=DAY, min_clients=12, ring=256)
    clients = 150
    null.reserve(clients)
    # Benign keys, each with its own segment, all with 1,600 to 3,200 queries seen: nobody at
    # 400 right now (their looks there are older than the window).
    for slot in range(clients):
        n = int(rng.integers(1600, 3200))
        value = _population(rng, coverage, mix, n)
        stats = np.full((1, len(STATISTICS)), np.nan)
        stats[0, CLASS], stats[0, RING] = value, -1.0
        bucket = np.full((1, len(STATISTICS)), bucket_of(np.array([n]), edges)[0])
        null.record(np.array([slot]), bucket, stats, np.array([DAY]))
    null.refresh(DAY + 60.0, clients)
    at = int(bucket_of(np.array([400]), edges)[0])
    # Class coverage at 400 has a population: every key with more history.
    assert null.clients[at, CLASS] == clients
    assert null.baseline(at, CLASS)["source"] == "population"
    # A ring statistic is not taken from longer histories this way (its own fallback).
    assert null.source[at, RING] != 1
    # A sampler of the whole traffic at 400 queries: far in the tail.
    counts = np.bincount(rng.choice(10, size=400, p=mix), minlength=REGIONS)
    sampler = float(coverage.statistic(counts[None])[0])
    stats = np.full((1, len(STATISTICS)), np.nan)
    stats[0, CLASS] = sampler
    p_sampler = null.p_values(stats, np.full((1, len(STATISTICS)), at))[0, CLASS]
    # Benign keys at 400 (fresh ones, drawn like the rest): seldom in that tail.
    benign = np.full((2000, len(STATISTICS)), np.nan)
    benign[:, CLASS] = [_population(rng, coverage, mix, 400) for _ in range(2000)]
    p_benign = null.p_values(benign, np.full(benign.shape, at))[:, CLASS]
    assert p_sampler < 1e-3
    assert np.mean(p_benign <= p_sampler) < 1e-3
    assert np.mean(p_benign <= 0.01) <= 0.01


def test_the_tail_is_not_widened_by_two_extreme_voices() -> None:
    """The judged client's own earlier voice in its bucket and one other attacker's are
    trimmed: the tail's scale is about the benign pool's alone."""
    rng = np.random.default_rng(7)
    benign = rng.exponential(0.4, size=(120, 1))
    floors = np.array([0.01])
    _, alone = tail_parameters(benign, floors)
    _, with_two = tail_parameters(np.vstack([benign, [[9.0], [8.0]]]), floors)
    assert with_two[0] < 1.4 * alone[0]  # (the benign pool's own top two come back in)
    _, with_three = tail_parameters(np.vstack([benign, [[9.0], [8.0], [7.0]]]), floors)
    assert with_three[0] > 2 * alone[0]  # more than two attackers' voices: a wider tail


def test_a_partial_ring_share_is_judged_against_every_client_at_its_noise() -> None:
    """A share at 40 queries is noisier than at a full ring: the full-ring clients speak for
    the 40-query bucket with their deviations widened (sqrt(256 / 40)), so new benign clients
    are not flagged by that noise, while the bucket's three own voices alone would say
    nothing, and a share far above every client's still is."""
    rng = np.random.default_rng(5)
    edges = history_edges(20, 256)
    null = PopulationNull(edges, window=DAY, min_clients=12, ring=256)
    ood = STATISTICS.index("ood_share")
    old, new = 150, 3
    null.reserve(old + new)
    full, at = (int(b) for b in bucket_of(np.array([256, 40]), edges))

    def record(slot: int, bucket: int, value: float) -> None:
        stats = np.full((1, len(STATISTICS)), np.nan)
        stats[0, ood] = value
        null.record(np.array([slot]), np.full(stats.shape, bucket), stats, np.array([DAY]))

    def rates(n: int) -> np.ndarray:  # each client's own rate of out-of-reference queries
        return rng.beta(1.0, 30.0, size=n)

    for slot, rate in enumerate(rates(old)):
        record(slot, full, rng.binomial(256, rate) / 256)
    for slot, rate in enumerate(rates(new), start=old):
        record(slot, at, rng.binomial(40, rate) / 40)
    null.refresh(DAY + 60.0, old + new)
    assert null.clients[at, ood] == old + new
    assert null.baseline(at, ood)["source"] == "population"

    def p_values(shares: np.ndarray) -> np.ndarray:
        stats = np.full((len(shares), len(STATISTICS)), np.nan)
        stats[:, ood] = shares
        return null.p_values(stats, np.full(stats.shape, at))[:, ood]

    benign = rng.binomial(40, rates(50_000)) / 40
    p_benign = p_values(benign)
    assert np.mean(p_benign <= 0.01) <= 0.01
    assert np.mean(p_benign <= 1e-3) <= 1e-3
    # The full ring's clients as they are would have flagged new benign clients by their
    # noise alone (the premise of the widening).
    u, b = tail_parameters(null.values[:old, full, [ood]], np.array([0.02]))
    assert np.mean(tail_p(benign, u[0], b[0]) <= 1e-3) > 1e-3
    assert p_values(np.array([0.9]))[0] < 1e-4
