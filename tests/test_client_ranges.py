"""Which reference ranges the traffic as a whole has left (`detectors.clients.ranges`): the
typical client decides, not a few busy ones, and a range comes back when the traffic does."""

from __future__ import annotations

import numpy as np

from detectors.clients.ranges import BITS, MIN_QUERIES, TrafficRanges

CLIENTS = 40


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
    ranges.refresh(np.arange(CLIENTS), min_clients=12)
    assert ranges.left.tolist() == [True, False, False]
    assert ranges.kept.tolist() == [False, True, True]


def test_a_left_range_counts_again_once_the_traffic_is_back() -> None:
    rng = np.random.default_rng(2)
    ranges = TrafficRanges(np.zeros(2))
    ranges.reserve(CLIENTS)
    shifted = np.array([[0.5, 0.0]] * CLIENTS)
    ranges.observe(*_traffic(rng, shifted, 50))
    ranges.refresh(np.arange(CLIENTS), min_clients=12)
    assert ranges.left.tolist() == [True, False]
    back = np.array([[0.005, 0.0]] * CLIENTS)
    refreshes = 0
    while ranges.left[0]:
        ranges.observe(*_traffic(rng, back, 50))
        ranges.refresh(np.arange(CLIENTS), min_clients=12)
        refreshes += 1
    assert refreshes <= 4  # the counts halve at each refresh


def test_too_few_clients_with_enough_queries_leave_the_ranges_as_they_were() -> None:
    rng = np.random.default_rng(3)
    ranges = TrafficRanges(np.zeros(1))
    ranges.reserve(CLIENTS)
    few = int(MIN_QUERIES) - 1  # fewer queries than a voice needs
    ranges.observe(*_traffic(rng, np.ones((CLIENTS, 1)), few))
    ranges.refresh(np.arange(CLIENTS), min_clients=12)
    assert not ranges.left.any()
    # Only the voters count: 11 clients out of range are fewer than min_clients.
    ranges.observe(*_traffic(rng, np.ones((CLIENTS, 1)), 50))
    ranges.refresh(np.arange(11), min_clients=12)
    assert not ranges.left.any()
    ranges.forget(0)
    assert ranges.seen[0] == 0 and ranges.out[0].sum() == 0


def test_a_record_keeps_its_features_and_a_look_counts_those_kept_then() -> None:
    """A query's record says which features it was out of range on; whether it counts is
    decided at the look, by the features kept then: flags recorded before a feature was
    left stop counting when it is, and count again when the traffic is back."""
    rng = np.random.default_rng(4)
    ranges = TrafficRanges(np.zeros(3))
    ranges.reserve(CLIENTS)
    flags = np.array([[True, False, False], [False, True, False], [True, True, False]])
    bits = ranges.bits(flags)
    assert ranges.counts(bits).tolist() == [True, True, True]  # nothing left yet
    ranges.observe(*_traffic(rng, np.array([[0.5, 0.0, 0.0]] * CLIENTS), 50))
    ranges.refresh(np.arange(CLIENTS), min_clients=12)
    assert ranges.left.tolist() == [True, False, False]
    # The same records, judged now: out on feature 0 alone no longer counts.
    assert ranges.counts(bits).tolist() == [False, True, True]
    assert not ranges.counts(ranges.bits(np.zeros((1, 3), dtype=bool))).any()


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
    assert ranges.counts(bits).tolist() == [True, True, True]
    ranges.left[BITS + 3] = True
    assert ranges.counts(bits).tolist() == [False, False, True]
