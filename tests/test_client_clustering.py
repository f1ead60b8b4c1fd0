"""Drift tests on values that come in clients' clusters: the design effect.

API keys each serve their own segment and send sessions of related queries, so a window in
which a few keys are busy varies more than independent draws would. Without the correction
the numeric drift test alarmed on such stationary traffic (bench/client_attacks.py: 1 to 5
false incidents per 190,000 events, against 0.2 per million).
"""

from __future__ import annotations

import numpy as np
import pytest

from detectors.base import Detector
from detectors.categorical_drift import CategoricalDriftDetector
from detectors.multivariate_drift import MultivariateDriftDetector
from detectors.numeric_drift import NumericDriftDetector
from detectors.shape_drift import ShapeDriftDetector
from detectors.stats.clustering import (
    BlockGroups,
    ClientWindows,
    IntraclassCorrelation,
    WindowClients,
)
from streams.batch import ModelBatch, client_hash

FEATURES = 8
REFERENCE = 3000


def sessions(
    rng: np.random.Generator, n: int, clients: int, session: float
) -> tuple[np.ndarray, np.ndarray]:
    """The key of each of `n` events: `clients` keys with Zipf-like volumes, in sessions of
    geometric length (mean `session`); and the keys' shares of the traffic."""
    volume = 1 / np.arange(1, clients + 1)
    share = volume / volume.sum()
    lengths = rng.geometric(1 / session, n)
    return np.repeat(rng.choice(clients, len(lengths), p=share), lengths)[:n], share


def clustered(
    seed: int, n: int, rho: float, clients: int = 60, session: float = 20.0
) -> tuple[list[str], np.ndarray]:
    """`n` events of `FEATURES` N(0,1) features sent by `clients` keys with Zipf-like volumes,
    in sessions of geometric length (mean `session`); each key's values are centred on its
    own means (variance `rho`), so the intraclass correlation is `rho` and the traffic's
    marginal is N(0,1), as the reference's."""
    rng = np.random.default_rng(seed)
    keys, _ = sessions(rng, n, clients, session)
    own_means = rng.normal(0, np.sqrt(rho), (clients, FEATURES))
    values = own_means[keys] + rng.normal(0, np.sqrt(1 - rho), (n, FEATURES))
    return [f"key-{k}" for k in keys], values


def batch(
    values: np.ndarray | dict[str, list[str]], clients: list[str | None], start: int
) -> ModelBatch:
    """Events `start`, `start + 1`, ... of `clients`: numeric features f0, f1, ... (the
    columns of `values`) or categorical ones (a dict of columns)."""
    n = len(clients)
    if isinstance(values, dict):
        numeric, categorical = {}, {k: np.array(v, dtype=object) for k, v in values.items()}
    else:
        numeric, categorical = {f"f{j}": values[:, j].copy() for j in range(values.shape[1])}, {}
    return ModelBatch(
        model="m",
        source="s",
        partition=0,
        ts=np.arange(start, start + n, dtype=float),
        offsets=np.arange(start, start + n),
        ids=[None] * n,
        clients=clients,
        model_versions=[None] * n,
        rows=[],
        numeric=numeric,
        categorical=categorical,
    )


def run(
    values: np.ndarray,
    clients: list[str | None],
    size: int = 2000,
    detector: Detector | None = None,
    kind: type[Detector] = NumericDriftDetector,
) -> list:
    """The findings of a drift detector (`kind`, numeric drift unless told), its reference
    N(0,1) without clients unless `detector` is one already running."""
    if detector is None:
        detector = kind("m")
        reference = np.random.default_rng(7).normal(size=(REFERENCE, FEATURES))
        detector.update(batch(reference, [None] * REFERENCE, 0))
    findings = []
    for start in range(0, len(values), size):
        part = slice(start, start + size)
        findings += detector.update(batch(values[part], clients[part], REFERENCE + start))
    return findings


def brute_excess(ids: np.ndarray, length: int) -> np.ndarray:
    out = []
    for j in range(len(ids)):
        window = ids[max(0, j - length + 1) : j + 1]
        _, counts = np.unique(window[window != 0], return_counts=True)
        pairs = float((counts * (counts - 1)).sum())  # sum M^2 - N over clients
        out.append(pairs / len(window))
    return np.array(out)


def test_window_excess_counts_each_windows_clients_across_any_batching() -> None:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 7, 700).astype(np.int64)  # 0: events without a client
    for length in (1, 5, 55):
        windows = ClientWindows(length)
        cuts = np.sort(rng.choice(np.arange(1, 700), 12, replace=False))
        got = np.concatenate([windows.excess(part) for part in np.split(ids, cuts)])
        assert np.allclose(got, brute_excess(ids, length))


def test_window_excess_is_zero_when_no_event_has_a_client_or_all_differ() -> None:
    windows = ClientWindows(50)
    assert not windows.excess(np.zeros(300, dtype=np.int64)).any()
    assert not windows.excess(np.array([client_hash(f"k{i}") for i in range(300)])).any()


def test_intraclass_correlation_is_learned_from_pairs_within_blocks() -> None:
    rng = np.random.default_rng(5)
    blocks, width, clients = 4000, 50, 30
    ids = rng.integers(1, clients + 1, (blocks, width))
    for rho in (0.0, 0.05, 0.2):
        own = rng.normal(0, np.sqrt(rho), (blocks, clients + 1))  # per block and client
        values = np.take_along_axis(own, ids, 1) + rng.normal(0, np.sqrt(1 - rho), ids.shape)
        icc = IntraclassCorrelation()
        icc.through_each(BlockGroups.of(ids), values - values.mean(axis=1, keepdims=True))
        assert icc.value == pytest.approx(rho, abs=0.01)
    # An attacker holding half of 20 blocks with one repeated point (correlation 1) weighs
    # its groups' sizes, not their pairs: rho moves by little.
    before = icc.value
    mixed = np.concatenate([np.full((20, 25), 99), np.arange(100, 1100).reshape(20, 50)[:, :25]], 1)
    probe = np.concatenate([np.full((20, 25), 2.0), rng.normal(size=(20, 25))], axis=1)
    icc.through_each(BlockGroups.of(mixed), probe - probe.mean(axis=1, keepdims=True))
    assert before < icc.value < before + 0.01


def test_rho_of_each_block_is_what_it_and_the_blocks_before_it_taught() -> None:
    rng = np.random.default_rng(6)
    ids = rng.integers(1, 10, (30, 50))
    values = rng.normal(size=(30, 50)) + np.take_along_axis(rng.normal(size=(30, 10)), ids - 1, 1)
    centred = values - values.mean(axis=1, keepdims=True)
    whole = IntraclassCorrelation().through_each(BlockGroups.of(ids), centred)
    parts = IntraclassCorrelation()
    pieces = [
        parts.through_each(BlockGroups.of(ids[a:b]), centred[a:b])
        for a, b in ((0, 7), (7, 8), (8, 30))
    ]
    assert np.allclose(np.concatenate(pieces), whole)
    assert 0 < whole[0] < whole[-1] and whole[-1] > 0.2  # shrunk most at first


@pytest.mark.parametrize("seed", [11, 12])
def test_stationary_clustered_traffic_is_quiet_once_clients_are_counted(seed: int) -> None:
    clients, values = clustered(seed, 200_000, rho=0.05)
    assert len(run(values, [None] * len(clients))) >= 10  # taken as independent draws
    assert run(values, clients) == []


@pytest.mark.parametrize(("shift", "within"), [(0.3, 2_000), (0.5, 600)])
def test_a_shift_of_everyone_is_still_found_on_clustered_traffic(shift, within) -> None:
    clients, values = clustered(13, 40_000, rho=0.05, clients=150, session=10.0)
    values[20_000:, 0] += shift
    found = [f for f in run(values, clients) if f.ts >= REFERENCE + 20_000]
    assert found and found[0].subject == "f0"
    assert found[0].ts - (REFERENCE + 20_000) <= within  # 300 to 400 as independent draws
    assert found[0].details["design_effect"] > 1.3  # the correction was in force
    assert 0.02 < found[0].details["intraclass_correlation"] < 0.08


def own_spreads(
    seed: int, n: int, sigma: float, clients: int = 60
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Keys that differ in spread, not in mean: `n` events in `sessions`, each
    key's features scaled by its own exp(N(0, sigma)) (a segment of near-identical inputs,
    another of varied ones); and a reference of the same population, each of its values from
    a key drawn by volume (so its marginal is the traffic's)."""
    rng = np.random.default_rng(seed)
    keys, share = sessions(rng, n, clients, 20.0)
    scales = np.exp(rng.normal(0, sigma, (clients, FEATURES)))
    values = scales[keys] * rng.normal(size=(n, FEATURES))
    drawn = rng.choice(clients, REFERENCE, p=share)
    reference = scales[drawn] * rng.normal(size=(REFERENCE, FEATURES))
    return [f"key-{k}" for k in keys], values, reference


def spread_run(values: np.ndarray, clients: list[str | None], reference: np.ndarray) -> list:
    detector = NumericDriftDetector("m")
    detector.update(batch(reference, [None] * REFERENCE, 0))
    return run(values, clients, detector=detector)


def test_keys_with_their_own_spreads_are_quiet_once_clients_are_counted() -> None:
    """A window of a few keys is narrower or wider than the traffic when keys differ in
    spread (std ratios of about 1.2 here); the spread test counts the squares' clustering."""
    clients, values, reference = own_spreads(21, 100_000, sigma=0.2)
    independent = spread_run(values, [None] * len(clients), reference)
    assert sum("spread" in f.title for f in independent) >= 5
    assert spread_run(values, clients, reference) == []


def test_a_spread_change_of_everyone_is_still_found_on_clustered_traffic() -> None:
    clients, values, reference = own_spreads(22, 40_000, sigma=0.2, clients=150)
    values[20_000:, 0] *= 1.5
    found = [f for f in spread_run(values, clients, reference) if f.ts >= REFERENCE + 20_000]
    assert found and found[0].subject == "f0" and "spread widened" in found[0].title
    assert found[0].ts - (REFERENCE + 20_000) <= 1_500
    assert found[0].details["design_effect"] > 1.1  # the correction was in force


def test_multivariate_windows_of_keys_with_their_own_means_are_quiet_once_clients_count() -> None:
    """A key's inputs sit in its own part of the space, so its reconstruction errors are
    alike: the window's mean error varies by its design effect."""
    clients, values = clustered(2, 200_000, rho=0.2)
    independent = run(values, [None] * len(clients), kind=MultivariateDriftDetector)
    assert len(independent) >= 3
    assert run(values, clients, kind=MultivariateDriftDetector) == []


def test_a_correlation_flip_is_still_found_on_clustered_traffic() -> None:
    clients, values = clustered(4, 40_000, rho=0.1, clients=150, session=10.0)
    for sign, part in ((1.0, slice(0, 20_000)), (-1.0, slice(20_000, None))):
        values[part, 1] = sign * 0.8 * values[part, 0] + 0.6 * values[part, 1]
    reference = np.random.default_rng(7).normal(size=(REFERENCE, FEATURES))
    reference[:, 1] = 0.8 * reference[:, 0] + 0.6 * reference[:, 1]
    detector = MultivariateDriftDetector("m")
    detector.update(batch(reference, [None] * REFERENCE, 0))
    found = run(values, clients, detector=detector)
    assert found and all(f.ts >= REFERENCE + 20_000 for f in found)
    assert found[0].ts - (REFERENCE + 20_000) < 1_000  # its first window
    assert found[0].details["design_effect"] > 1.2  # the correction was in force


def test_clients_that_all_differ_change_nothing() -> None:
    rng = np.random.default_rng(14)
    values = rng.normal(size=(30_000, FEATURES))
    values[15_000:, 2] += 0.4
    plain = run(values, [None] * len(values))
    distinct = run(values, [f"k{i}" for i in range(len(values))])
    assert plain  # the shift is found
    assert [(f.subject, f.ts, f.value) for f in distinct] == [
        (f.subject, f.ts, f.value) for f in plain
    ]


def test_findings_on_clustered_traffic_do_not_depend_on_batching() -> None:
    clients, values = clustered(15, 30_000, rho=0.05)
    values[15_000:, 1] -= 0.4
    big = run(values, clients, size=2000)
    small = run(values, clients, size=333)
    assert big
    assert [(f.subject, f.ts, round(f.value, 6)) for f in small] == [
        (f.subject, f.ts, round(f.value, 6)) for f in big
    ]


def test_snapshot_restore_with_clients_continues_exactly() -> None:
    clients, values = clustered(16, 40_000, rho=0.05)
    values[25_000:, 3] += 0.5
    original = NumericDriftDetector("m")
    reference = np.random.default_rng(7).normal(size=(REFERENCE, FEATURES))
    original.update(batch(reference, [None] * REFERENCE, 0))
    run(values[:20_000], clients[:20_000], size=1500, detector=original)  # ends mid-block
    clone = NumericDriftDetector("m")
    assert clone.restore(original.snapshot())
    later = slice(20_000, None)
    a = [(f.subject, f.ts, f.value) for f in run(values[later], clients[later], detector=original)]
    b = [(f.subject, f.ts, f.value) for f in run(values[later], clients[later], detector=clone)]
    assert a and a == b


# --- categorical windows ------------------------------------------------------------------

COUNTRIES = ["DE", "FR", "NL", "ES", "IT"]
SHARES = np.array([0.4, 0.2, 0.15, 0.15, 0.1])


def clustered_categories(
    seed: int, n: int, concentration: float, clients: int = 150, features: int = 4
) -> tuple[list[str], dict[str, list[str]]]:
    """Categorical features whose every key draws from its own mix of `COUNTRIES`
    (Dirichlet around `SHARES`; the kappa within a key is 1 / (concentration + 1)), keys
    with Zipf-like volumes in sessions of mean 10."""
    rng = np.random.default_rng(seed)
    volume = 1 / np.arange(1, clients + 1)
    lengths = rng.geometric(0.1, n)
    keys = np.repeat(rng.choice(clients, len(lengths), p=volume / volume.sum()), lengths)[:n]
    columns = {}
    for f in range(features):
        mixes = rng.dirichlet(concentration * SHARES, clients)
        below = (rng.random(n)[:, None] > mixes.cumsum(axis=1)[keys]).sum(axis=1)
        columns[f"c{f}"] = [COUNTRIES[min(i, 4)] for i in below]
    return [f"key-{k}" for k in keys], columns


def run_categorical(
    columns: dict[str, list[str]],
    clients: list[str | None],
    size: int = 2000,
    detector: CategoricalDriftDetector | None = None,
) -> list:
    if detector is None:
        detector = CategoricalDriftDetector("m")
        rng = np.random.default_rng(8)
        reference = {k: list(rng.choice(COUNTRIES, REFERENCE, p=SHARES)) for k in columns}
        detector.update(batch(reference, [None] * REFERENCE, 0))
    findings = []
    n = len(clients)
    for start in range(0, n, size):
        part = {k: v[start : start + size] for k, v in columns.items()}
        findings += detector.update(batch(part, clients[start : start + size], REFERENCE + start))
    return findings


def test_kappa_of_keys_own_category_mixes_is_learned() -> None:
    rng = np.random.default_rng(9)
    for concentration in (5.0, 20.0):
        icc = IntraclassCorrelation()
        for _ in range(200):
            ids = rng.integers(1, 60, 1000)
            mixes = rng.dirichlet(concentration * SHARES, 60)
            bins = (rng.random(1000)[:, None] > mixes.cumsum(axis=1)[ids]).sum(axis=1)
            bins = np.minimum(bins, 4)
            icc.add_categories(WindowClients.of(ids), bins, np.bincount(bins, minlength=5) / 1000)
        assert icc.value == pytest.approx(1 / (concentration + 1), abs=0.01)


@pytest.mark.parametrize("seed", [21, 22])
def test_stationary_clustered_categories_are_quiet_once_clients_are_counted(seed: int) -> None:
    clients, columns = clustered_categories(seed, 100_000, concentration=5.0)
    assert len(run_categorical(columns, [None] * len(clients))) >= 20
    assert run_categorical(columns, clients) == []


def test_a_category_shift_of_everyone_is_still_found_on_clustered_traffic() -> None:
    clients, columns = clustered_categories(23, 40_000, concentration=20.0)
    rng = np.random.default_rng(24)
    moved = rng.random(20_000) < 0.25  # a quarter of everyone's events turn to IT
    after = columns["c0"][20_000:]
    columns["c0"][20_000:] = ["IT" if m else c for m, c in zip(moved, after, strict=True)]
    found = [f for f in run_categorical(columns, clients) if f.ts >= REFERENCE + 20_000]
    assert found and found[0].subject == "c0"
    assert found[0].ts - (REFERENCE + 20_000) <= 2_000
    assert found[0].details["design_effect"] > 1.3


def test_categorical_findings_do_not_depend_on_batching_and_survive_a_checkpoint() -> None:
    clients, columns = clustered_categories(25, 30_000, concentration=20.0)
    columns["c1"][15_000:] = ["FR"] * 15_000
    big = run_categorical(columns, clients, size=2000)
    assert big
    small = run_categorical(columns, clients, size=333)
    assert [(f.subject, f.ts, f.value) for f in small] == [(f.subject, f.ts, f.value) for f in big]
    first = {k: v[:14_500] for k, v in columns.items()}
    original = CategoricalDriftDetector("m")
    rng = np.random.default_rng(8)
    reference = {k: list(rng.choice(COUNTRIES, REFERENCE, p=SHARES)) for k in columns}
    original.update(batch(reference, [None] * REFERENCE, 0))
    run_categorical(first, clients[:14_500], size=1700, detector=original)  # mid-window
    clone = CategoricalDriftDetector("m")
    assert clone.restore(original.snapshot())
    rest = {k: v[14_500:] for k, v in columns.items()}
    a = run_categorical(rest, clients[14_500:], detector=original)
    b = run_categorical(rest, clients[14_500:], detector=clone)
    assert a and [(f.subject, f.value) for f in a] == [(f.subject, f.value) for f in b]


# --- shape windows ------------------------------------------------------------------------


def run_shape(values: np.ndarray, clients: list[str | None], size: int = 2000) -> list:
    return run(values, clients, size, kind=ShapeDriftDetector)


def test_stationary_clustered_traffic_keeps_its_shape_once_clients_are_counted() -> None:
    clients, values = clustered(31, 200_000, rho=0.1)
    assert len(run_shape(values, [None] * len(clients))) >= 20
    assert run_shape(values, clients) == []


def test_a_shape_change_of_everyone_is_still_found_on_clustered_traffic() -> None:
    clients, values = clustered(32, 40_000, rho=0.05)
    after = values[20_000:, 4]
    values[20_000:, 4] = np.where(after > 0, after + 0.8, after - 0.8)  # one mode splits
    found = [f for f in run_shape(values, clients) if f.ts >= REFERENCE + 20_000]
    assert found and {f.subject for f in found} == {"f4"}
    assert found[0].ts - (REFERENCE + 20_000) <= 2_000
    assert found[0].details["design_effect"] > 1.3


def test_shape_findings_on_clustered_traffic_do_not_depend_on_batching() -> None:
    clients, values = clustered(33, 30_000, rho=0.05)
    values[15_000:, 5] *= 1.6
    big = run_shape(values, clients, size=2000)
    assert big
    small = run_shape(values, clients, size=777)
    assert [(f.subject, f.ts, f.value) for f in small] == [(f.subject, f.ts, f.value) for f in big]


def test_shape_windows_with_clients_survive_a_checkpoint() -> None:
    clients, values = clustered(34, 30_000, rho=0.05)
    values[15_000:, 5] *= 1.6
    original = ShapeDriftDetector("m")
    reference = np.random.default_rng(7).normal(size=(REFERENCE, FEATURES))
    original.update(batch(reference, [None] * REFERENCE, 0))
    original.update(batch(values[:12_345], clients[:12_345], REFERENCE))  # windows open
    clone = ShapeDriftDetector("m")
    assert clone.restore(original.snapshot())
    later = batch(values[12_345:], clients[12_345:], REFERENCE + 12_345)
    a = [(f.subject, f.ts, f.value, f.details["design_effect"]) for f in original.update(later)]
    b = [(f.subject, f.ts, f.value, f.details["design_effect"]) for f in clone.update(later)]
    assert a and a == b and max(d for *_, d in a) > 1
    assert clone.snapshot() == original.snapshot()  # the rho learned since, too
