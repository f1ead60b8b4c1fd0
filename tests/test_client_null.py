"""The population null (`detectors.clients.null`) on small populations.

Each history bucket's null of a cumulative statistic also takes other clients' voices, from
the side where they are conservative: `coverage` from clients with more history, the
debiased `region_coverage` from clients with less. A client that runs ahead of its peers (a
natural-data extractor at an ordinary rate) is judged against those behind it, and a benign
population is not flagged by it.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from detectors.clients.coverage import REGIONS, RegionCoverage
from detectors.clients.detector import STRADDLE_RATE
from detectors.clients.null import (
    FLOORS,
    REGION,
    REGION_REACH,
    STATISTICS,
    PopulationNull,
    bucket_of,
    cumulative_voices,
    history_edges,
    tail_p,
    tail_parameters,
)
from detectors.clients.spending import WEIGHTS, Spending
from detectors.clients.statistics import chernoff_tail

CLASS = STATISTICS.index("region_coverage")
RING = STATISTICS.index("knn_distance")
DAY = 86_400.0


def test_coverage_speaks_from_more_history_region_coverage_from_less() -> None:
    buckets, stats = 7, len(STATISTICS)
    values = np.full((3, buckets, stats), np.nan)
    fresh = np.zeros((3, buckets, stats), dtype=bool)
    values[0, 1], fresh[0, 1] = 1.0, True  # client 0: fresh in bucket 1 only
    values[1, 3], fresh[1, 3] = 3.0, True  # client 1: fresh in bucket 3
    values[1, 0] = 9.0  # ... and stale in bucket 0
    values[2, 0], fresh[2, 0] = 2.0, True  # client 2: bucket 0 only
    voices = cumulative_voices(values, fresh, history_edges(25, 256)[:buckets], 1)
    assert voices.shape == (3, buckets, 2)
    coverage, region = 0, 1
    # coverage: client 0 speaks for buckets 0-1 (its value at 1), not for the larger ones.
    assert voices[0, :2, coverage].tolist() == [1.0, 1.0]
    assert np.isnan(voices[0, 2:, coverage]).all()
    # ... client 1's stale value in bucket 0 is not used: its fresh value at 3 is.
    assert voices[1, :4, coverage].tolist() == [3.0] * 4
    assert voices[2, 0, coverage] == 2.0 and np.isnan(voices[2, 1:, coverage]).all()
    # region_coverage: from its own bucket up to 4 buckets above (4x the queries); below,
    # only where a bucket has too few such voices (here: none, in bucket 0 of client 0).
    assert voices[0, 1:6, region].tolist() == [1.0] * 5 and np.isnan(voices[0, 6, region])
    assert np.isnan(voices[1, :3, region]).all() and voices[1, 3:, region].tolist() == [3.0] * 4
    assert voices[2, :5, region].tolist() == [2.0] * 5
    assert np.isnan(voices[0, 0, region])  # bucket 0 has client 2's voice: enough at 1


def test_a_client_behind_its_peers_gets_their_region_voices_widened() -> None:
    """Too few region_coverage voices at or below a bucket (a newcomer among long-lived
    keys): the others' values one bucket up come in, their deviation from that bucket's
    median widened by (largest queries there / smallest here)."""
    edges = history_edges(25, 256)
    buckets, stats = len(edges), len(STATISTICS)
    values = np.full((3, buckets, stats), np.nan)
    fresh = np.zeros((3, buckets, stats), dtype=bool)
    up = int(bucket_of(np.array([1600]), edges)[0])
    for row, value in enumerate([2.0, 3.0, 4.0]):
        values[row, up], fresh[row, up] = value, True
    at = up - 1
    voices = cumulative_voices(values, fresh, edges, 12)[:, :, 1]
    factor = edges[up + 1] / edges[at]
    assert np.allclose(voices[:, at], [3.0 - factor, 3.0, 3.0 + factor])
    assert np.allclose(voices[:, up], [2.0, 3.0, 4.0])  # its own bucket: as they are
    # With enough voices at or below it (three clients one bucket down), none from above.
    values = np.concatenate([values, np.full((3, buckets, stats), np.nan)])
    fresh = np.concatenate([fresh, np.zeros((3, buckets, stats), dtype=bool)])
    values[3:, at - 1], fresh[3:, at - 1] = 1.0, True
    voices = cumulative_voices(values, fresh, edges, 3)[:, at, 1]
    assert np.isnan(voices[:3]).all() and voices[3:].tolist() == [1.0] * 3


def _traffic(
    rng: np.random.Generator, slots: int = 10, concentration: float = 5.0
) -> tuple[RegionCoverage, np.ndarray]:
    """A traffic of 100,000 queries over `slots` class slots in a random mix (Dirichlet with
    `concentration` per slot), observed; and that mix."""
    coverage = RegionCoverage(DAY)
    mix = rng.dirichlet(np.full(slots, concentration))
    coverage.observe(rng.choice(slots, size=100_000, p=mix), 0.0)
    return coverage, mix


def _population(
    rng: np.random.Generator, coverage: RegionCoverage, mix: np.ndarray, n: int
) -> float:
    """region_coverage of a benign key with its own segment (a Dirichlet mix around the
    traffic's) after n queries."""
    return _sampler(rng, coverage, rng.dirichlet(mix * len(mix)), n)


def _sampler(rng: np.random.Generator, coverage: RegionCoverage, mix: np.ndarray, n: int) -> float:
    """region_coverage of a key sampling `mix` (the traffic's own: a natural-data
    extractor) after n queries."""
    counts = np.bincount(rng.choice(len(mix), size=n, p=mix), minlength=REGIONS)
    return float(coverage.statistic(counts[None])[0])


def _region_null(edges: np.ndarray, histories: np.ndarray, values: list[float]) -> PopulationNull:
    """The null of keys whose region_coverage voices are `values` at `histories` queries
    (and a ring statistic, so each has a look), all fresh."""
    null = PopulationNull(edges, window=DAY, min_clients=12, ring=256)
    null.reserve(len(values))
    for slot, (n, value) in enumerate(zip(histories.tolist(), values, strict=True)):
        stats = np.full((1, len(STATISTICS)), np.nan)
        stats[0, CLASS], stats[0, RING] = value, -1.0
        bucket = np.full((1, len(STATISTICS)), bucket_of(np.array([n]), edges)[0])
        null.record(np.array([slot]), bucket, stats, np.array([DAY]))
    null.refresh(DAY + 60.0, len(values))
    return null


def test_a_sampler_ahead_of_its_peers_is_judged_against_less_history() -> None:
    """A natural-data extractor from the first hour runs ahead of every benign key at an
    ordinary rate: nobody has its 1,600 queries yet. Its region_coverage is judged against
    the keys at 600-1,000 (their debiased values, noisier than at 1,600: a conservative
    tail), and benign keys at 1,600 stay calibrated; so do newcomers behind every key, whose
    null is the keys' values widened to their noise."""
    rng = np.random.default_rng(3)
    edges = history_edges(25, 256)
    coverage, mix = _traffic(rng)
    clients = 150
    histories = rng.integers(600, 1000, clients)
    values = [_population(rng, coverage, mix, int(n)) for n in histories]
    null = _region_null(edges, histories, values)
    at = int(bucket_of(np.array([1600]), edges)[0])
    assert null.clients[at, CLASS] == clients
    assert null.baseline(at, CLASS)["source"] == "population"
    stats = np.full((1, len(STATISTICS)), np.nan)
    stats[0, CLASS] = _sampler(rng, coverage, mix, 1600)
    p_sampler = null.p_values(stats, np.full((1, len(STATISTICS)), at))[0, CLASS]
    benign = np.full((2000, len(STATISTICS)), np.nan)
    benign[:, CLASS] = [_population(rng, coverage, mix, 1600) for _ in range(2000)]
    p_benign = null.p_values(benign, np.full(benign.shape, at))[:, CLASS]
    assert p_sampler < 1e-3
    assert np.mean(p_benign <= p_sampler) < 1e-3
    assert np.mean(p_benign <= 0.01) <= 0.01
    # Behind every key (300 queries): their voices, widened; benign keys there calibrated.
    behind = int(bucket_of(np.array([300]), edges)[0])
    assert null.clients[behind, CLASS] == clients
    newcomers = np.full((2000, len(STATISTICS)), np.nan)
    newcomers[:, CLASS] = [_population(rng, coverage, mix, 300) for _ in range(2000)]
    p_newcomers = null.p_values(newcomers, np.full(newcomers.shape, behind))[:, CLASS]
    assert np.mean(p_newcomers <= 0.01) <= 0.01


def test_a_sampler_ahead_of_samplers_is_not_flagged() -> None:
    """A sampler's region_coverage rises like log(queries) (its divergence is floored at half
    its noise, which shrinks as 1 / queries), so voices from fewer queries stand lower, and
    a heavy key among keys that all sample alike runs ahead of every one of them. Its voices
    come from down to 4x fewer queries, spread over log 4: the tail is that wide, and the
    key is not flagged. (With voices from half its queries only, 56% of these keys fell at
    p <= 1e-3: docs/query-patterns.md, "Runs of stop 34".)"""
    rng = np.random.default_rng(5)
    edges = history_edges(25, 256)
    coverage, mix = _traffic(rng)
    histories = rng.integers(300, 1000, 150)
    null = _region_null(edges, histories, [_sampler(rng, coverage, mix, int(n)) for n in histories])
    judged = np.full((2000, len(STATISTICS)), np.nan)
    judged[:, CLASS] = [_sampler(rng, coverage, mix, 1600) for _ in range(2000)]
    at = np.full(judged.shape, bucket_of(np.array([1600]), edges)[0])
    p = null.p_values(judged, at)[:, CLASS]
    assert np.mean(p <= 1e-3) <= 1e-3


def test_a_key_ahead_of_every_population_meets_a_tail_raised_by_what_history_adds() -> None:
    """Nobody has a heavy user's 200 queries early on day 0: its region_coverage is judged
    against the nearest smaller bucket's keys, whose voices come from down to 4x fewer
    queries than that bucket's. A value can rise with history by at most log(n' / n) (its
    noise floor falls as 1 / queries), so the borrowed tail's start is raised by log(the
    look's bucket / the least history among those voices); heavy keys of the same
    population stay calibrated, and a sampler of the population's mix is not flagged that
    early (its peers' history, not its own, is what is known)."""
    rng = np.random.default_rng(0)
    edges = history_edges(20, 256)
    coverage, mix = _traffic(rng)
    histories = rng.integers(25, 80, 14)
    null = _region_null(
        edges, histories, [_population(rng, coverage, mix, int(n)) for n in histories]
    )
    at = int(bucket_of(np.array([200]), edges)[0])
    assert null.baseline(at, CLASS)["source"] == "smaller history"
    borrowed = int(null.from_bucket[at, CLASS])
    least = edges[max(borrowed - REGION_REACH, 0)]
    assert null.u[at, CLASS] == pytest.approx(null.u[borrowed, CLASS] + np.log(edges[at] / least))
    assert null.b[at, CLASS] == null.b[borrowed, CLASS]
    heavy = np.full((4000, len(STATISTICS)), np.nan)
    heavy[:, CLASS] = [_population(rng, coverage, mix, 200) for _ in range(4000)]
    p_heavy = null.p_values(heavy, np.full(heavy.shape, at))[:, CLASS]
    assert np.mean(p_heavy <= 0.01) <= 0.01 and np.mean(p_heavy <= 1e-3) <= 1e-3
    sampler = np.full((200, len(STATISTICS)), np.nan)
    sampler[:, CLASS] = [_sampler(rng, coverage, mix, 200) for _ in range(200)]
    assert np.median(null.p_values(sampler, np.full(sampler.shape, at))[:, CLASS]) > 2.8e-4


def test_the_tail_is_not_widened_by_two_extreme_voices() -> None:
    """The judged client's own earlier voice in its bucket and one other attacker's are
    censored: they count as the largest benign excess, however far out they are, and the
    tail's scale is about the benign pool's alone."""
    rng = np.random.default_rng(7)
    benign = rng.exponential(0.4, size=(120, 1))
    floors = np.array([0.01])
    _, alone = tail_parameters(benign, floors)
    _, with_two = tail_parameters(np.vstack([benign, [[9.0], [8.0]]]), floors)
    _, far_out = tail_parameters(np.vstack([benign, [[1e6], [1e6]]]), floors)
    assert far_out[0] == with_two[0]
    assert with_two[0] < 1.6 * alone[0]  # (the benign pool's own top two come back in)
    _, with_three = tail_parameters(np.vstack([benign, [[9.0], [8.0], [7.0]]]), floors)
    assert with_three[0] > 2 * alone[0]  # more than two attackers' voices: a wider tail


def test_an_exponential_tail_is_not_fitted_short() -> None:
    """Where benign clients' values have an exponential tail (the heaviest the model
    assumes), the censored scale is the tail's own: clients of the same population fall at
    p <= alpha about alpha as often (1.1-1.3 times: the scale's own noise, not paid for,
    docs/query-patterns.md), whatever the pool's size. The mean of the kept excesses alone
    (12 of 15: 0.63 of the scale) gave 2-3 times alpha at 1e-3, 3-6 times at 1e-4."""
    rng = np.random.default_rng(11)
    for voices in (150, 600):
        flagged = {1e-2: 0, 1e-3: 0}
        judged = 0
        for _ in range(200):
            u, b = tail_parameters(rng.exponential(1.0, size=(voices, 1)), np.array([1e-6]))
            p = tail_p(rng.exponential(1.0, size=20_000), u[0], b[0])
            judged += len(p)
            for alpha in flagged:
                flagged[alpha] += int(np.count_nonzero(p <= alpha))
        for alpha, count in flagged.items():
            assert count / judged <= 1.5 * alpha, (voices, alpha, count / judged)


def ring_null(keys: int, fill: int) -> tuple[PopulationNull, int, int]:
    """An empty null for `keys` clients on the default buckets, with the full ring's bucket
    and the bucket of ring fill `fill`."""
    edges = history_edges(20, 256)
    null = PopulationNull(edges, window=DAY, min_clients=12, ring=256)
    null.reserve(keys)
    full, at = (int(b) for b in bucket_of(np.array([256, fill]), edges))
    return null, full, at


def test_a_partial_ring_share_is_judged_against_every_client_at_its_noise() -> None:
    """A share at 40 queries is noisier than at a full ring: the full-ring clients speak for
    the 40-query bucket with their deviations widened (sqrt(256 / 40)), so new benign clients
    are not flagged by that noise, while the bucket's three own voices alone would say
    nothing, and a share far above every client's still is."""
    rng = np.random.default_rng(5)
    ood = STATISTICS.index("ood_share")
    old, new = 150, 3
    null, full, at = ring_null(old + new, 40)

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


def test_a_partial_ring_share_is_judged_by_each_clients_latest_voice() -> None:
    """Sharing moves with the hour: keys that passed the 28-query bucket in the night, when
    few keys queried at once (shares near 0.02), fill their rings by the morning at about
    0.2. A morning key at 30 queries is judged against what every key shows now, widened to
    its noise, not against the night's voices (against them over half of ordinary morning
    keys stood at p 1e-3 or less), and a share far above every key's still stands out."""
    rng = np.random.default_rng(11)
    shared = STATISTICS.index("shared_fingerprints")
    keys = 150
    null, full, at = ring_null(keys, 30)

    def record(slots: np.ndarray, bucket: int, values: np.ndarray, ts: float) -> None:
        stats = np.full((len(slots), len(STATISTICS)), np.nan)
        stats[:, shared] = values
        null.record(slots, np.full(stats.shape, bucket), stats, np.full(len(slots), ts))

    def morning_rates(n: int) -> np.ndarray:
        return rng.beta(20.0, 80.0, size=n)

    slots = np.arange(keys)
    night, morning = 3 * 3_600.0, 8 * 3_600.0
    fills = rng.integers(28, 40, size=keys)  # where each passed the bucket
    record(slots, at, rng.binomial(fills, 0.02) / fills, night)
    record(slots, full, rng.binomial(256, morning_rates(keys)) / 256, morning)
    null.refresh(morning + 60.0, keys)

    def p_values(shares: np.ndarray) -> np.ndarray:
        stats = np.full((len(shares), len(STATISTICS)), np.nan)
        stats[:, shared] = shares
        return null.p_values(stats, np.full(stats.shape, at))[:, shared]

    ordinary = rng.binomial(30, morning_rates(20_000)) / 30
    assert np.mean(p_values(ordinary) <= 1e-3) <= 1e-3
    assert p_values(np.array([0.9]))[0] <= 1e-3


def test_a_share_far_beyond_every_clients_is_bounded_through_the_full_rings_rates() -> None:
    """At 20 queries the partial ring's widened tail is wide (a few clients of a segment of
    their own stand far out), and a client with 19 of its 20 queries out of reference got p
    6.7e-4 from it on `bench/client_attacks.py` (segment 147). Bounded through the full
    ring's tail of rates and binomial noise (`share_bound`) it is judged at a p-value ten
    times smaller, while benign clients of the same population, edge segment included, stay
    within their budget at 20 queries."""
    rng = np.random.default_rng(9)
    ood = STATISTICS.index("ood_share")
    old = 150
    null, full, at = ring_null(old, 20)

    def rates(n: int) -> np.ndarray:  # 2% of the clients serve an edge segment (rate ~0.3)
        edge = np.arange(n) % 50 == 0
        return np.where(edge, rng.beta(30.0, 70.0, size=n), rng.beta(4.0, 45.0, size=n))

    stats = np.full((old, len(STATISTICS)), np.nan)
    stats[:, ood] = rng.binomial(256, rates(old)) / 256
    null.record(np.arange(old), np.full(stats.shape, full), stats, np.full(old, DAY))
    null.refresh(DAY + 60.0, old)

    def p_values(shares: np.ndarray) -> np.ndarray:
        looks = np.full((len(shares), len(STATISTICS)), np.nan)
        looks[:, ood] = shares
        return null.p_values(looks, np.full(looks.shape, at))[:, ood]

    attacker = np.array([19 / 20])
    widened_only = tail_p(attacker, null.u[at, ood], null.b[at, ood])[0]
    assert widened_only > 1e-3
    assert p_values(attacker)[0] < widened_only / 10
    benign = p_values(rng.binomial(20, rates(200_000)) / 20)
    for level in (1e-2, 1e-3, 1e-4):
        assert np.mean(benign <= level) <= level


def prior_null(level: float, pairs_rate: float) -> PopulationNull:
    """A null with no population: the reference prior judges every look, its share tail
    (level, 0.05 x sqrt(20 / fill)) and boundary pairs bounded by Chernoff at `pairs_rate`,
    as `QueryPatternDetector._learn_prior` sets them."""
    edges = history_edges(20, 256)
    null = PopulationNull(edges, window=DAY, min_clients=12, ring=256)
    low, pairs = STATISTICS.index("low_margin_share"), STATISTICS.index("boundary_pairs")
    fill = np.minimum(edges, 256)
    null.prior_u[:, low] = level
    null.prior_b[:, low] = np.maximum(0.05 * np.sqrt(20 / fill), 0.02)
    for bucket, edge in enumerate(fill.tolist()):
        null.prior_u[bucket, pairs], null.prior_b[bucket, pairs] = chernoff_tail(
            int(edge), pairs_rate
        )
    null.prior_noise[low] = 0.05 * np.sqrt(20)
    null.prior_rate[pairs] = pairs_rate
    null.refresh(DAY)
    return null


def test_the_prior_judges_a_look_at_its_own_size_not_its_buckets_smallest() -> None:
    """A warm-up HopSkipJump's boundary pairs stood at 10 of its 70 queries: the prior's
    tangent to the Chernoff bound at the bucket's 57 queries gave p 4e-4, above every
    threshold of its look; the bound itself at 70 queries gives 1e-5 or less. A low-margin
    share of 0.3 over 110 queries is judged at that size's noise, not at 80's."""
    null = prior_null(level=0.05, pairs_rate=STRADDLE_RATE)
    low, pairs = STATISTICS.index("low_margin_share"), STATISTICS.index("boundary_pairs")
    stats = np.full((2, len(STATISTICS)), np.nan)
    stats[0, pairs], stats[1, low] = 10 / 70, 0.3
    at = bucket_of(np.array([70, 110]), history_edges(20, 256))
    buckets = np.repeat(at[:, None], len(STATISTICS), 1)
    sizes = np.full(stats.shape, np.nan)
    sizes[0, pairs], sizes[1, low] = 70, 110
    at_bucket = null.p_values(stats, buckets)
    at_size = null.p_values(stats, buckets, sizes)
    assert (null.source[buckets[:, 0], [pairs, low]] == 3).all()  # the reference prior
    assert at_bucket[0, pairs] > 1e-4 and at_size[0, pairs] <= 1e-5
    scale = 0.05 * np.sqrt(20 / 110)
    assert at_size[1, low] == pytest.approx(0.1 * np.exp(-(0.3 - 0.05) / scale))
    assert at_size[1, low] < at_bucket[1, low] / 4
    unknown = null.p_values(stats, buckets, np.full(stats.shape, np.nan))
    np.testing.assert_array_equal(unknown, at_bucket)  # no size: the bucket's tail alone


@pytest.mark.parametrize("n", [20, 27, 45, 70, 110, 180, 256])
def test_the_priors_pair_bound_at_a_looks_size_is_a_valid_p_value(n: int) -> None:
    """Clients whose queries are boundary pairs independently at the prior's rate: the exact
    probability that a look's p-value is at most a (the binomial's mass where it is) stays
    within a, at every size."""
    null = prior_null(level=0.05, pairs_rate=STRADDLE_RATE)
    pairs = STATISTICS.index("boundary_pairs")
    k = np.arange(n + 1)
    stats = np.full((n + 1, len(STATISTICS)), np.nan)
    stats[:, pairs] = k / n
    buckets = np.full(stats.shape, bucket_of(np.array([n]), history_edges(20, 256))[0])
    sizes = np.full(stats.shape, float(n))
    p = null.p_values(stats, buckets, sizes)[:, pairs]
    mass = binom.pmf(k, n, STRADDLE_RATE)
    for level in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6):
        assert mass[p <= level].sum() <= level


def test_boundary_pairs_no_benign_client_sends_are_judged_by_their_floor() -> None:
    """Benign keys on every bench dataset send at most one boundary pair per full ring (most
    none), so the population's tail is its floor: a late HopSkipJump's line search, 3 pairs
    in its first 20 queries, must cross the ring test's threshold at its first looks (at the
    floor 0.02 it stood at p 6e-5, flagged only after 240 and 140 queries: segment 147, wine
    307), while one pair in 20 stays far above it. Where benign keys do send pairs, their
    own spread sets the tail, and their looks stay within their budget at 20 queries."""
    rng = np.random.default_rng(12)
    edges = history_edges(20, 256)
    pairs = STATISTICS.index("boundary_pairs")
    full, at = (int(b) for b in bucket_of(np.array([256, 20]), edges))
    threshold = Spending(alpha=1e-3, looks_per_ring=26).ring_threshold(2) * WEIGHTS[pairs]

    def population(rates: np.ndarray) -> PopulationNull:
        null = PopulationNull(edges, window=DAY, min_clients=12, ring=256)
        null.reserve(len(rates))
        stats = np.full((len(rates), len(STATISTICS)), np.nan)
        stats[:, pairs] = rng.binomial(256, rates) / 256
        null.record(np.arange(len(rates)), np.full(stats.shape, full), stats, np.full(150, DAY))
        null.refresh(DAY + 60.0, len(rates))
        return null

    def p_values(null: PopulationNull, shares: np.ndarray) -> np.ndarray:
        looks = np.full((len(shares), len(STATISTICS)), np.nan)
        looks[:, pairs] = shares
        return null.p_values(looks, np.full(looks.shape, at))[:, pairs]

    quiet = population(np.where(np.arange(150) % 50 == 0, 1 / 256, 0.0))
    line_search, one_pair = p_values(quiet, np.array([3 / 20, 1 / 20]))
    assert line_search <= threshold
    assert one_pair >= 10 * threshold
    rates = rng.beta(1.0, 300.0, size=150)  # a population that does send pairs now and then
    busy = population(rates)
    assert busy.b[at, pairs] > 0.01  # its spread, not the floor
    benign = p_values(busy, rng.binomial(20, rng.beta(1.0, 300.0, size=200_000)) / 20)
    for level in (1e-2, 1e-3, 1e-4):
        assert np.mean(benign <= level) <= level


def test_a_small_pools_region_tail_pays_for_its_own_noise() -> None:
    """`region_coverage`'s least tail scale grows as 1 / voices (`SMALL_POOL`): fitted on a
    dozen keys serving segments of their own (Dirichlet mixes over 6 slots, 400 queries each),
    fresh keys of the same population fall at p <= 1e-3 about as often as 1e-3; with the
    other statistics' 1.5 / sqrt(voices), three to five times as often."""
    rng = np.random.default_rng(17)
    slots, queries, voices = 6, 400, 12
    flagged = {True: 0, False: 0}
    judged = 0
    for _ in range(100):
        coverage, mix = _traffic(rng, slots, 3.0)
        own = rng.dirichlet(mix * slots, size=voices + 2000)
        counts = np.zeros((len(own), REGIONS))
        counts[:, :slots] = rng.multinomial(queries, own)
        values = coverage.statistic(counts)
        pool, fresh = values[:voices, None], values[voices:]
        judged += len(fresh)
        for by_variance in flagged:
            u, b = tail_parameters(pool, FLOORS[[REGION]], by_variance)
            flagged[by_variance] += int(np.count_nonzero(tail_p(fresh, u[0], b[0]) <= 1e-3))
    assert flagged[True] / judged <= 1.5e-3
    assert flagged[False] / judged >= 3e-3  # what the 1 / sqrt(voices) margin left
