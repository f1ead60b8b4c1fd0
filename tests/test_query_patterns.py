"""Per-client query-pattern detection on small synthetic streams.

A population of benign clients queries a 4-feature model (each client from its own corner of
the input space, with one categorical feature); attackers join once the detector has learned
its reference and calibrated on the benign population.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from itertools import pairwise

import numpy as np
import pytest
from scipy import stats

from agent.config import ConfigError, load_settings
from detectors import state_codec
from detectors.base import Finding, Kind
from detectors.clients.detector import (
    EXACT,
    LINKED_CLIENTS,
    PROBE_FLOOR,
    WARMUP_FACTOR,
    QueryPatternDetector,
    typical_rate,
)
from detectors.clients.null import STATISTICS
from detectors.clients.spending import (
    CUMULATIVE,
    CUMULATIVE_FIRST,
    FIRST_CUMULATIVE,
    RING,
    RING_DECAY,
    TESTED,
    WEIGHTS,
    Spending,
    bonferroni,
    cumulative_looks_due,
)
from detectors.clients.spending import Test as CombinedTest
from detectors.clients.statistics import shapiro_w
from detectors.clients.typicality import typical_radius
from detectors.settings import QueryPatternSettings
from detectors.state_codec import StateError
from detectors.stats.scores import TailPValue
from streams.batch import ModelBatch
from tests.conftest import run_cli

FEATURES = ("a", "b", "c", "d")
SETTINGS = QueryPatternSettings(reference_size=300)


def _probability(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(x[:, 0] + x[:, 1])))


def make_batch(x: np.ndarray, clients: list[str | None], ts: np.ndarray, start: int) -> ModelBatch:
    n = len(x)
    p = _probability(x)
    return ModelBatch(
        model="m",
        source="test",
        partition=0,
        ts=ts,
        offsets=np.arange(start, start + n, dtype=np.int64),
        ids=[None] * n,
        clients=clients,
        model_versions=[None] * n,
        rows=[],
        numeric={f: x[:, j].copy() for j, f in enumerate(FEATURES)},
        categorical={"kind": np.array([f"k{int(v * 3) % 3}" for v in x[:, 2]], dtype=object)},
        scores=[{"0": 1 - float(v), "1": float(v)} for v in p],
    )


class Stream:
    """Benign clients sending queries round-robin, one time step per query."""

    def __init__(self, seed: int, clients: int = 40) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.normal(0, 0.7, size=(clients, len(FEATURES)))
        self.names = [f"c{i}" for i in range(clients)]
        self.t = 0.0
        self.offset = 0
        self.shift = 0.0  # added to feature "a" of every benign query (an upstream change)

    def benign(self, n: int) -> tuple[np.ndarray, list[str | None]]:
        who = self.rng.integers(len(self.names), size=n)
        x = self.centres[who] + self.rng.normal(0, 1.0, size=(n, len(FEATURES)))
        x[:, 0] += self.shift
        return x, [self.names[i] for i in who]

    def batch(self, x: np.ndarray, clients: list[str | None]) -> ModelBatch:
        ts = self.t + np.arange(len(x)) * 2.0
        batch = make_batch(x, clients, ts, self.offset)
        self.t = float(ts[-1]) + 2.0
        self.offset += len(x)
        return batch


def warmed(
    seed: int = 1, settings: QueryPatternSettings = SETTINGS, calibrated: bool = True
) -> tuple[QueryPatternDetector, Stream]:
    detector = QueryPatternDetector("m", settings)
    stream = Stream(seed)
    for _ in range(9):
        assert detector.update(stream.batch(*stream.benign(500))) == []
    assert detector.calibrated == calibrated
    return detector, stream


def with_settings(**changes: object) -> QueryPatternSettings:
    return QueryPatternSettings.model_validate({**SETTINGS.model_dump(), **changes})


def run_mixed(
    detector: QueryPatternDetector,
    stream: Stream,
    attack: np.ndarray,
    attack_clients: list[str],
    per_batch: int = 20,
) -> list[Finding]:
    """Interleaves the attack (per_batch queries per batch) with benign traffic."""
    findings = []
    for start in range(0, len(attack), per_batch):
        bx, bc = stream.benign(200)
        x = np.vstack([bx, attack[start : start + per_batch]])
        clients = bc + attack_clients[start : start + per_batch]
        order = stream.rng.permutation(len(x))
        findings += detector.update(stream.batch(x[order], [clients[i] for i in order]))
    return findings


class SectorStream(Stream):
    """The test stream with an 8-class model: the class is the sector of (a, b)."""

    def batch(self, x: np.ndarray, clients: list[str | None]) -> ModelBatch:
        batch = super().batch(x, clients)
        sector = np.floor((np.arctan2(x[:, 1], x[:, 0]) + np.pi) / (np.pi / 4)).astype(int)
        batch.predictions = [f"s{v % 8}" for v in sector.tolist()]
        return batch


def population(seed: int, spread: float) -> tuple[QueryPatternDetector, Stream]:
    """A detector warmed on benign clients whose centres are `spread` times the usual."""
    detector = QueryPatternDetector("m", SETTINGS)
    stream = SectorStream(seed)
    stream.centres *= spread
    for _ in range(9):
        detector.update(stream.batch(*stream.benign(500)))
    return detector, stream


def whole_population(stream: Stream, n: int) -> np.ndarray:
    """Rows drawn like the population's as a whole: each from a random client's corner."""
    who = stream.rng.integers(len(stream.centres), size=n)
    return stream.centres[who] + stream.rng.normal(0, 1.0, size=(n, len(FEATURES)))


def first_by_client(findings: list[Finding]) -> dict[str, Finding]:
    out: dict[str, Finding] = {}
    for f in findings:
        out.setdefault(f.subject, f)
    return out


def boundary_probe(rng: np.random.Generator, n: int) -> np.ndarray:
    """Tiny perturbations around a point on the decision boundary (a + b = 0), moving every
    coordinate (with 4 features, steps of 0.03 leave 2 coordinates within `repeat_distance`
    of a neighbour often enough to pass for an entity re-scored)."""
    centre = np.array([0.5, -0.5, 0.3, 0.1])
    return centre + rng.normal(0, 0.05, size=(n, len(FEATURES)))


def test_calibration_helpers_give_small_p_values_only_beyond_benign() -> None:
    rng = np.random.default_rng(0)
    benign = rng.gamma(2.0, 1.0, 2000)
    tail = TailPValue(benign)
    fresh = np.array([tail(v) for v in rng.gamma(2.0, 1.0, 2000)])
    assert 0.03 < (fresh <= 0.05).mean() < 0.08  # close to uniform where it matters
    assert tail(benign.max() + 10) < 1e-4  # extrapolated past what the sample shows
    assert tail(3.0) > tail(5.0) > tail(8.0)
    # A minority of unusual benign clients lengthens the tail instead of being flagged.
    mixed = TailPValue(np.concatenate([benign, rng.gamma(2.0, 1.0, 100) + 6]))
    assert mixed(12.0) > tail(12.0)


def test_benign_population_is_not_flagged_and_boundary_probing_is() -> None:
    detector, stream = warmed()
    probe = boundary_probe(stream.rng, 200)
    findings = run_mixed(detector, stream, probe, ["prober"] * 200)
    flagged = first_by_client(findings)
    assert set(flagged) == {"prober"}
    finding = flagged["prober"]
    assert finding.kind == Kind.SUSPICIOUS_CLIENT
    # At its first look (20 queries): low margins; the distances need more neighbours.
    assert "low_margin_share" in finding.details["detectors_fired"]
    assert finding.details["queries_seen"] <= 100
    assert finding.support == finding.details["queries_seen"]
    assert finding.value <= finding.threshold
    assert finding.details["statistics"]["low_margin_share"]["value"] > 0.5
    assert finding.details["pattern_began"] <= finding.ts


def test_a_fast_clients_pattern_began_at_its_first_query_though_its_ring_moved_on() -> None:
    """600 queries in one batch: flagged at its first look (its 20th query), when the batch
    ends its ring holds only the last 256. The finding still dates the pattern from its
    first query, never after the look (the population leaves it out from there)."""
    detector, stream = warmed(seed=2)
    uniform = stream.rng.uniform(-12, 12, size=(600, len(FEATURES)))
    findings = run_mixed(detector, stream, uniform, ["extractor"] * 600, per_batch=600)
    first = first_by_client(findings)["extractor"]
    assert first.details["queries_seen"] <= 30
    assert first.details["pattern_began"] == detector.clients["extractor"].first_seen
    assert first.details["pattern_began"] < first.ts


def test_a_findings_details_describe_the_queries_its_look_saw() -> None:
    """A fast client flagged at one of its first looks, then sending one input 400 times in
    the same batch: the finding describes the queries that look saw (all distinct), not the
    ring at the batch's end (by then mostly that one input)."""
    detector, stream = warmed(seed=2)
    uniform = stream.rng.uniform(-12, 12, size=(30, len(FEATURES)))
    attack = np.vstack([uniform, np.repeat(uniform[-1:], 400, axis=0)])
    bx, bc = stream.benign(200)
    batch = stream.batch(np.vstack([bx, attack]), bc + ["extractor"] * len(attack))
    first = first_by_client(detector.update(batch))["extractor"]
    assert first.details["queries_seen"] <= 30
    assert first.details["unique_input_ratio"] == 1.0
    assert first.details["pattern_began"] == detector.clients["extractor"].first_seen
    ring = detector.window(detector.clients["extractor"])
    assert len(np.unique(ring[:, EXACT])) < 0.1 * len(ring)


def test_out_of_distribution_extraction_is_flagged() -> None:
    detector, stream = warmed(seed=2)
    uniform = stream.rng.uniform(-12, 12, size=(200, len(FEATURES)))
    flagged = first_by_client(run_mixed(detector, stream, uniform, ["extractor"] * 200))
    assert set(flagged) == {"extractor"}
    assert "ood_share" in flagged["extractor"].details["detectors_fired"]


def test_attack_split_over_keys_is_linked_through_shared_fingerprints() -> None:
    detector, stream = warmed(seed=3)
    # One sequence of near-duplicate queries sent round-robin under five keys.
    base = stream.rng.normal(0, 1, size=(60, len(FEATURES))) + 3.0
    walk = np.repeat(base, 5, axis=0) + stream.rng.normal(0, 1e-3, size=(300, len(FEATURES)))
    keys = [f"split-{i % 5}" for i in range(300)]
    flagged = first_by_client(run_mixed(detector, stream, walk, keys, per_batch=25))
    assert set(flagged) == {f"split-{i}" for i in range(5)}
    fired = [set(finding.details["detectors_fired"]) for finding in flagged.values()]
    assert sum("shared_fingerprints" in names for names in fired) >= 4
    for key, finding in flagged.items():
        others = set(finding.details["linked_clients"])
        assert others and key not in others and others <= set(flagged)
        group = set(finding.details["linked_group"])
        assert others <= group <= set(flagged) - {key}


def test_sharing_fingerprints_links_both_keys_whoever_queried_first() -> None:
    """A split attacker's key whose queries its siblings came back to, but which never came
    back to theirs, is linked to them all the same: sharing is mutual."""
    detector, stream = warmed(seed=3)
    base = stream.rng.normal(0, 1, size=(60, len(FEATURES))) + 3.0
    jitter = stream.rng.normal(0, 1e-3, size=(3, 60, len(FEATURES)))
    run_mixed(detector, stream, base + jitter[0], ["first"] * 60, per_batch=25)
    assert detector.clients["first"].linked is None
    run_mixed(detector, stream, base + jitter[1], ["copier"] * 60, per_batch=25)
    owner_of = {name: owner for owner, name in detector.owner_names.items()}
    assert owner_of["copier"] in (detector.clients["first"].linked or {})
    assert owner_of["first"] in (detector.clients["copier"].linked or {})
    # The first key's incident comes to name the copier at its next looks.
    later = run_mixed(detector, stream, base + jitter[2], ["first"] * 60, per_batch=25)
    named = [f.details["linked_clients"] for f in later if f.subject == "first"]
    assert named and "copier" in named[-1]


@pytest.mark.parametrize("siblings_join", [True, False])
def test_a_flagged_key_is_reported_again_when_siblings_join_its_group(
    siblings_join: bool,
) -> None:
    """A split attacker's keys mostly share fingerprints after the first of them is flagged;
    its incident must come to name them, without a finding per look otherwise."""
    detector, stream = warmed(seed=3)
    base = stream.rng.normal(0, 1, size=(80, len(FEATURES))) + 3.0
    walk = np.repeat(base, 5, axis=0) + stream.rng.normal(0, 1e-3, size=(400, len(FEATURES)))
    alone = run_mixed(detector, stream, walk[:100], ["split-0"] * 100, per_batch=25)
    assert first_by_client(alone)["split-0"].details["linked_group"] == []
    keys = [f"split-{i % 5}" if siblings_join else "split-0" for i in range(300)]
    later = [f for f in run_mixed(detector, stream, walk[100:], keys, per_batch=25)]
    first = [f for f in later if f.subject == "split-0"]
    if siblings_join:
        assert set(first[-1].details["linked_group"]) == {f"split-{i}" for i in range(1, 5)}
        sizes = [len(f.details["linked_group"]) for f in first]
        assert sizes == sorted(set(sizes))  # one more finding per growth, none otherwise
    else:
        # 30 more looks, 20 of them within the throttle after the first finding's look.
        assert len(first) <= 2
        assert all(f.details["linked_group"] == [] for f in first)


@pytest.mark.parametrize("seed", [4, 5])
def test_a_key_sharing_queries_with_a_flagged_key_is_judged_with_looks_of_its_own(
    seed: int,
) -> None:
    """A split attacker's quieter key: a long ordinary history today (its ring looks'
    thresholds spent down), then copies of a flagged key's queries. Its ring test alone
    does not cross; the linked test, whose looks begin when it shares with a flagged key,
    does. (The copied queries sit at 2.5, not 3: copies that far out are atypical enough
    for the ring test alone, `atypical_share`.)"""
    detector, stream = warmed(seed=seed)
    rng = np.random.default_rng(seed)
    centre = stream.centres[0]
    history = centre + rng.normal(0, 1.0, size=(600, len(FEATURES)))
    assert run_mixed(detector, stream, history, ["quiet"] * 600) == []
    n = 200
    base = rng.normal(0, 1, size=(n, len(FEATURES))) + 2.5
    quiet = centre + rng.normal(0, 1.0, size=(n, len(FEATURES)))
    copies = rng.random(n) < 0.9
    quiet[copies] = base[copies] + rng.normal(0, 1e-3, size=(copies.sum(), len(FEATURES)))
    attack = np.empty((2 * n, len(FEATURES)))
    attack[0::2] = base + rng.normal(0, 1e-3, size=base.shape)
    attack[1::2] = quiet
    flagged = first_by_client(run_mixed(detector, stream, attack, ["loud", "quiet"] * n))
    assert set(flagged) == {"loud", "quiet"}
    details = flagged["quiet"].details
    assert details["test"] == "linked" and "loud" in details["linked_clients"]
    ring, linked = details["tests"]["ring"], details["tests"]["linked"]
    assert ring["p_value"] > ring["threshold"]  # the ring test alone would not flag it
    assert linked["p_value"] <= linked["threshold"]
    # The ring test's threshold restarts with each ring of the day's looks (a ring's worth
    # of new queries: buffer_size / check_every looks).
    spending = Spending(
        SETTINGS.false_clients_per_thousand / 1000,
        looks_per_ring=-(-SETTINGS.buffer_size // SETTINGS.check_every),
    )
    assert ring["look_of_day"] > spending.looks_per_ring
    assert ring["threshold"] == pytest.approx(
        spending.ring_threshold(ring["look_of_day"]), rel=1e-2
    )
    assert linked["look_of_day"] < ring["look_of_day"]
    assert len(details["detectors_fired"]) == len(set(details["detectors_fired"]))


def test_the_linked_group_follows_links_through_other_clients() -> None:
    """A key that shares fingerprints with some of its siblings only is still named with
    all of them: the group is the connected component of the shared-fingerprint links."""
    detector = QueryPatternDetector("m", SETTINGS)
    owners = {name: 100 + i for i, name in enumerate("abcde")}
    for name, owner in owners.items():
        detector._states([name], [owner])
    chain = [("a", "b"), ("b", "c"), ("c", "d")]  # e links to nobody
    for one, other in chain:
        for mine, theirs in ((one, other), (other, one)):
            state = detector.clients[mine]
            state.linked = (state.linked or Counter()) + Counter({owners[theirs]: 1})
    assert detector._linked_group("a", detector.clients["a"]) == ["b", "c", "d"]
    assert detector._linked_group("c", detector.clients["c"]) == ["a", "b", "d"]
    assert detector._linked_group("e", detector.clients["e"]) == []


def test_a_key_sharing_now_enters_a_full_set_of_older_links() -> None:
    """A client remembers at most `LINKED_CLIENTS` others; one sharing with it now must
    enter even when all are taken by older links (a split attacker's quieter key whose
    ordinary queries share with many benign keys), and rise as it keeps sharing."""
    detector = QueryPatternDetector("m", SETTINGS)
    names = ["key"] + [f"old-{i}" for i in range(LINKED_CLIENTS)] + ["sibling"]
    owners = {name: 100 + i for i, name in enumerate(names)}
    for name, owner in owners.items():
        detector._states([name], [owner])
    for _ in range(3):
        detector._link({owners["key"]: {owners[f"old-{i}"] for i in range(LINKED_CLIENTS)}})
    assert len(detector.clients["key"].linked or {}) == LINKED_CLIENTS
    for _ in range(5):
        detector._link({owners["sibling"]: {owners["key"]}})  # mutual: the key learns it too
    links = detector.clients["key"].linked or Counter()
    assert len(links) == LINKED_CLIENTS
    assert links.most_common(1)[0][0] == owners["sibling"]
    assert detector.clients["sibling"].linked == Counter({owners["key"]: 5})


def test_re_scoring_the_same_entities_is_not_flagged() -> None:
    detector, stream = warmed(seed=4)
    entities = stream.rng.normal(0, 1, size=(5, len(FEATURES)))
    again = entities[stream.rng.integers(5, size=300)]
    # At an ordinary client's rate (40 clients share 200 queries a batch).
    findings = run_mixed(detector, stream, again, ["rescorer"] * 300, per_batch=5)
    assert findings == []
    assert detector.clients["rescorer"].count == 300


def _expected_neighbours(
    history: list[np.ndarray], before: int, x: np.ndarray, s: QueryPatternSettings
) -> tuple[float, float]:
    """(min distance, log mean k-NN distance) of query x by brute force: its candidates are
    the last `buffer_size` queries of its client before the batch (`history[:before]`) and the
    client's earlier queries of the batch. The min distance is the nearest one's, whatever
    entity it is, unless x repeats it or moves one coordinate of one of the k nearest (NaN);
    the k-NN, of the 3k nearest without the same entity again."""
    earlier = np.array(history[max(0, before - s.buffer_size) :])
    if len(earlier) == 0:
        return np.nan, np.nan
    d2 = ((earlier - x) ** 2).sum(axis=1)
    nearest = np.argsort(d2, kind="stable")[: 3 * s.k_neighbours]
    changed = (np.abs(earlier[nearest] - x) > s.repeat_distance).sum(axis=1)
    stirred = (np.abs(earlier[nearest[: s.k_neighbours]] - x) > PROBE_FLOOR).sum(axis=1)
    one_moved = bool((stirred == 1).any())
    closest = float(np.sqrt(d2[nearest[0]])) if changed[0] and not one_moved else np.nan
    kept = np.sort(d2[nearest][changed > s.entity_changes])
    if len(kept) < s.k_neighbours:
        return closest, np.nan
    return closest, float(np.log(np.sqrt(kept[: s.k_neighbours]).mean() + 1e-6))


def test_batched_neighbour_search_matches_brute_force() -> None:
    """The padded per-segment products, masks and candidate checks give every query the
    neighbours a per-query search gives: clients with full and partial rings, one-query and
    bursty clients (more queries in a batch than the ring holds), re-scored entities."""
    settings = with_settings(buffer_size=32)
    detector = QueryPatternDetector("m", settings)
    stream = Stream(seed=11, clients=12)
    detector.set_reference(stream.batch(*stream.benign(300)))  # every later event is judged
    history: dict[str, list[np.ndarray]] = {}
    seen = settings.reference_size
    for step in range(8):
        x, clients = stream.benign(120)
        if step >= 2:  # a burst longer than the ring, a newcomer, a re-scorer
            burst = stream.centres[0] + stream.rng.normal(0, 0.3, size=(45, len(FEATURES)))
            fresh = stream.rng.normal(0, 1.0, size=(step, len(FEATURES)))
            again = np.repeat(x[:4], 3, axis=0)
            again[:, 0] += stream.rng.normal(0, 1.0, size=len(again))  # one field updated
            x = np.vstack([x, burst, fresh, again])
            clients += ["burst"] * 45 + [f"new{step}"] * step + ["again"] * len(again)
        batch = stream.batch(x, clients)
        detector.update(batch)
        skip = min(len(batch), max(0, settings.reference_size - seen))  # still the reference
        seen += len(batch)
        if detector.profile is None:
            continue
        encoded = detector.profile.encode(batch)[skip:].astype(np.float32).astype(np.float64)
        before = {c: len(h) for c, h in history.items()}
        expected: dict[str, list[tuple[float, float]]] = {}
        for row, client in zip(encoded, batch.clients[skip:], strict=True):
            past = history.setdefault(client, [])
            result = _expected_neighbours(past, before.get(client, 0), row, settings)
            expected.setdefault(client, []).append(result)
            past.append(row)
        for client, results in expected.items():
            state = detector.clients[client]
            count = state.count
            for q, (closest, knn) in enumerate(results):
                number = count - len(results) + q
                if number < count - settings.buffer_size:
                    continue  # overwritten within the batch
                record = detector.ring_records[state.slot, number % settings.buffer_size]
                np.testing.assert_allclose(record[6], closest, rtol=1e-3, atol=1e-3)
                np.testing.assert_allclose(record[5], knn, rtol=1e-3, atol=1e-3)


def test_statistics_of_many_clients_match_one_at_a_time() -> None:
    detector, _ = warmed(seed=12)
    states = list(detector.clients.values())
    together = detector._statistics(states)
    assert together.shape == (len(states), len(STATISTICS))
    for i, state in enumerate(states):
        alone = detector._statistics([state])
        np.testing.assert_allclose(together[i], alone[0], rtol=1e-12)


def test_shapiro_w_matches_scipy_for_rows_of_any_length() -> None:
    rng = np.random.default_rng(3)
    rows = np.full((4, 60), np.nan)
    lengths = [60, 41, 25, 3]
    for row, n in zip(rows, lengths, strict=True):
        row[:n] = np.sort(rng.gamma(2.0, 1.0, n))
    w = shapiro_w(rows, np.array(lengths))
    for row, n, value in zip(rows, lengths, w, strict=True):
        assert value == pytest.approx(stats.shapiro(row[:n]).statistic, abs=1e-9)
    same = np.full((1, 10), 2.0)
    assert np.isnan(shapiro_w(same, np.array([10]))[0])  # all equal: undefined


def test_bounded_state_evicts_least_recently_seen_clients() -> None:
    detector = QueryPatternDetector("m", with_settings(max_clients=10, buffer_size=32))
    stream = Stream(seed=5)
    detector.set_reference(stream.batch(*stream.benign(300)))  # no learning window to judge
    # Batches of 4 clients each, 40 clients in all: the 10 most recently seen stay.
    for k in range(10):
        x, _ = stream.benign(20)
        detector.update(stream.batch(x, [f"c{4 * k + i % 4}" for i in range(20)]))
    assert set(detector.clients) == {f"c{i}" for i in range(30, 40)}
    assert detector.evicted == 30
    assert detector.ring_records.shape[:2] == (10, 32)  # a ring per client, at most 10
    # A batch with more callers than the cap: known clients stay, new ones beyond it are not
    # tracked (counted), so a flood of new keys cannot flush a client's history.
    x, _ = stream.benign(13)
    detector.update(stream.batch(x, ["c39"] + [f"flood{i}" for i in range(12)]))
    assert "c39" in detector.clients and "flood8" in detector.clients
    assert "flood9" not in detector.clients
    assert (detector.evicted, detector.untracked) == (39, 3)
    x, _ = stream.benign(3)
    detector.update(stream.batch(x, ["new", None, "new"]))
    assert next(reversed(detector.clients)) == "new"
    assert detector.anonymous == 1


def test_memory_budget_bounds_the_rings_whatever_the_number_of_clients() -> None:
    budget = 3 * 2**20
    detector, stream = warmed(seed=9, settings=with_settings(max_state_mb=3.0))
    cap = budget // detector.client_bytes()
    assert detector.tracked_cap() == cap < 100  # far below max_clients
    probe = boundary_probe(stream.rng, 600)
    findings: list[Finding] = []
    one_off = 0
    for start in range(0, len(probe), 20):
        # 200 benign queries of the 40 regulars, 20 of the prober, 30 one-off clients.
        bx, bc = stream.benign(200)
        fx, _ = stream.benign(30)
        x = np.vstack([bx, probe[start : start + 20], fx])
        clients = bc + ["prober"] * 20 + [f"once{one_off + i}" for i in range(30)]
        one_off += 30
        order = stream.rng.permutation(len(x))
        findings += detector.update(stream.batch(x[order], [clients[i] for i in order]))
        per_client = (
            detector.ring_vectors.nbytes
            + detector.ring_records.nbytes
            + detector.coverage.nbytes
            + detector.null.values.nbytes
            + detector.null.stamps.nbytes
        )
        assert per_client <= budget
        assert len(detector.clients) <= cap
    assert one_off == 900 and detector.evicted >= one_off - cap
    assert set(first_by_client(findings)) == {"prober"}
    assert findings[-1].details["evicted_clients"] > 0
    # A flood of new keys in one batch does not evict the prober.
    fx, _ = stream.benign(3 * cap)
    x = np.vstack([probe[:5], fx])
    detector.update(stream.batch(x, ["prober"] * 5 + [f"flood{i}" for i in range(3 * cap)]))
    assert "prober" in detector.clients and detector.untracked > 0
    # The snapshot holds the rows in use: the rings' budget, the fingerprint table, a little.
    data = detector.snapshot()
    table = detector.fp_keys.nbytes + detector.fp_owners.nbytes + detector.fp_ts.nbytes
    assert len(data) < budget + table + 2**19
    twin = QueryPatternDetector("m", detector.settings)
    assert twin.restore(data)
    assert list(twin.clients) == list(detector.clients)
    assert len(twin.ring_vectors) == len(detector.clients)  # no spare rows
    for name, state in detector.clients.items():  # the entries in use (the rest is never read)
        filled = min(state.count, 256)
        mine = twin.clients[name]
        assert np.array_equal(
            twin.ring_vectors[mine.slot, :filled], detector.ring_vectors[state.slot, :filled]
        )
        assert np.array_equal(twin.window(mine), detector.window(state), equal_nan=True)
    x, clients = stream.benign(50)
    assert twin.update(stream.batch(x, clients)) == []


def test_an_old_pickled_checkpoint_is_refused_never_unpickled() -> None:
    detector, _ = warmed(seed=10)
    twin = QueryPatternDetector("m", SETTINGS)
    # A pickle that would run code if loaded: restore refuses it unread (the pipeline then
    # builds the monitor afresh from the stored reference).
    with pytest.raises(StateError, match="not a data-only checkpoint"):
        twin.restore(pickle.dumps(dict(detector.__dict__)))
    assert twin.profile is None and not twin.clients  # untouched, as constructed
    other = QueryPatternDetector("m", with_settings(check_every=20))
    assert not other.restore(detector.snapshot())  # other settings: not resumed


def test_a_smaller_budget_at_restore_keeps_the_most_recent_clients() -> None:
    detector, stream = warmed(seed=10)
    state = state_codec.decode(detector.snapshot())
    # As if checkpointed with this budget, and more clients than it holds.
    state["configuration"]["settings"]["max_state_mb"] = 0.5
    small = QueryPatternDetector("m", with_settings(max_state_mb=0.5))
    assert small.restore(state_codec.encode(state))
    cap = small.tracked_cap()
    assert cap < 40 and len(small.ring_records) == cap and len(small.clients) == cap
    assert list(small.clients) == list(detector.clients)[-cap:]
    assert small.evicted == detector.evicted + 40 - cap
    for client, st in small.clients.items():
        before = detector.clients[client]
        assert np.array_equal(small.window(st), detector.window(before), equal_nan=True)
    x, clients = stream.benign(50)
    small.update(stream.batch(x, clients))
    assert len(small.clients) == cap


def test_a_checkpoint_from_before_debiasing_drops_its_region_coverage_voices() -> None:
    """Voices checkpointed before region_coverage was debiased are plug-in values, lower by
    the bias: restored, they leave the null (the others stay), and its new voices come in."""
    detector, stream = warmed(seed=10)
    region = STATISTICS.index("region_coverage")
    rows = len(detector.clients)
    assert (~np.isnan(detector.null.values[:rows, :, region])).any()
    state = state_codec.decode(detector.snapshot())
    del state["state"]["region_debiased"]
    old = QueryPatternDetector("m", SETTINGS)
    assert old.restore(state_codec.encode(state))
    current = QueryPatternDetector("m", SETTINGS)  # a checkpoint of this version keeps them
    assert current.restore(detector.snapshot())
    others = [i for i in range(len(STATISTICS)) if i != region]
    for name, st in detector.clients.items():
        before = detector.null.values[st.slot]
        after = old.null.values[old.clients[name].slot]
        assert np.isnan(after[:, region]).all()
        assert np.array_equal(after[:, others], before[:, others], equal_nan=True)
        kept = current.null.values[current.clients[name].slot]
        assert np.array_equal(kept, before, equal_nan=True)
    x, clients = stream.benign(400)
    old.update(stream.batch(x, clients))
    assert (~np.isnan(old.null.values[: len(old.clients), :, region])).any()


def test_a_restored_detector_judges_with_the_tails_as_last_refreshed() -> None:
    """Voices recorded since the last refresh do not move the tails until the next one, in
    the detector checkpointed and in the one restored from it alike; a checkpoint from
    before the tails were kept refits them from its voices."""
    detector, _ = warmed(seed=12)
    null = detector.null
    stale = null.u.copy()
    null.refresh(detector.last_ts + 1.0, len(detector.clients))
    assert not np.array_equal(np.nan_to_num(stale), np.nan_to_num(null.u))  # voices since
    null.u = stale  # as if not refreshed since
    twin = QueryPatternDetector("m", SETTINGS)
    assert twin.restore(detector.snapshot())
    np.testing.assert_array_equal(twin.null.u, stale)
    envelope = state_codec.decode(detector.snapshot())
    del envelope["state"]["null"]["fitted"]
    old = QueryPatternDetector("m", SETTINGS)
    assert old.restore(state_codec.encode(envelope))
    assert not np.array_equal(np.nan_to_num(old.null.u), np.nan_to_num(stale))
    forged = state_codec.decode(detector.snapshot())
    forged["state"]["null"]["fitted"]["u"] = stale[:-1]  # a bucket short
    with pytest.raises(StateError, match="fitted tails"):
        QueryPatternDetector("m", SETTINGS).restore(state_codec.encode(forged))


def test_a_checkpoint_without_reported_groups_restores_its_clients() -> None:
    """Checkpoints before `reported_group` and `linked_looks` hold two client fields fewer:
    they restore with the other fields as they were, no group reported and no linked look
    made yet."""
    detector, _ = warmed(seed=11)
    for state in detector.clients.values():
        state.reported_group, state.linked_looks = 3, 2
    envelope = state_codec.decode(detector.snapshot())
    fields = envelope["state"]["clients"]["fields"]
    envelope["state"]["clients"]["fields"] = fields[:, :-2]
    old = QueryPatternDetector("m", SETTINGS)
    assert old.restore(state_codec.encode(envelope))
    assert list(old.clients) == list(detector.clients)
    for name, state in old.clients.items():
        assert state.reported_group == 0 and state.linked_looks == 0
        assert state.count == detector.clients[name].count
        assert state.flagged_looks == detector.clients[name].flagged_looks


def test_snapshot_restore_continues_identically() -> None:
    detector, stream = warmed(seed=6)
    probe = boundary_probe(stream.rng, 200)
    twin = QueryPatternDetector("m", SETTINGS)
    assert twin.restore(detector.snapshot())
    rng_state = stream.rng.bit_generator.state
    t, offset = stream.t, stream.offset
    first = run_mixed(detector, stream, probe, ["prober"] * 200)
    stream.rng.bit_generator.state = rng_state
    stream.t, stream.offset = t, offset
    second = run_mixed(twin, stream, probe, ["prober"] * 200)
    assert first and [f.position for f in first] == [f.position for f in second]
    assert [f.details for f in first] == [f.details for f in second]
    data = twin.snapshot()
    assert state_codec.is_encoded(data) and b"pickle" not in data
    again = QueryPatternDetector("m", SETTINGS)
    assert again.restore(data) and list(again.clients) == list(twin.clients)
    mine, theirs = (state_codec.decode(d)["state"] for d in (again.snapshot(), data))
    assert mine["clients"]["names"] == theirs["clients"]["names"]
    assert np.array_equal(mine["clients"]["fields"], theirs["clients"]["fields"])
    assert np.array_equal(mine["ring_records"], theirs["ring_records"], equal_nan=True)


def test_client_ids_can_be_stored_as_keyed_hashes() -> None:
    settings = with_settings(client_id_key="s3cret")
    detector, stream = warmed(seed=7, settings=settings)
    probe = boundary_probe(stream.rng, 200)
    flagged = first_by_client(run_mixed(detector, stream, probe, ["alice@example.com"] * 200))
    assert len(flagged) == 1
    subject = next(iter(flagged))
    assert subject.startswith("hmac:") and "alice" not in subject
    other_key = QueryPatternDetector("m", with_settings(client_id_key="x"))
    assert other_key._client_key("alice@example.com") != subject
    assert b"alice" not in detector.snapshot()
    names = state_codec.decode(detector.snapshot())["state"]["clients"]["names"]
    assert names and all(not c.startswith("c") for c in names)


def test_the_client_id_key_can_come_from_the_environment() -> None:
    settings = load_settings(None, environ={"BULWARK_CLIENT_ID_KEY": "from-env"})
    key = settings.detectors.query_patterns.client_id_key
    assert key is not None and key.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)


def test_a_trusted_client_is_neither_tracked_nor_judged(tmp_path) -> None:
    """A known tool named in `trusted_clients` (by its id as sent, also with a client_id_key)
    sends what would be flagged, and is not: not tracked, no fingerprints; others still are."""
    config = tmp_path / "bulwark.toml"
    config.write_text(
        '[detectors.query_patterns]\nreference_size = 300\nclient_id_key = "k"\n'
        'trusted_clients = ["review-tool"]\n'
    )
    settings = load_settings(config, environ={}).detectors.query_patterns
    assert settings.trusted_clients == {"review-tool"}
    detector, stream = warmed(seed=2, settings=settings)
    uniform = stream.rng.uniform(-12, 12, size=(200, len(FEATURES)))
    keys = ["review-tool", "extractor"] * 100
    flagged = first_by_client(run_mixed(detector, stream, uniform, keys))
    assert set(flagged) == {detector._client_key("extractor")}
    assert detector._client_key("review-tool") not in detector.clients
    assert flagged[detector._client_key("extractor")].details["linked_clients"] == []


def test_settings_are_validated_with_the_key_named(tmp_path) -> None:
    config = tmp_path / "bulwark.toml"
    config.write_text("[detectors.query_patterns]\nfalse_clients_per_thousand = 0\n")
    with pytest.raises(ConfigError, match=r"query_patterns\.false_clients_per_thousand"):
        load_settings(config, environ={})
    config.write_text("[detectors.query_patterns]\nmax_state_mb = 0\n")
    with pytest.raises(ConfigError, match=r"query_patterns\.max_state_mb"):
        load_settings(config, environ={})
    config.write_text("[detectors.query_patterns]\nno_such_option = 1\n")
    with pytest.raises(ConfigError, match=r"query_patterns\.no_such_option"):
        load_settings(config, environ={})


def test_replay_opens_a_suspicious_client_incident(tmp_path, sqlite_url: str) -> None:
    stream = Stream(seed=8)
    lines = []
    x, clients = stream.benign(4000)
    probe = boundary_probe(stream.rng, 150)
    x = np.vstack([x, probe])
    clients = clients + ["prober"] * 150
    order = np.concatenate([np.arange(4000), 4000 + np.arange(150)])
    mix = np.concatenate([order[:3500], stream.rng.permutation(order[3500:])])
    for i, row in enumerate(mix):
        p = float(_probability(x[row : row + 1])[0])
        lines.append(
            json.dumps(
                {
                    "type": "prediction",
                    "model": "m",
                    "id": f"p{i}",
                    "ts": 1_767_225_600 + 2.0 * i,
                    "client": clients[row],
                    "features": {f: float(x[row, j]) for j, f in enumerate(FEATURES)},
                    "prediction": int(p > 0.5),
                    "scores": {"0": 1 - p, "1": p},
                }
            )
        )
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    config = tmp_path / "bulwark.toml"
    config.write_text("batch_size = 500\n[detectors.query_patterns]\nreference_size = 300\n")
    done = run_cli("replay", str(events), "--config", str(config), "--db", sqlite_url)
    assert done.returncode == 0, done.stderr
    listed = run_cli(
        "incidents", "list", "--kind", "suspicious_client", "--format", "json", "--db", sqlite_url
    )
    assert listed.returncode == 0, listed.stderr
    incidents = json.loads(listed.stdout)
    assert [i["subject"] for i in incidents] == ["prober"]
    details = incidents[0]["details"]
    assert {"knn_distance", "low_margin_share", "boundary_pairs"} & set(details["detectors_fired"])
    assert details["queries_seen"] <= 150
    baseline = details["statistics"][details["detectors_fired"][0]]["baseline"]
    assert baseline["source"] in (
        "population",
        "larger history",
        "smaller history",
        "reference prior",
    )
    assert {"history", "clients", "tail_start", "tail_scale"} <= set(baseline)


def test_a_model_wide_input_shift_flags_no_benign_client() -> None:
    """Every client's inputs move together (a feature shifts by 3 IQRs): distances, shares
    and coverage move for all of them, and so does the population null they are judged by."""
    detector, stream = warmed(seed=21)
    findings = []
    for _ in range(30):
        x, clients = stream.benign(500)
        x[:, 0] += 3.0
        x[:, 1] *= 0.3  # and one narrows: every client's neighbours get closer
        findings += detector.update(stream.batch(x, clients))
    assert findings == []
    assert all(state.count > 256 for state in detector.clients.values())  # full rings judged


def test_a_range_the_whole_traffic_left_does_not_hide_an_out_of_range_client() -> None:
    """After a shift that puts one feature out of the reference's range for every client,
    that feature's flags say nothing about any one client: a uniform-random extractor, out
    of range on the others, still stands out by `ood_share` (counting the shifted feature,
    every benign client's share is near 1 and the extractor's no higher)."""
    detector, stream = warmed(seed=24)
    stream.shift = 8.0
    # Longer than the null's window (a day, 2 s a query): the voices from before are stale.
    for _ in range(90):
        assert detector.update(stream.batch(*stream.benign(500))) == []
    uniform = stream.rng.uniform(-12, 12, size=(200, len(FEATURES)))
    uniform[:, 0] += stream.shift  # the extractor's inputs arrive through the same upstream
    flagged = first_by_client(run_mixed(detector, stream, uniform, ["extractor"] * 200))
    assert set(flagged) == {"extractor"}
    details = flagged["extractor"].details
    # Out of range on the kept features (and far from every input cell, which fires first).
    assert "atypical_share" in details["detectors_fired"]
    assert details["statistics"]["ood_share"]["p_value"] < 1e-4
    assert details["ranges_left_by_traffic"] == ["a"]


@pytest.mark.parametrize("seed", [25, 28])
def test_a_sudden_shift_stops_counting_before_its_own_batches_are_judged(seed: int) -> None:
    """Two features jump by 8 IQRs for every client at once: at the next hourly refresh the
    traffic has left them, but the batches before it were judged with every client's flags
    on them counted against the null of before (on these seeds a benign client was flagged
    by `ood_share` or `atypical_share` within two batches). The typical caller of each batch
    leaves them at once (`TrafficRanges.leave`)."""
    detector, stream = warmed(seed=seed)
    shift = np.array([8.0, -8.0, 0.0, 0.0])
    for _ in range(20):
        x, clients = stream.benign(500)
        assert detector.update(stream.batch(x + shift, clients)) == []
    assert detector.ranges.left.tolist()[:2] == [True, True]
    assert detector.rows_traffic.left.all()


def test_a_move_off_the_rows_by_the_whole_traffic_does_not_hide_an_atypical_client() -> None:
    """After a shift of two features for every client, every query lies off the reference's
    rows (one extreme feature is set aside, not two), so the off-rows rule says nothing
    about any one client and is left out of `atypical_share` (`rows_traffic`): a
    uniform-random extractor, out of range and beyond the input cells on the kept features,
    still stands out by it."""
    detector, stream = warmed(seed=24)
    shift = np.array([8.0, -8.0, 0.0, 0.0])
    unshifted = stream.benign

    def shifted(n: int) -> tuple[np.ndarray, list[str | None]]:
        x, clients = unshifted(n)
        return x + shift, clients

    stream.benign = shifted  # type: ignore[method-assign]
    # Longer than the null's window (a day, 2 s a query): the voices from before are stale.
    for _ in range(90):
        assert detector.update(stream.batch(*stream.benign(500))) == []
    assert detector.rows_traffic.left.all()
    uniform = stream.rng.uniform(-12, 12, size=(200, len(FEATURES))) + shift
    flagged = first_by_client(run_mixed(detector, stream, uniform, ["extractor"] * 200))
    assert set(flagged) == {"extractor"}
    details = flagged["extractor"].details
    # Counting the rule, the benign shares' tail started near 0.6 and the extractor stood
    # out only after 120 queries, by `ood_share` alone.
    assert "atypical_share" in details["detectors_fired"]
    assert details["queries_seen"] <= 60
    assert details["rows_left_by_traffic"] is True


def test_queries_out_of_range_on_a_feature_the_traffic_then_leaves_stop_counting() -> None:
    """A client that queries through a shift before the typical client is seen out of range
    (a heavy user at night) keeps those queries in its ring for hours: once the traffic has
    left the feature, its ring's flags on it count no more (held-out segment seed 166: a
    heavy user flagged by `ood_share` seven hours after the shift, the feature already
    left)."""
    detector, stream = warmed(seed=25)
    stream.shift = 8.0  # feature "a" of every query leaves the reference's range
    x, _ = stream.benign(60)
    detector.update(stream.batch(x, ["early"] * 60))
    ood = STATISTICS.index("ood_share")
    early = detector.clients["early"]
    assert detector._statistics([early])[0, ood] > 0.5  # counted: "a" not left yet
    for _ in range(90):
        detector.update(stream.batch(*stream.benign(500)))
        if detector.ranges.left.any():
            break
    assert detector._ranges_left() == ["a"]
    assert detector.clients["early"] is early  # still tracked, its ring unchanged
    assert detector._statistics([early])[0, ood] == 0.0


def test_an_attacker_present_from_the_first_query_is_found() -> None:
    """No blind warm-up: the detector judges from its first look on, against the reference
    prior and then the few clients it has seen, with estimates the attacker cannot shape."""
    detector = QueryPatternDetector("m", SETTINGS)
    stream = Stream(seed=22)
    detector.set_reference(stream.batch(*stream.benign(300)))  # a stored reference
    assert detector.calibrated and not detector.clients
    probe = boundary_probe(stream.rng, 200)
    flagged = first_by_client(run_mixed(detector, stream, probe, ["early"] * 200))
    assert set(flagged) == {"early"}
    assert flagged["early"].details["queries_seen"] <= 40


@pytest.mark.parametrize("seed", [31, 32, 33])
def test_the_reference_prior_tightens_a_shares_tail_as_queries_accrue(seed: int) -> None:
    """Before any population exists, shares are judged against the reference prior: a level
    well above the reference's rate (3x + 0.05) whose tail narrows like a share's noise. A
    client with 30% of its queries out of range is flagged within 150 of them (a flat tail
    of 0.05 never flagged it); one with 15% is not."""
    flagged_after = {}
    for share in (0.15, 0.3):
        detector = QueryPatternDetector("m", SETTINGS)
        stream = Stream(seed)
        detector.set_reference(stream.batch(*stream.benign(600)))
        x, _ = stream.benign(300)
        x[stream.rng.random(300) < share, 2] = 40.0  # far out of the reference's range
        findings = []
        for start in range(0, 300, 10):
            findings += detector.update(stream.batch(x[start : start + 10], ["edge"] * 10))
        assert not detector.null.clients.any()  # judged by the prior alone
        first = first_by_client(findings).get("edge")
        flagged_after[share] = None if first is None else first.details["queries_seen"]
    assert flagged_after[0.15] is None
    assert flagged_after[0.3] is not None and flagged_after[0.3] <= 150


def test_a_fast_client_is_judged_per_check_every_queries_not_per_batch() -> None:
    detector, stream = warmed(seed=23)
    bx, bc = stream.benign(300)
    probe = boundary_probe(stream.rng, 300)
    x = np.vstack([bx, probe])
    clients = bc + ["burst"] * 300
    batch = stream.batch(x, clients)  # the attacker's 300 queries all in one batch
    findings = detector.update(batch)
    assert {f.subject for f in findings} == {"burst"}  # (then escalated within the batch)
    seen = findings[0].details["queries_seen"]
    assert seen <= 40 and seen % SETTINGS.check_every == 0
    assert findings[0].position.offset == batch.offsets[300 + seen - 1]  # at that query


def test_coordinate_probing_is_recognised_and_re_scoring_is_not() -> None:
    """ZOO-style finite differences (the same point, one coordinate at a time moved by tiny
    symmetric steps) are probes; a re-scorer nudging one field of its entities is not."""
    detector, stream = warmed(seed=24)
    point = np.array([0.2, 0.1, -0.3, 0.4])
    zoo = []
    while len(zoo) < 200:
        for i in stream.rng.permutation(len(FEATURES)):
            step = np.zeros(len(FEATURES))
            step[i] = 1e-3
            zoo += [point + step, point - step]
        point = point + stream.rng.normal(0, 0.2, len(FEATURES))
    entities = stream.rng.normal(0, 1, size=(8, len(FEATURES)))
    nudged = entities[stream.rng.integers(8, size=200)].copy()
    nudged[:, 2] += np.round(stream.rng.uniform(0, 1, 200), 3) * 1e-2  # one field, a little
    attack = np.empty((400, len(FEATURES)))
    attack[0::2], attack[1::2] = np.array(zoo[:200]), nudged
    keys = ["zoo", "rescorer"] * 200
    findings = run_mixed(detector, stream, attack, keys, per_batch=20)
    flagged = first_by_client(findings)
    assert set(flagged) == {"zoo"}
    # (Its walk crosses the decision boundary too: tiny steps across it are boundary pairs.)
    probes = flagged["zoo"].details["statistics"]["coordinate_probes"]
    assert probes["p_value"] < 1e-3
    assert flagged["zoo"].details["queries_seen"] <= 60


def test_an_attacker_in_the_learning_window_is_judged_once_the_profile_exists() -> None:
    """Without a stored reference the first events define the profile; they are kept and
    judged, in order, once it exists, so an attacker present from the first query is flagged
    at one of its first looks (by the reference prior: no population yet), not only once its
    queries after the learning window fill a ring."""
    detector = QueryPatternDetector("m", SETTINGS)
    stream = Stream(seed=25)
    probe = boundary_probe(stream.rng, 200)
    findings: list[Finding] = []
    for start in range(0, 200, 25):
        bx, bc = stream.benign(100)
        x = np.vstack([bx, probe[start : start + 25]])
        clients = bc + ["early"] * 25
        order = stream.rng.permutation(len(x))
        batch = stream.batch(x[order], [clients[i] for i in order])
        findings += detector.update(batch)
    flagged = first_by_client(findings)
    assert set(flagged) == {"early"}
    early = flagged["early"]
    assert early.details["queries_seen"] <= 30
    assert early.details["judged_late"]  # a look of the learning window
    assert detector.warmup == []  # judged once, then dropped


def test_the_learning_window_kept_for_judging_is_bounded_per_client() -> None:
    """A client's first `WARMUP_FACTOR` rings of the learning window are kept, no more: a
    flood cannot crowd the other clients' events out of the backlog."""
    settings = QueryPatternSettings(reference_size=2000)
    detector = QueryPatternDetector("m", settings)
    stream = Stream(seed=26)
    cap = WARMUP_FACTOR * settings.buffer_size
    flood = stream.rng.normal(0, 1, size=(cap + 30, len(FEATURES)))
    bx, bc = stream.benign(200)
    detector.update(stream.batch(np.vstack([flood, bx]), ["flood"] * len(flood) + bc))
    assert not detector.calibrated  # still learning
    kept = sum(len(piece) for piece in detector.warmup)
    assert detector.warmup_taken["flood"] == cap
    assert kept == cap + len(bx)  # the other clients' events all kept
    restored = QueryPatternDetector("m", settings)
    restored.load_state(state_codec.decode(state_codec.encode(detector.state())))
    assert sum(len(piece) for piece in restored.warmup) == kept


def test_an_attacker_busy_through_a_long_learning_window_is_judged_beyond_its_first_ring() -> None:
    """The reference can take hours to learn (at night, with few clients), and an attacker
    may start probing only after its first ring of ordinary-looking queries: its later
    queries of the window are judged too (up to `WARMUP_FACTOR` rings), not dropped."""
    settings = QueryPatternSettings(reference_size=3000)
    detector = QueryPatternDetector("m", settings)
    stream = Stream(seed=28)
    ordinary, _ = stream.benign(300)  # more than a ring of queries like everyone's
    attacker = np.vstack([ordinary, boundary_probe(stream.rng, 150)])
    assert run_mixed(detector, stream, attacker, ["patient"] * len(attacker), per_batch=50) == []
    assert not detector.calibrated and detector.warmup_taken["patient"] == len(attacker)
    detector.set_reference(stream.batch(*stream.benign(3000)))
    flagged = first_by_client(detector.update(stream.batch(*stream.benign(100))))
    assert set(flagged) == {"patient"}
    assert flagged["patient"].details["judged_late"]
    assert flagged["patient"].details["queries_seen"] > settings.buffer_size + 20


def test_a_reference_handed_over_while_learning_keeps_the_window_to_judge() -> None:
    """The pipeline learns a reference from the stream's first events and hands it over: the
    events the detector kept meanwhile are judged against it at the next update."""
    detector = QueryPatternDetector("m", SETTINGS)
    stream = Stream(seed=27)
    probe = boundary_probe(stream.rng, 40)
    x, clients = stream.benign(200)
    batch = stream.batch(np.vstack([x, probe]), clients + ["early"] * 40)
    assert detector.update(batch) == [] and not detector.calibrated
    detector.set_reference(stream.batch(*stream.benign(300)))
    assert detector.calibrated and detector.warmup
    flagged = first_by_client(detector.update(stream.batch(*stream.benign(100))))
    assert set(flagged) == {"early"}
    assert flagged["early"].details["judged_late"]
    assert flagged["early"].position.offset < len(batch)


def test_the_two_tests_spend_alpha_per_client_day_between_them() -> None:
    """The ring test at every look, the cumulative test at the day's first look and at
    doublings of queries seen: each spends its share over its looks of the day by a series
    that sums to 1, so whatever the number of looks a day's thresholds sum to less than
    alpha, approaching it."""
    spending = Spending(1e-3, looks_per_ring=26)
    assert spending.ring + spending.cumulative == pytest.approx(1e-3)
    assert not (RING & CUMULATIVE).any() and ((RING | CUMULATIVE) == TESTED).all()
    assert [STATISTICS[i] for i in np.flatnonzero(CUMULATIVE)] == ["coverage", "region_coverage"]
    for looks in (1, 10, 10_000):
        day = sum(spending.ring_threshold(j) for j in range(1, looks + 1))
        day += sum(spending.cumulative_threshold(i) for i in range(1, looks + 1))
        assert day < 1e-3
        # A day the client shares fingerprints with a flagged one adds the linked looks.
        linked = sum(spending.linked_threshold(m) for m in range(1, looks + 1))
        assert linked < 0.25e-3 and day + linked < 1.25e-3
    # Each ring of 26 looks spends its share: the day approaches alpha.
    assert day == pytest.approx(1e-3, rel=0.01)
    # Cumulative looks: the first look at or after 200, 400, 800, ... queries seen.
    assert CUMULATIVE_FIRST == 200
    counts = np.arange(20, 20_001, 10)
    due = counts[cumulative_looks_due(counts, 10)]
    assert due.tolist() == [200 * 2**k for k in range(7)]
    counts = np.arange(21, 20_001, 7)  # looks every 7 queries: the next look after each
    due = counts[cumulative_looks_due(counts, 7)]
    assert len(due) == 7 and all(0 <= d - 200 * 2**k < 7 for k, d in enumerate(due))


def test_the_cumulative_test_spends_most_of_its_share_at_the_days_first_look() -> None:
    """A long-lived client's day has one to three cumulative looks, and the first carries
    all its history: 0.7 of the share is spent there (half under 1 / (i (i + 1))), the i-th
    (i >= 2) (1 - 0.7) / ((i - 1) i), so the day's looks still spend at most the share."""
    spending = Spending(1e-3, looks_per_ring=26)
    share = spending.cumulative
    looks = [spending.cumulative_threshold(i) for i in range(1, 10_001)]
    assert FIRST_CUMULATIVE == 0.7 and looks[0] == pytest.approx(0.7 * share)
    assert looks[1] == pytest.approx(0.3 * share / 2) and looks[2] == pytest.approx(0.05 * share)
    assert all(a > b for a, b in pairwise(looks))
    assert sum(looks) < share and sum(looks) == pytest.approx(share, rel=1e-3)


def test_each_test_weighs_its_statistics_and_the_cumulative_one_favours_region_coverage() -> None:
    """A weighted Bonferroni: a look crosses when a statistic's p is at most its weight's
    share of the threshold, the weights summing to 1 over each test (so P <= threshold). The
    ring's seven statistics alike; the cumulative test gives `region_coverage`, the natural
    extractor's statistic where keys serve segments, 0.8 and the features' `coverage` 0.2."""
    assert WEIGHTS[RING].sum() == pytest.approx(1) and WEIGHTS[CUMULATIVE].sum() == pytest.approx(1)
    assert np.allclose(WEIGHTS[RING], 1 / 7) and WEIGHTS[~TESTED].sum() == 0
    region, coverage = STATISTICS.index("region_coverage"), STATISTICS.index("coverage")
    threshold = 1e-4
    p = np.full((4, len(STATISTICS)), np.nan)
    p[0, region] = 0.7 * threshold  # beyond an even half, within 0.8
    p[1, coverage] = 0.3 * threshold  # within an even half, beyond 0.2
    p[2, coverage] = 0.15 * threshold
    p[3, [region, coverage]] = 0.9 * threshold, 0.5 * threshold
    combined = bonferroni(p, CUMULATIVE)
    assert (combined <= threshold).tolist() == [True, False, True, False]
    assert combined[0] == pytest.approx(0.7 * threshold / 0.8)
    assert combined[1] == pytest.approx(0.3 * threshold / 0.2)
    # A statistic with no value counts as p = 1; the ring test is blind to the cumulative's.
    assert bonferroni(p, RING).tolist() == [1.0] * 4
    test = CombinedTest("cumulative", float(combined[0]), threshold, 1, 400)
    assert test.per_statistic[region] == pytest.approx(0.8 * threshold)
    assert test.per_statistic[coverage] == pytest.approx(0.2 * threshold)
    assert test.per_statistic[RING].sum() == 0
    assert test.details()["weights"] == {"coverage": 0.2, "region_coverage": 0.8}


def test_the_ring_test_restarts_its_spending_with_each_ring_of_the_days_looks() -> None:
    """A ring's statistics are new evidence once its window has been replaced, so the ring
    test's series restarts with each ring's worth of the day's looks, at a smaller share:
    a pattern that persists through a busy day is judged afresh every ring, where one
    series over the day's looks had shrunk its threshold with the square of its looks.
    Within a ring the looks see overlapping windows, and the share falls as i^-1.25,
    normalised over the ring's looks: a pattern seen again at each look keeps a share."""
    spending = Spending(1e-3, looks_per_ring=26)
    ring = [spending.ring_threshold(j) for j in range(1, 26 * 40 + 1)]
    decay = np.arange(1, 27) ** -RING_DECAY
    within = decay / decay.sum()
    # Within a ring, the thresholds fall as i^-1.25; the first ring has 0.9 of the share,
    # spent exactly over its 26 looks.
    assert RING_DECAY == 1.25
    assert ring[:26] == pytest.approx((0.9 * spending.ring * within).tolist())
    assert sum(ring[:26]) == pytest.approx(0.9 * spending.ring)
    assert all(a > b for a, b in pairwise(ring[:26]))
    # Less on the first look than 1 / (i (i + 1)) would spend, more on the later ones: the
    # sixth look (70 queries) has 1.5 times that series' share, the last 4 times.
    series = [0.9 * spending.ring / (i * (i + 1)) for i in range(1, 27)]
    assert 0.6 < ring[0] / series[0] < 0.8
    assert ring[5] > 1.5 * series[5] and ring[25] > 4 * series[25]
    # The g-th ring's share is 0.1 / ((g - 1) g), spent over its looks alike: its first
    # look is a restart, above the ring's last look before it.
    for g in range(2, 40):
        first = ring[(g - 1) * 26]
        assert first == pytest.approx(spending.ring * 0.1 / ((g - 1) * g) * within[0])
        assert first > ring[(g - 1) * 26 - 1]
    # Far above where one series over the day's looks would stand (a fast client's 27th
    # look, its 280th query, where a CopycatCNN at p 1.4e-7 went unflagged).
    assert ring[26] > 10 * spending.ring / (27 * 28)
    assert sum(ring) < spending.ring


def test_a_slow_whole_population_sampler_is_flagged_by_the_cumulative_test() -> None:
    """Benign clients each serve their own segment (their own corner, their own classes); a
    natural-data extractor at an ordinary client's rate samples like the whole traffic. Its
    evidence accrues over everything it sent, so it is judged by the cumulative test, at
    doublings of its queries; no benign segment client is flagged."""
    detector, stream = population(seed=31, spread=7.0)
    rows = whole_population(stream, 800)
    findings = run_mixed(detector, stream, rows, ["thief"] * 800, per_batch=5)
    assert {f.subject for f in findings} == {"thief"}
    first = findings[0]
    assert first.details["test"] == "cumulative"
    assert set(first.details["detectors_fired"]) <= {"coverage", "region_coverage"}
    seen = first.details["queries_seen"]
    assert seen in {200 * 2**k for k in range(3)} and first.support == seen
    tests = first.details["tests"]
    cumulative = tests["cumulative"]
    assert first.threshold == cumulative["threshold"]
    spent = Spending(SETTINGS.false_clients_per_thousand / 1000, looks_per_ring=26)
    assert cumulative["threshold"] == pytest.approx(
        spent.cumulative_threshold(cumulative["look_of_day"]), rel=1e-2
    )
    assert first.value == cumulative["p_value"] <= cumulative["threshold"]
    # The ring test at the same look has spent more of the day: several looks before it.
    assert tests["ring"]["look_of_day"] > cumulative["look_of_day"]
    # Its evidence began with its first query, not at a clean look of its ring.
    assert first.details["pattern_began"] == detector.clients["thief"].first_seen
    assert first.details["pattern_began"] < first.ts


def test_a_clients_first_look_of_a_day_is_also_a_cumulative_look() -> None:
    """A patient client's cumulative evidence is judged each day it queries (its day's first
    look), not only at doublings of its queries: a slow extractor's doublings are days apart."""
    detector, stream = population(seed=33, spread=7.0)
    rows = whole_population(stream, 460)

    def next_day() -> int:
        day = int(stream.t // 86_400) + 1
        stream.t = day * 86_400.0
        return day

    # Under CUMULATIVE_FIRST queries, no look is cumulative, not even a day's first.
    run_mixed(detector, stream, rows[:150], ["thief"] * 150, per_batch=5)
    state = detector.clients["thief"]
    assert state.count == 150 and state.cumulative_looks == 0
    day = next_day()
    run_mixed(detector, stream, rows[150:160], ["thief"] * 10, per_batch=10)
    assert state.day == day and state.day_looks == 1 and state.cumulative_looks == 0
    run_mixed(detector, stream, rows[160:450], ["thief"] * 290, per_batch=5)
    assert state.count == 450 and state.cumulative_looks == 2  # at 200 and 400 queries
    day = next_day()
    run_mixed(detector, stream, rows[450:], ["thief"] * 10, per_batch=10)
    # 460 queries is no doubling: the look at it counts in the cumulative test as the day's
    # first.
    assert state.count == 460 and state.day == day
    assert state.day_looks == 1 and state.cumulative_looks == 1


def line_searches(rng: np.random.Generator, lines: int, steps: int = 12) -> np.ndarray:
    """Binary searches for the sector boundary b = 0 (a > 0) between random points on either
    side, every coordinate moving: a boundary walker (Sign-OPT, HopSkipJump's binary search)
    whose queries keep ordinary margins (a + b stays near 2) and stay in the reference."""
    below, above = np.array([2.0, -0.6, 0.0, 0.0]), np.array([2.0, 0.6, 0.0, 0.0])
    return binary_searches(rng, lines, steps, (below, above), np.full(4, 0.3), cut=0.0)


def binary_searches(
    rng: np.random.Generator,
    lines: int,
    steps: int,
    ends: tuple[np.ndarray, np.ndarray],
    spread: np.ndarray,
    cut: float,
) -> np.ndarray:
    """`lines` binary searches of `steps` queries each for b = `cut`, each between the two
    `ends` (low, high) moved by normal noise of `spread` per coordinate (high drawn first)."""
    out = []
    for _ in range(lines):
        high = ends[1] + rng.normal(0, spread)
        low = ends[0] + rng.normal(0, spread)
        for _ in range(steps):
            mid = (low + high) / 2
            out.append(mid)
            low, high = (low, mid) if mid[1] > cut else (mid, high)
    return np.array(out)


def walker_findings(walk: np.ndarray, stream: Stream, shuffled: bool = False) -> dict[str, Finding]:
    """First findings per client of a fresh detector when `walk` is sent by "walker", 10
    queries among each 40 benign ones of `stream`, then 2,000 benign queries. `shuffled`:
    each batch's rows in random order (pairs need no order; a binary search's halvings do)."""
    detector = QueryPatternDetector("m", SETTINGS)
    findings: list[Finding] = []
    for start in range(0, len(walk), 10):
        bx, bc = stream.benign(40)
        steps = walk[start : start + 10]
        x, clients = np.vstack([bx, steps]), bc + ["walker"] * len(steps)
        if shuffled:
            order = stream.rng.permutation(len(x))
            x, clients = x[order], [clients[i] for i in order]
        findings += detector.update(stream.batch(x, clients))
    for _ in range(4):
        findings += detector.update(stream.batch(*stream.benign(500)))
    return first_by_client(findings)


def test_a_warm_up_boundary_walker_on_continuous_features_is_flagged_by_its_pairs() -> None:
    """No lattice, ordinary margins, inputs in reference: what gives a line search away is
    pairs of queries closer than benign records are that the model puts in different classes
    (`boundary_pairs`). Present from the first query, it is judged once the profile exists,
    against the reference prior (a Chernoff bound), and flagged; no benign client is. The same
    queries to a model whose class does not change along them are not flagged."""
    walk = line_searches(np.random.default_rng(5), 20)
    # The class is the sector: b = 0 is a boundary.
    flagged = walker_findings(walk, SectorStream(seed=26), shuffled=True)
    assert set(flagged) == {"walker"}
    walker = flagged["walker"]
    assert walker.details["detectors_fired"] == ["boundary_pairs"]
    assert walker.details["judged_late"]  # a look of the learning window
    assert walker.details["queries_seen"] <= 100
    # One class all along the lines: no pairs.
    assert walker_findings(walk, Stream(seed=26), shuffled=True) == {}


def bisections(rng: np.random.Generator, lines: int, steps: int) -> np.ndarray:
    """Binary searches on b = 0.5 between points where the model's class is the same (a + b
    from 1.5 to 2.5), each line elsewhere in (c, d): a search for a threshold of the score,
    its steps (down to a tenth of a unit) well beyond `repeat_distance` in every coordinate."""
    low, high = np.array([2.5, -1.0, -1.0, -1.0]), np.array([0.5, 2.0, 1.0, 1.0])
    return binary_searches(rng, lines, steps, (low, high), np.array([0.2, 0.2, 2.0, 2.0]), 0.5)


@pytest.mark.parametrize("two_fields", [False, True], ids=["every-coordinate", "two-fields"])
def test_a_binary_search_is_boundary_search_whatever_the_class_along_it(two_fields: bool) -> None:
    """A binary search sent in its order (each query depends on the answer before it) halves
    the gap to its nearest earlier query at every step: those steps count in
    `boundary_pairs` even where the class never changes along the line (the warm-up
    HopSkipJumps of segment seeds 148, 169 and 171 held few pairs and were flagged after
    410-540 queries, now after 20). So they do where each line moves two fields only, each
    step the same entity re-scored to `_compare` (the warm-up Sign-OPT of segment seed 154,
    its small steps beyond `repeat_distance` in a coordinate or two, was flagged after 160
    queries, now after 20). The same queries with each line sent farthest-first (no
    halvings) are not flagged."""
    lines, steps = 30, 6
    walk = bisections(np.random.default_rng(5), lines, steps)
    if two_fields:  # (c, d) fixed along each line: only a and b move
        per_line = walk.reshape(lines, steps, -1)
        per_line[:, :, 2:] = per_line[:, :1, 2:]
    flagged = walker_findings(walk, Stream(seed=27))
    assert set(flagged) == {"walker"}
    walker = flagged["walker"]
    assert walker.details["detectors_fired"] == ["boundary_pairs"]
    assert walker.details["queries_seen"] <= 100
    farthest_first = walk.reshape(lines, steps, -1)[:, ::-1].reshape(walk.shape)
    assert walker_findings(farthest_first, Stream(seed=27)) == {}


def test_a_what_if_search_on_one_field_is_not_boundary_search() -> None:
    """An analyst bisecting one field of a record (at what amount does the decision flip?)
    moves that field only: a move of one coordinate, `coordinate_probes`' kind of evidence
    (which wants many coordinates walked), not a search's step, so it is not flagged. The
    same lines moving two fields are (the test above)."""
    lines, steps = 30, 6
    walk = bisections(np.random.default_rng(5), lines, steps)
    per_line = walk.reshape(lines, steps, -1)
    per_line[:, :, [0, 2, 3]] = per_line[:, :1, [0, 2, 3]]  # only b moves along each line
    assert walker_findings(walk, Stream(seed=27)) == {}


def test_compare_counts_the_coordinates_moved_beyond_the_repeat_distance() -> None:
    """`_compare`'s third value is, per candidate, how many coordinates moved by more than
    `repeat_distance` (boundary pairs leave out entities with 1 to `entity_changes` fields
    changed), not whether exactly one coordinate moved at all (a tiny probe step)."""
    detector = QueryPatternDetector("m", SETTINGS)
    step = detector.settings.repeat_distance
    x = np.zeros((1, 4))
    vectors = np.array(
        [[[0.0, 0, 0, 0], [5 * step, 0, 0, 0], [5 * step, 5 * step, 0, 0], [step / 2, 0, 0, 0]]]
    )
    same, _probe, moved = detector._compare(x, vectors, 2, np.ones((1, 4), dtype=bool))
    assert moved.tolist() == [[0, 1, 2, 0]]
    assert same.tolist() == [[c <= detector.settings.entity_changes for c in (0, 1, 2, 0)]]


def test_the_typical_radius_is_the_typical_clients_not_a_few_busy_attackers() -> None:
    """The radius beyond which a query is atypical: the median client's own 99th percentile
    of distances to the nearest cell, so five busy warm-up attackers far from every cell do
    not widen it; events without a client are one voice, not one each (each alone would
    stand at its own value, and half the reference would set the median)."""
    rng = np.random.default_rng(3)
    benign = rng.uniform(0, 1, 40 * 30)
    owners = np.repeat(np.arange(1, 41), 30)
    far = rng.uniform(50, 60, 5 * 300)
    nearest = np.concatenate([benign, far])
    everyone = np.concatenate([owners, np.repeat(np.arange(41, 46), 300)]).astype(np.int64)
    assert np.quantile(nearest, 0.99) > 50  # by events, the attackers' distances set it
    assert 0.9 < typical_radius(nearest, everyone) < 1.0
    anonymous = np.zeros(len(benign), dtype=np.int64)  # NO_CLIENT: one voice
    assert typical_radius(benign, anonymous) == pytest.approx(np.quantile(benign, 0.99))
    mixed = np.concatenate([anonymous[:600], owners[600:]])
    assert typical_radius(benign, mixed) > 0.9
    assert typical_radius(np.zeros(0), np.zeros(0, dtype=np.int64)) == np.inf


class EdgeStream(Stream):
    """The test stream where the last `wide` clients spread feature "a" five times wider
    than the others: real users at the reference's edge, often out of its range."""

    def __init__(self, seed: int, clients: int = 44, wide: int = 4) -> None:
        super().__init__(seed, clients)
        self.wide = self.names[clients - wide :]
        self.wide_centre = float(self.centres[clients - wide, 0])  # theirs alike

    def benign(self, n: int) -> tuple[np.ndarray, list[str | None]]:
        x, who = super().benign(n)
        wide = np.isin(who, self.wide)
        x[wide, 0] = self.rng.normal(self.wide_centre, 5.0, np.count_nonzero(wide))
        return x, who


@pytest.mark.parametrize("seed", [43, 44])
def test_an_extractor_the_edge_users_hide_from_ood_share_is_atypical(seed: int) -> None:
    """A uniform-random extractor among benign keys that are often out of the reference's
    range (one feature spread wide): their `ood_share` widens that statistic's tail, and
    the extractor, 60-70% out of range, stood at p 3e-4 to 5e-4 and was not flagged in 200
    queries. Its queries are also far from every cluster of the reference, which the edge
    users' are not (their wide feature is out of range, the rest of the row typical):
    `atypical_share` flags it within 60 queries, and no benign key."""
    detector = QueryPatternDetector("m", SETTINGS)
    stream = EdgeStream(seed)
    for _ in range(40):
        assert detector.update(stream.batch(*stream.benign(500))) == []
    uniform = stream.rng.uniform(-5, 5, size=(200, len(FEATURES)))
    findings = run_mixed(detector, stream, uniform, ["extractor"] * 200, per_batch=10)
    flagged = first_by_client(findings)
    assert set(flagged) == {"extractor"}
    details = flagged["extractor"].details
    assert details["queries_seen"] <= 60
    assert details["detectors_fired"] == ["atypical_share"]
    assert details["statistics"]["ood_share"]["p_value"] > 1e-4


def test_the_reference_rate_the_prior_judges_against_is_the_typical_clients() -> None:
    """Out-of-reference rate of a collection: the median client's share where clients are
    known (five busy attackers among 45 clients do not set it), the events' share where not
    (a stored reference)."""
    benign = np.repeat(np.arange(1, 41), 30)  # 40 clients, 30 events each, none flagged
    attackers = np.repeat(np.arange(41, 46), 300)  # 5 clients, 300 events each, all flagged
    owners = np.concatenate([benign, attackers]).astype(np.int64)
    flags = np.concatenate([np.zeros(len(benign), bool), np.ones(len(attackers), bool)])
    assert flags.mean() > 0.5
    assert typical_rate(flags, owners) == 0.0
    assert typical_rate(flags, np.zeros_like(owners)) == flags.mean()
    assert typical_rate(flags[:0], owners[:0]) == 0.0
