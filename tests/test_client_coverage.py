"""Class coverage (`detectors.clients.coverage`) on small streams.

Benign clients each query their own corner of the input space (`tests.test_query_patterns`'s
stream); a natural-data extractor samples rows like the whole population's, at an ordinary
client's rate. When the benign clients themselves sample the whole population, the same
extractor is indistinguishable and must not be flagged for it.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from detectors.clients.coverage import (
    CELLS_START,
    CLASS_SLOTS,
    INPUT_CELLS,
    NOISE_FLOOR,
    REGIONS,
    SMOOTHING,
    VALUES_START,
    RegionCoverage,
    counts_at,
    fit_cells,
    labels_of,
    nearest_cell,
    shrunk_mix,
)
from detectors.clients.detector import ClientState, QueryPatternDetector
from detectors.clients.null import STATISTICS, bucket_of
from tests.test_query_patterns import (
    FEATURES,
    SETTINGS,
    SectorStream,
    first_by_client,
    population,
    run_mixed,
    whole_population,
)

STAT = STATISTICS.index("region_coverage")


def test_statistic_is_debiased_a_segment_keeps_its_level_a_sampler_sits_near_its_noise() -> None:
    """The plug-in divergence less its bias (slots reached - 1) / (2 n): a segment stands at
    minus the log of its own divergence whatever its history, where the plug-in value was
    pulled down by the bias at few queries; a sampler of the traffic's mix is at 0 plus
    noise, on a floor of `NOISE_FLOOR` sds of its noise about half the time, a floor that
    rises like log n."""
    rng = np.random.default_rng(0)
    coverage = RegionCoverage(86_400.0)
    mix = rng.dirichlet(np.ones(10))
    coverage.observe(rng.choice(10, size=50_000, p=mix), 0.0)
    segment = mix * rng.dirichlet(np.ones(10))
    segment /= segment.sum()
    q = coverage.traffic[:10] + SMOOTHING
    q /= q.sum()
    level = -np.log(float(np.sum(segment * np.log(segment / q))))

    def value(p: np.ndarray, n: int) -> float:
        counts = np.bincount(rng.choice(10, size=n, p=p), minlength=REGIONS)
        return float(coverage.statistic(counts[None])[0])

    for n in (200, 2000):
        assert abs(np.median([value(segment, n) for _ in range(200)]) - level) < 0.15
        # One part of 10 slots: a sampler's plug-in divergence has sd sqrt(2 x 9) / (2 n).
        floor = -np.log(NOISE_FLOOR * np.sqrt(18) / (2 * n) + 1e-6)
        samplers = np.array([value(mix, n) for _ in range(400)])
        assert 0.3 < np.mean(np.isclose(samplers, floor)) < 0.7
        assert samplers.max() == pytest.approx(floor)  # never above it
        assert np.median(samplers) > level + 2
        # Off the floor, a sampler is within a few sds of its noise, not far below it.
        assert np.quantile(samplers, 0.05) > floor - np.log(2 * 4 / NOISE_FLOOR)
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
    slots = RegionCoverage(1.0).class_slots(["b", "a", "b", None])
    assert slots[0] == slots[2] == zlib.crc32(b"b") % CLASS_SLOTS


def _judged(detector: QueryPatternDetector) -> tuple[np.ndarray, np.ndarray, int]:
    """Every client's region_coverage now and its p-value against the null, and the
    thief's row."""
    names = list(detector.clients)
    states = list(detector.clients.values())
    stats = detector._statistics(states)
    counts = np.array([state.count for state in states])
    buckets = np.repeat(bucket_of(counts, detector.edges)[:, None], stats.shape[1], axis=1)
    p = detector.null.p_values(stats, buckets)
    return stats[:, STAT], p[:, STAT], names.index("thief")


def test_a_natural_data_extractor_among_segment_clients_stands_out_in_region_coverage() -> None:
    """Benign clients each in their own corner (their own class mix); the extractor reaches
    every class as the whole traffic does, and its region_coverage leaves every benign
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


def test_input_cells_show_a_segment_whose_classes_are_the_traffics() -> None:
    """Two input clusters, each with both classes alike: a client that only sends rows of
    one cluster has the traffic's class mix, yet its input cells are all one cluster's; a
    client sampling the whole traffic reaches both."""
    rng = np.random.default_rng(4)
    centres = np.array([[-5.0, 0.0], [5.0, 0.0]])

    def rows(n: int, cluster: int | None) -> np.ndarray:
        which = rng.integers(2, size=n) if cluster is None else np.full(n, cluster)
        return centres[which] + rng.normal(0, 1.0, size=(n, 2))

    coverage = RegionCoverage(86_400.0, fit_cells(rows(2000, None), rng))
    assert len(coverage.centroids) == INPUT_CELLS

    def counts(x: np.ndarray) -> np.ndarray:
        labels = rng.choice(["a", "b"], size=len(x)).tolist()  # classes: the same mix everywhere
        regions, _ = coverage.regions(labels, x, np.zeros((len(x), 0), dtype=np.int64))
        assert (regions[:, 0] < CLASS_SLOTS).all() and (regions[:, 1] >= CLASS_SLOTS).all()
        return np.bincount(regions.ravel(), minlength=REGIONS)

    none = np.zeros((10_000, 0), dtype=np.int64)  # no categorical feature
    coverage.observe(coverage.regions(["a", "b"] * 5000, rows(10_000, None), none)[0], 0.0)
    segment = counts(rows(1000, 0))
    sampler = counts(rows(1000, None))
    both = coverage.statistic(np.stack([segment, sampler]))
    classes_only = coverage.statistic(
        np.stack([segment, sampler]) * (np.arange(REGIONS) < CLASS_SLOTS)
    )
    # By classes alone both look like the traffic (a divergence of sampling noise, ~1/(2n)).
    assert classes_only.min() > 5.0
    # With the input cells the segment is half the traffic's cells: (log 2) / 2 on average.
    assert both[0] == pytest.approx(-np.log(np.log(2) / 2), abs=0.2)
    assert both[1] > 5.0


def test_cells_are_fitted_to_the_reference_and_fewer_without_distinct_rows() -> None:
    rng = np.random.default_rng(5)
    few = np.repeat(np.arange(5.0)[:, None], 40, axis=0) * np.ones((1, 3))
    cells = fit_cells(few, rng)
    assert sorted(cells[:, 0].tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0]  # one cell per distinct row
    x = rng.normal(size=(3000, 4))
    cells = fit_cells(x, np.random.default_rng(6))
    again = fit_cells(x, np.random.default_rng(6))
    assert np.array_equal(cells, again)  # the same reference and seed: the same cells
    # Lloyd's fixed point: each centroid is the mean of the rows nearest to it.
    nearest = nearest_cell(x, cells)
    for j in range(len(cells)):
        assert np.allclose(cells[j], x[nearest == j].mean(axis=0), atol=1e-6)
    restored = RegionCoverage.from_data(RegionCoverage(1.0, cells).to_data(), 1.0)
    assert np.array_equal(restored.centroids, cells)


def test_a_flagged_clients_queries_do_not_shape_the_traffics_mix() -> None:
    """The traffic's mix is what benign clients reach: once a client is flagged, its queries
    are left out of it (as its voice is left out of the null)."""
    detector, stream = population(seed=34, spread=1.0)
    assert detector.regions is not None
    observed: list[int] = []
    observe = detector.regions.observe
    detector.regions.observe = lambda regions, now: (  # type: ignore[method-assign]
        observed.append(len(regions)),
        observe(regions, now),
    )[-1]
    uniform = stream.rng.uniform(-12, 12, size=(200, len(FEATURES)))
    flagged_in = None
    for k in range(10):
        x, clients = stream.benign(200)
        batch = stream.batch(
            np.vstack([x, uniform[20 * k : 20 * (k + 1)]]), clients + ["thief"] * 20
        )
        if detector.update(batch) and flagged_in is None:
            flagged_in = k
    assert flagged_in is not None and flagged_in < 9
    # Every benign query, and the thief's up to the batch it was flagged in.
    assert sum(observed) == 10 * 200 + 20 * (flagged_in + 1)


def test_the_populations_mix_gives_a_heavy_user_one_voice() -> None:
    """Forty keys, each with its own class mix around the data's, one of them sending as much
    as all the others: the traffic's mix is half the heavy user's, the population's (the
    clients' mean mix) is not, and a sampler of the data stands much closer to it."""
    rng = np.random.default_rng(9)
    data = rng.dirichlet(np.full(10, 3.0))
    mixes = rng.dirichlet(data * 10, size=40)
    mixes[0] = 0.5 * mixes[0] + 0.5 * np.eye(10)[np.argmax(data)]  # a segment of its own
    volumes = np.full(40, 200)
    volumes[0] = 7800  # the heavy user
    counts = np.zeros((40, REGIONS), dtype=np.int64)
    for i in range(40):
        counts[i, :10] = rng.multinomial(volumes[i], mixes[i])
    coverage = RegionCoverage(86_400.0)
    coverage.observe(np.repeat(np.arange(REGIONS), counts.sum(axis=0)), 0.0)
    sampler = np.zeros((1, REGIONS), dtype=np.int64)
    sampler[0, :10] = rng.multinomial(2000, data)
    against_traffic = coverage.statistic(sampler)[0]
    coverage.observe_population(counts)
    assert coverage.population is not None
    q = coverage.population[:CLASS_SLOTS] / coverage.population[:CLASS_SLOTS].sum()
    assert np.allclose(q[:10], (counts[:, :10] / volumes[:, None]).mean(axis=0), atol=0.01)
    assert coverage.statistic(sampler)[0] > against_traffic + 1.0
    restored = RegionCoverage.from_data(coverage.to_data(), 86_400.0)
    assert restored.population is not None
    assert np.array_equal(restored.statistic(sampler), coverage.statistic(sampler))


def segment_keys(rng: np.random.Generator, data: np.ndarray, keys: int, queries: int) -> np.ndarray:
    """Region counts (keys x REGIONS) of keys that each draw `queries` rows from their own
    mix of the data's 7 cells (Dirichlet around the data's, total concentration 7)."""
    counts = np.zeros((keys, REGIONS), dtype=np.int64)
    for i in range(keys):
        counts[i, CLASS_SLOTS : CLASS_SLOTS + 7] = rng.multinomial(queries, rng.dirichlet(7 * data))
    return counts


def test_a_stored_references_mix_steadies_the_populations_until_the_traffic_moves() -> None:
    """150 keys with segments of their own: their mean mix stands a KL of about 1e-3 from
    the data they sample, a natural-data extractor's ceiling; shrunk towards a 5,000-row
    reference of those data by what each is worth, about half that, and the extractor
    stands higher. A reference the traffic has moved away from is all but ignored."""
    rng = np.random.default_rng(3)
    data = rng.dirichlet(np.full(7, 3.0))

    def kl(p: np.ndarray, q: np.ndarray) -> float:
        return float(np.sum(p * np.log(p / q)))

    gains, moved = [], []
    for _ in range(10):
        counts = segment_keys(rng, data, 150, 2000)
        parts = counts.reshape(150, 3, 16).astype(float)
        mixes = parts / np.maximum(parts.sum(axis=2, keepdims=True), 1)
        reference = np.zeros((3, 16))
        reference[1, :7] = rng.multinomial(5000, data)
        mean = mixes.mean(axis=0)[1, :7]
        gains.append(kl(data, shrunk_mix(mixes, reference)[1, :7]) / kl(data, mean))
        elsewhere = np.zeros((3, 16))
        elsewhere[1, :7] = rng.multinomial(5000, np.roll(data, 1))
        moved.append(kl(shrunk_mix(mixes, elsewhere)[1, :7], mean) / kl(np.roll(data, 1), mean))
    assert np.median(gains) < 0.5
    assert max(moved) < 0.01
    counts = segment_keys(rng, data, 150, 2000)
    extractor = np.zeros((1, REGIONS), dtype=np.int64)
    extractor[0, CLASS_SLOTS : CLASS_SLOTS + 7] = rng.multinomial(2000, data)
    stored = np.zeros(REGIONS)
    stored[CLASS_SLOTS : CLASS_SLOTS + 7] = rng.multinomial(5000, data)
    values = []
    for reference in (None, stored):
        coverage = RegionCoverage(86_400.0, reference=reference)
        coverage.observe(np.repeat(np.arange(REGIONS), counts.sum(axis=0)), 0.0)
        coverage.observe_population(counts)
        values.append(float(coverage.statistic(extractor)[0]))
    assert values[1] > values[0] + 0.4
    restored = RegionCoverage.from_data(coverage.to_data(), 86_400.0)
    assert np.array_equal(restored.statistic(extractor), coverage.statistic(extractor))


def kinds_keys(
    rng: np.random.Generator, cells: np.ndarray, mixes: np.ndarray, queries: int
) -> np.ndarray:
    """Region counts (keys x REGIONS) of keys that each draw `queries` rows from their own
    mix (a row of `mixes`) of a few kinds of segment, each kind a mix of the 16 cells."""
    counts = np.zeros((len(mixes), REGIONS), dtype=np.int64)
    for i, mix in enumerate(mixes):
        counts[i, CELLS_START : CELLS_START + INPUT_CELLS] = rng.multinomial(queries, mix @ cells)
    return counts


def test_only_the_directions_the_keys_spread_along_count_and_a_sampler_stands_clearer() -> None:
    """Keys mixing 6 kinds of segment differ along 5 directions of the 16 cells' mix; the
    other 10 carry only sampling noise, for keys and samplers alike. Counted along the 5
    alone, a sampler's noise falls and it stands clearer of the keys: its median
    statistic farther above their 99th percentile on each of 5 draws, by 0.07-1.1."""
    gains = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        cells = rng.dirichlet(np.full(INPUT_CELLS, 0.5), size=6)
        share = rng.dirichlet(np.full(6, 5.0))
        keys = kinds_keys(rng, cells, rng.dirichlet(6 * share, size=150), 1000)
        samplers = kinds_keys(rng, cells, np.tile(share, (100, 1)), 1000)
        stored = np.zeros(REGIONS)
        stored[CELLS_START : CELLS_START + INPUT_CELLS] = rng.multinomial(100_000, share @ cells)
        coverage = RegionCoverage(86_400.0, reference=stored)
        coverage.observe(np.repeat(np.arange(REGIONS), keys.sum(axis=0)), 0.0)
        coverage.observe_population(keys)
        assert coverage.spread is not None
        assert np.count_nonzero(coverage.spread, axis=1).tolist() == [0, 5, 0]
        restored = RegionCoverage.from_data(coverage.to_data(), 86_400.0)
        assert np.array_equal(restored.statistic(samplers), coverage.statistic(samplers))
        margins = []
        for directions in (None, coverage.directions):
            coverage.directions = directions
            benign = coverage.statistic(keys)
            margins.append(np.median(coverage.statistic(samplers)) - np.quantile(benign, 0.99))
        gains.append(margins[1] - margins[0])
    assert min(gains) > 0 and np.median(gains) > 0.4, gains


def test_a_key_unlike_every_other_in_its_own_way_is_no_sampler() -> None:
    """Off the directions the keys spread along only what clears its noise counts: a key
    whose own segment lies where no other key's does keeps its distance, while a
    sampler's noise there is dropped."""
    rng = np.random.default_rng(7)
    cells = rng.dirichlet(np.full(INPUT_CELLS, 0.5), size=3)
    share = np.array([0.5, 0.3, 0.2])
    keys = kinds_keys(rng, cells, rng.dirichlet(3 * share, size=150), 2000)
    own = share @ cells
    own = own * np.exp(rng.normal(0, 0.4, INPUT_CELLS))  # a market of its own
    loner = np.zeros((1, REGIONS), dtype=np.int64)
    loner[0, CELLS_START : CELLS_START + INPUT_CELLS] = rng.multinomial(2000, own / own.sum())
    coverage = RegionCoverage(86_400.0)
    coverage.observe(np.repeat(np.arange(REGIONS), keys.sum(axis=0)), 0.0)
    coverage.observe_population(keys)  # the loner new to them, or too few queries yet
    looks = np.vstack([loner, kinds_keys(rng, cells, np.tile(share, (100, 1)), 2000)])
    along = coverage.statistic(looks)
    benign = coverage.statistic(keys)
    coverage.directions = None
    whole = coverage.statistic(looks)
    assert along[0] == pytest.approx(whole[0], abs=0.3)  # the loner keeps its distance
    assert along[0] < np.median(benign) + 1  # among the keys, not above
    assert np.median(along[1:]) > np.median(whole[1:]) + 0.3  # samplers' noise dropped
    # Too few clients for a covariance: the whole divergence, as before.
    coverage.observe_population(keys[:20])
    assert coverage.directions is None and coverage.spread is None


def test_the_detectors_population_is_its_fresh_unflagged_clients() -> None:
    """The population's mix is refreshed with the null, from the clients with a fresh look
    that are not flagged; before enough of them have looked, the traffic's mix stands in."""
    detector = QueryPatternDetector("m", SETTINGS)
    stream = SectorStream(35)
    detector.update(stream.batch(*stream.benign(400)))  # the learning window
    assert detector.regions is not None and detector.regions.population is None
    for _ in range(8):
        detector.update(stream.batch(*stream.benign(500)))
    population = detector.regions.population
    assert population is not None

    def clients_mean(states: list[ClientState]) -> np.ndarray:
        counts = detector.region_counts[[st.slot for st in states], :CLASS_SLOTS]
        return (counts / counts.sum(axis=1, keepdims=True)).mean(axis=0)

    states = list(detector.clients.values())
    assert len(states) >= SETTINGS.min_null_clients
    # The mean as of the last refresh; the counts have grown since: close, not equal.
    q = population[:CLASS_SLOTS] / population[:CLASS_SLOTS].sum()
    assert np.abs(q - clients_mean(states)).max() < 0.02
    # A flagged client leaves it at the next refresh; so does one quiet for the null's window.
    flagged, quiet = states[0], states[1]
    flagged.flagged_severity = "critical"
    detector.null.stamps[quiet.slot] = -np.inf
    detector._refresh_null()
    q = detector.regions.population[:CLASS_SLOTS]
    assert np.allclose(q / q.sum(), clients_mean(states[2:]), atol=1e-3)
    # Too few voices left: the traffic's mix stands in again.
    detector.null.stamps[:] = -np.inf
    detector._refresh_null()
    assert detector.regions.population is None


def test_categorical_values_show_a_market_segment() -> None:
    """A client serving one market (mostly one value of a categorical feature) is a segment
    even where its numeric inputs and classes are the traffic's: the values part sees it."""
    rng = np.random.default_rng(8)
    buckets, share = 8, np.array([0.35, 0.25, 0.15, 0.12, 0.08, 0.05, 0.0, 0.0])

    def queries(n: int, p: np.ndarray) -> tuple[list[object], np.ndarray, np.ndarray]:
        """Labels, encoded numeric inputs and each query's bucket of the one feature."""
        return ["a"] * n, rng.normal(size=(n, 2)), rng.choice(buckets, size=(n, 1), p=p)

    coverage = RegionCoverage(86_400.0, None, (1, buckets))
    coverage.observe(coverage.regions(*queries(10_000, share))[0], 0.0)
    home = np.array([0.9, 0.02, 0.02, 0.02, 0.02, 0.02, 0.0, 0.0])
    market, _ = coverage.regions(*queries(400, home))
    sampler, _ = coverage.regions(*queries(400, share))
    assert (market[:, 2] >= VALUES_START).all() and market.shape[1] == 3
    counts = np.stack([np.bincount(r.ravel(), minlength=REGIONS) for r in (market, sampler)])
    market_value, sampler_value = coverage.statistic(counts)
    assert sampler_value > market_value + 2.0
    # A missing value is a value of its own, not a crash.
    labels, x, _ = queries(3, share)
    missing = np.full((3, 1), buckets)  # the detector's bin for a missing value
    assert len(set(coverage.regions(labels, x, missing)[0][:, 2].tolist())) == 1
