"""Which reference ranges the traffic as a whole has left (`detectors.clients.ranges`): the
typical client decides, not a few busy ones, and a range comes back when the traffic does
(not when its typical rate merely dips below the level), counting queries from then on."""

from __future__ import annotations

import numpy as np

from detectors.clients.ranges import BITS, MIN_QUERIES, TrafficRanges

CLIENTS = 40
NEVER = np.full(3, -1.0)  # records' times, before any feature is kept again


def _traffic(rng: np.random.Generator, rates: np.ndarray, per_client: int) -> tuple:
    """Each client's queries (slots) with out-of-range flags per feature at its `rates`
    (clients x features)."""
    slots = np.repeat(np.arange(len(rates)), per_client)
    flags = rng.random((len(slots), rates.shape[1])) < rates[slots]
    return slots, flags


def test_a_feature_is_left_when_the_typical_client_leaves_it_not_when_a_few_do() -> None:
    rng = np.random.default_rng(1)
    ranges = TrafficRanges(np.array([0.005, 0.005, 0.0]))
    ranges.reserve(CLIENTS)
    rates = np.full((CLIENTS, 3), 0.005)
    rates[:, 0] = 0.3  # an upstream change: every client's feature 0 is often out of range
    rates[:6, 1] = 1.0  # six attackers always out of range on feature 1
    ranges.observe(*_traffic(rng, rates, 50))
    ranges.refresh(np.arange(CLIENTS), min_clients=12, now=0.0)
    assert ranges.left.tolist() == [True, False, False]
    assert ranges.kept.tolist() == [False, True, True]


def test_a_left_range_counts_again_once_the_traffic_is_back() -> None:
    rng = np.random.default_rng(2)
    ranges = TrafficRanges(np.zeros(2))
    ranges.reserve(CLIENTS)
    shifted = np.array([[0.5, 0.0]] * CLIENTS)
    ranges.observe(*_traffic(rng, shifted, 50))
    ranges.refresh(np.arange(CLIENTS), min_clients=12, now=0.0)
    assert ranges.left.tolist() == [True, False]
    back = np.array([[0.005, 0.0]] * CLIENTS)
    refreshes = 0
    while ranges.left[0]:
        ranges.observe(*_traffic(rng, back, 50))
        ranges.refresh(np.arange(CLIENTS), min_clients=12, now=0.0)
        refreshes += 1
    assert refreshes <= 4  # the counts halve at each refresh


def test_too_few_clients_with_enough_queries_leave_the_ranges_as_they_were() -> None:
    rng = np.random.default_rng(3)
    ranges = TrafficRanges(np.zeros(1))
    ranges.reserve(CLIENTS)
    few = int(MIN_QUERIES) - 1  # fewer queries than a voice needs
    ranges.observe(*_traffic(rng, np.ones((CLIENTS, 1)), few))
    ranges.refresh(np.arange(CLIENTS), min_clients=12, now=0.0)
    assert not ranges.left.any()
    # Only the voters count: 11 clients out of range are fewer than min_clients.
    ranges.observe(*_traffic(rng, np.ones((CLIENTS, 1)), 50))
    ranges.refresh(np.arange(11), min_clients=12, now=0.0)
    assert not ranges.left.any()
    ranges.forget(0)
    assert ranges.seen[0] == 0 and ranges.out[0].sum() == 0


def test_a_record_keeps_its_features_and_a_look_counts_those_kept_then() -> None:
    """A query's record says which features it was out of range on; whether it counts is
    decided at the look, by the features kept then: flags recorded before a feature was
    left stop counting when it is."""
    rng = np.random.default_rng(4)
    ranges = TrafficRanges(np.zeros(3))
    ranges.reserve(CLIENTS)
    flags = np.array([[True, False, False], [False, True, False], [True, True, False]])
    bits = ranges.bits(flags)
    assert ranges.counts(bits, NEVER).tolist() == [True, True, True]  # nothing left yet
    ranges.observe(*_traffic(rng, np.array([[0.5, 0.0, 0.0]] * CLIENTS), 50))
    ranges.refresh(np.arange(CLIENTS), min_clients=12, now=0.0)
    assert ranges.left.tolist() == [True, False, False]
    # The same records, judged now: out on feature 0 alone no longer counts.
    assert ranges.counts(bits, NEVER).tolist() == [False, True, True]
    assert not ranges.counts(ranges.bits(np.zeros((1, 3), dtype=bool)), NEVER[:1]).any()


def test_features_beyond_the_bits_share_them_counted_only_while_all_are_kept() -> None:
    """64 features (8x8 pixels) fold into BITS bits: feature f + BITS shares f's. Out of range
    on either counts while both are kept; once one of them is left, neither counts (a shift
    must not flag a client), and the other bits count as before."""
    features = 64
    ranges = TrafficRanges(np.zeros(features))
    out = np.zeros((3, features), dtype=bool)
    out[0, 3], out[1, BITS + 3], out[2, 10] = True, True, True
    bits = ranges.bits(out)
    assert bits[0] == bits[1] == 2.0**3
    assert ranges.counts(bits, NEVER).tolist() == [True, True, True]
    ranges.left[BITS + 3] = True
    assert ranges.counts(bits, NEVER).tolist() == [False, False, True]


def test_a_left_feature_hovering_at_its_level_stays_left() -> None:
    """After a shift the typical client's rate on the shifted feature can hover about the
    level (wine seed 308: 0.059-0.083 about 0.067 for days): it is kept again only once it
    is back halfway to the reference's rate, so it does not flap with the population's
    mood (each flap changed every client's share at once)."""
    rng = np.random.default_rng(5)
    reference = 0.006
    ranges = TrafficRanges(np.array([reference]))
    ranges.reserve(CLIENTS)
    level = 3 * reference + 0.05
    ranges.observe(*_traffic(rng, np.full((CLIENTS, 1), 0.2), 50))
    ranges.refresh(np.arange(CLIENTS), min_clients=12, now=0.0)
    assert ranges.left[0]
    for hour in range(1, 30):  # hovering just below the level
        ranges.observe(*_traffic(rng, np.full((CLIENTS, 1), 0.85 * level), 200))
        ranges.refresh(np.arange(CLIENTS), min_clients=12, now=3600.0 * hour)
        assert ranges.left[0]
    for hour in range(30, 40):  # back near the reference's own rate
        ranges.observe(*_traffic(rng, np.full((CLIENTS, 1), reference), 200))
        ranges.refresh(np.arange(CLIENTS), min_clients=12, now=3600.0 * hour)
    assert not ranges.left[0]


def test_a_feature_kept_again_counts_only_queries_sent_since() -> None:
    """A ring holds hours of queries: flags on a feature recorded while it was left must
    not all count at once when it is kept again (every client's share would jump while the
    null still stood where it was), only those of queries sent after."""
    rng = np.random.default_rng(6)
    ranges = TrafficRanges(np.zeros(2))
    ranges.reserve(CLIENTS)
    ranges.observe(*_traffic(rng, np.array([[0.5, 0.0]] * CLIENTS), 50))
    ranges.refresh(np.arange(CLIENTS), min_clients=12, now=100.0)
    assert ranges.left.tolist() == [True, False]
    hour = 3600.0
    while ranges.left[0]:
        ranges.observe(*_traffic(rng, np.array([[0.0, 0.0]] * CLIENTS), 50))
        hour += 3600.0
        ranges.refresh(np.arange(CLIENTS), min_clients=12, now=hour)
    bits = ranges.bits(np.array([[True, False], [True, False], [True, True]]))
    sent = np.array([hour - 60.0, hour + 60.0, hour - 60.0])  # before, after, before
    assert ranges.counts(bits, sent).tolist() == [False, True, True]  # feature 1 never left
    state = ranges.state(np.arange(CLIENTS))
    restored = TrafficRanges(np.zeros(2))
    restored.reserve(CLIENTS)
    restored.load(state, slice(0, CLIENTS))
    assert restored.counts(bits, sent).tolist() == [False, True, True]
