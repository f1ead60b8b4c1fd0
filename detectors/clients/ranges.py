"""Which of the reference's feature ranges the traffic as a whole has left.

`ood_share` counts a client's queries outside the reference's picture. When a feature's
distribution shifts for everyone (an upstream change: input drift, reported by the drift
detectors), that feature puts a large share of every client's queries out of range, the
contemporaneous null rises with it, and the statistic goes blind to a client that is out of
range on *other* features: a uniform-random extractor or a HopSkipJump walk after the shift
(`bench/client_attacks.py --dataset segment`: the null's 90th percentile stood at 0.40-0.56
after one feature's shift, where such attackers stood at 0.35-0.56).

So, per feature, the typical client's out-of-range rate is followed (the median over the
unflagged clients with enough recent queries, each client one voice, so a few attackers
cannot move it), and a feature whose typical rate stands above the level the reference
prior allows a share (3 x its rate in the reference + 0.05) is left out of the per-query
out-of-range flag until the typical client is back within it.

Each query's record keeps *which* features it was out of range on (`bits`), not whether it
was out on a kept one, and a look counts the features kept at the look (`counts`): a
client's ring holds the queries of hours, and a shift that begins at night, when too few
clients query for the typical one to be seen out of range, filled a heavy user's ring with
flags on the shifted feature that stayed after the feature was left (held-out
`client_attacks.py --dataset segment` seed 166: flagged by `ood_share` seven hours after
the shift, 36% of its ring out of reference, 11% on every other day).

A feature left is kept again only once the typical client's rate is back halfway to the
reference's own (`back`), not as soon as it dips below the level, and then only the flags
of queries sent after it was kept again count (`kept_since`): on held-out
`client_attacks.py --dataset wine` seed 308 the shifted feature's typical rate hovered at
0.059-0.083 around its level 0.067 for days, was kept again at d8 13:08, and every ring's
hours of flags on it counted at once: the population's `ood_share` jumped from 0.07 to
0.15 (90th percentile 0.09 to 0.27) within one null refresh, and 9 benign keys were
flagged against the tail fitted an hour before.

Between refreshes, every batch's typical caller can leave a feature too (`leave`), so a
sudden shift stops counting before its own batches are judged. The same class follows one
pseudo-feature for `atypical_share`'s off-the-rows rule (`QueryPatternDetector.rows_traffic`):
whether the typical client is off the reference's rows.
"""

from __future__ import annotations

import numpy as np

# Each refresh halves the counts: a client's rate is over its last few refreshes' queries.
DECAY = 0.5
# A client's rate is a voice once it rests on this many (decayed) queries.
MIN_QUERIES = 10.0
# A record's features out of range, as bits of a float64 (exact up to 2^53): feature f is
# bit f mod BITS, features beyond BITS sharing bits with the first ones.
BITS = 52


class TrafficRanges:
    """Per tracked client (row = its ring slot) and feature: its recent queries out of the
    reference's range (decayed counts); the features the typical client has left."""

    def __init__(self, reference_rates: np.ndarray) -> None:
        self.level = 3 * np.asarray(reference_rates, dtype=np.float64) + 0.05
        features = len(self.level)
        self.out = np.zeros((0, features), dtype=np.float32)
        self.seen = np.zeros(0, dtype=np.float32)
        self.left = np.zeros(features, dtype=bool)  # features the traffic has left
        # When each feature was last kept again (event time; -inf: never left): its flags
        # count only on queries sent since.
        self.kept_since = np.full(features, -np.inf)

    @property
    def back(self) -> np.ndarray:
        """The typical rate below which a left feature is kept again: halfway from the
        level (3 x the reference's rate + 0.05) back to the reference's rate."""
        return (self.level + (self.level - 0.05) / 3) / 2

    @property
    def kept(self) -> np.ndarray:
        """The features whose out-of-range flags count against a client."""
        return ~self.left

    def bits(self, flags: np.ndarray) -> np.ndarray:
        """Per query (rows of per-feature flags), the features it is out of range on, as
        the bits of a float64 for its record (`counts` reads them). Only the few queries
        out of range on something are folded."""
        out = np.zeros(len(flags))
        hit = np.flatnonzero(flags.any(axis=1))
        if len(hit):
            weights = _weights(flags.shape[1])
            out[hit] = np.bitwise_or.reduce(np.where(flags[hit], weights, 0), axis=1)
        return out

    def counts(self, bits: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Whether each record (`bits`, sent at `ts`) is out of range on a feature kept now
        and since before it was sent. A shared bit counts only while every feature folded
        into it does: a shift must not flag."""
        weights = _weights(len(self.left))
        left_bits = np.bitwise_or.reduce(np.where(self.left, weights, 0), initial=0)
        every = np.bitwise_or.reduce(weights, initial=0)
        counted: np.ndarray | int = every & ~left_bits
        # Features kept again (rare): their bits only on queries sent since.
        for feature in np.flatnonzero(~self.left & np.isfinite(self.kept_since)).tolist():
            counted = counted & np.where(ts < self.kept_since[feature], ~weights[feature], -1)
        return (bits.astype(np.int64) & counted) != 0

    def reserve(self, rows: int) -> None:
        have = len(self.seen)
        if rows <= have:
            return
        out = np.zeros((rows, self.out.shape[1]), dtype=np.float32)
        seen = np.zeros(rows, dtype=np.float32)
        out[:have], seen[:have] = self.out, self.seen
        self.out, self.seen = out, seen

    def forget(self, slot: int) -> None:
        """A slot handed to a new client."""
        self.out[slot], self.seen[slot] = 0.0, 0.0

    def observe(self, slots: np.ndarray, flags: np.ndarray) -> None:
        """Queries (their clients' slots, -1: untracked) and their per-feature flags."""
        tracked = slots >= 0
        self.seen += np.bincount(slots[tracked], minlength=len(self.seen)).astype(np.float32)
        hit = np.flatnonzero(tracked & flags.any(axis=1))  # usually a few percent of queries
        if len(hit):
            np.add.at(self.out, slots[hit], flags[hit].astype(np.float32))

    def refresh(self, voters: np.ndarray, min_clients: int, now: float) -> None:
        """The features left at event time `now`, from the clients in `voters` (slots:
        unflagged, fresh) with enough recent queries; fewer than `min_clients` of them
        leave it as it was. Then the counts decay."""
        typical = self._typical(voters, min_clients)
        if typical is not None:
            left = np.where(self.left, typical > self.back, typical > self.level)
            self.kept_since[self.left & ~left] = now
            self.left = left
        self.out *= DECAY
        self.seen *= DECAY

    def leave(self, voters: np.ndarray, min_clients: int) -> None:
        """Between refreshes, at every batch: the features the typical client among
        `voters` (this batch's unflagged callers, each slot once) has now left, so a sudden
        shift stops counting before its own batch is judged rather than at the next refresh
        (an hour of every client's flags on it against the null of before: a shift of two
        features by 8 IQRs flagged a benign client on 2 of 5 streams of
        `tests/test_query_patterns.py` within two batches). Only leaving: a feature is kept
        again at a refresh."""
        typical = self._typical(voters, min_clients)
        if typical is not None:
            self.left |= typical > self.level

    def _typical(self, voters: np.ndarray, min_clients: int) -> np.ndarray | None:
        """Per feature, the median out-of-range rate of the `voters` with enough recent
        queries (None: fewer than `min_clients` of them)."""
        voters = voters[self.seen[voters] >= MIN_QUERIES]
        if len(voters) < min_clients:
            return None
        return np.median(self.out[voters] / self.seen[voters, None], axis=0)

    def state(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "level": self.level,
            "kept_since": self.kept_since,
            "out": self.out[slots],
            "seen": self.seen[slots],
            "left": self.left,
        }

    def load(self, state: dict[str, np.ndarray], rows: slice) -> None:
        """The state of `state()`, its clients `rows` of it into slots 0.. (reserved).
        Checkpoints from before the hysteresis hold no `kept_since` (nothing kept again)."""
        self.level, self.left = state["level"], state["left"]
        self.kept_since = state.get("kept_since", np.full(len(self.level), -np.inf))
        kept = len(range(*rows.indices(len(state["seen"]))))
        self.out[:kept], self.seen[:kept] = state["out"][rows], state["seen"][rows]


def _weights(features: int) -> np.ndarray:
    """Each feature's bit (feature f: bit f mod BITS)."""
    return np.left_shift(1, np.arange(features) % BITS).astype(np.int64)
