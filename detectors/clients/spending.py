"""How a suspicious-client look spends the false-alarm budget: two tests share alpha (benign
clients flagged per client-day, at most), the ring statistics at every look and the
cumulative coverages at the day's first look and at doublings of queries seen; each
combines its statistics by a weighted Bonferroni (docs/query-patterns.md derives it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detectors.clients.null import CUMULATIVE_STATISTICS, STATISTICS

COVERAGE = STATISTICS.index("coverage")
REGION_STAT = STATISTICS.index("region_coverage")
# Shapiro-Wilk W of the min distances (PRADA) is reported, not tested: against a population
# of a few dozen clients its null's tail is too unstable (most benign false alarms on the
# multi-day benches), and what it sees, the distances and low margins also see.
TESTED = np.array([name != "prada_normality" for name in STATISTICS])
# The tested statistics split into two tests: the cumulative ones (over every query the client
# sent) and those of its ring of recent queries.
CUMULATIVE = np.isin(np.arange(len(STATISTICS)), CUMULATIVE_STATISTICS)
RING = TESTED & ~CUMULATIVE
# Of a test's threshold, what each of its statistics spends (weighted Bonferroni: a look
# crosses when some statistic's p <= its weight x the threshold; P <= the threshold as the
# weights sum to 1). The ring's seven alike. Of the cumulative test, `region_coverage` most:
# it is the natural-data extractor's statistic wherever keys serve segments of the
# population (classes, input cells or values), where the features' `coverage` is so only
# where a segment is one value of a feature (a market: p 3.7e-6 at 200 queries, 1/19 of its
# threshold at this weight at a day's first look). Halves, before: on River's segment data
# (seed 141) the extractors' p stood 1.3 to 3 times region_coverage's half at 1,130-1,600
# queries ("Runs of stop 39").
CUMULATIVE_WEIGHTS = {"coverage": 0.2, "region_coverage": 0.8}


def _weights() -> np.ndarray:
    weights = np.where(RING, 1.0 / RING.sum(), 0.0)
    for name, weight in CUMULATIVE_WEIGHTS.items():
        weights[STATISTICS.index(name)] = weight
    return weights


WEIGHTS = _weights()
CUMULATIVE_SHARE = 0.5  # of alpha, for the cumulative test (the ring test has the rest)
# Of alpha again, for the linked test: the ring statistics of a client that shares
# fingerprints with a flagged client, judged once more at doublings of its looks so linked
# today (detector.py). A benign client spends it only on days it is so linked (rare: only
# near-duplicates of a flagged client's queries link it), so a client-day's bound is alpha,
# 1.25 alpha when linked.
LINKED_SHARE = 0.25
# Queries seen at the first cumulative look; then at each doubling. Before it, a part's
# plug-in divergence carries a sampling bias of (slots - 1) / (2 n), 0.15 at 50 queries, more
# than most segments differ from the traffic: an early look tests noise, and it is where
# benign keys came closest to the threshold (12 bench runs of 2026-12-02: in 10 the closest
# benign key stood at its 50th query, one 2.3x from its threshold; from 200 on the closest
# was 43x away, and every natural extractor flagged before was still flagged within 2,000).
CUMULATIVE_FIRST = 200
# Of the cumulative test's share, what the day's first cumulative look spends; its i-th look
# (i >= 2) spends (1 - FIRST_CUMULATIVE) / ((i - 1) i), so the day's looks sum to the share.
# A long-lived client's day has one to three cumulative looks (its first, and a doubling of
# its queries seen now and then), and the first carries all its history: a patient
# natural-data extractor, whose statistic stops rising near the keys' mean's error, is
# flagged at a day's first look or not at all (40 of its 43 first flags on 50 bench seeds
# with the first look at 0.7). Under 1 / (i (i + 1)) the first look had half the share.
FIRST_CUMULATIVE = 0.7
# Of the ring test's share, what its looks of the day's first ring spend; each later ring
# of the day (`Spending.ring_threshold`) spends (1 - FIRST_RING) / ((g - 1) g), the g-th.
FIRST_RING = 0.9
# Within a ring, the i-th look spends its ring's share x i^-RING_DECAY, normalised over the
# ring's looks (a ring has a known number of looks, so the series need not go on forever).
# A ring's looks see overlapping windows (each a ring's last queries): a pattern that holds
# is seen again at each, at about the same p-value, and its later looks need a share that
# is not spent almost all on the first. With 1 / (i (i + 1)) (RING_DECAY about 2, stop 38),
# the first look had half of it and the sixth (70 queries) 1 / 42: a late HopSkipJump whose
# low-margin share stood at p 2e-6 from its 70th query (flagged after 270; segment 141),
# and a CopycatCNN (after 120; segment 147). At 1.25 the first look has 0.35 of the ring's
# share (0.71 of before), the third as before, the sixth 1.6 times, the ninth twice, the
# last 4.2 times ("Runs of stop 39").
RING_DECAY = 1.25


def first_heavy_share(n: int, first: float) -> float:
    """The n-th term (from 1) of a series that spends `first` on its first term and
    (1 - first) / ((n - 1) n) on the n-th after it: the terms sum to 1 however many there
    are. The day's rings of ring looks (FIRST_RING) and its cumulative looks
    (FIRST_CUMULATIVE) each spend their test's share by it."""
    return first if n == 1 else (1 - first) / ((n - 1) * n)


@dataclass(frozen=True, slots=True)
class Spending:
    """alpha (benign clients flagged per client-day, at most) split between the two tests;
    the cumulative test's first look of a client's day is tested at FIRST_CUMULATIVE of its
    share and its i-th (i >= 2) at (1 - FIRST_CUMULATIVE) / ((i - 1) i) of it, which sum to 1,
    so a day's looks spend less than alpha however many there are (docs/query-patterns.md
    derives it). The ring test's looks fall in rings of the day's looks, each ring with its
    share, spent over its looks (`ring_threshold`)."""

    alpha: float
    looks_per_ring: int  # buffer_size / check_every, rounded up: a ring's worth of new queries
    # Each look's part of its ring's share (i^-RING_DECAY, normalised over the ring).
    within: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        decay = np.arange(1, self.looks_per_ring + 1, dtype=np.float64) ** -RING_DECAY
        object.__setattr__(self, "within", decay / decay.sum())

    @property
    def ring(self) -> float:
        return self.alpha * (1 - CUMULATIVE_SHARE)

    @property
    def cumulative(self) -> float:
        return self.alpha * CUMULATIVE_SHARE

    def ring_threshold(self, look: int) -> float:
        """The day's looks fall in rings of `looks_per_ring` (a ring's worth of new
        queries each): the g-th ring's share is FIRST_RING of the ring test's for the
        first, (1 - FIRST_RING) / ((g - 1) g) after (summing to 1), and its i-th look spends
        that share x i^-RING_DECAY / (the sum over the ring's looks of the same), so a ring
        spends its share exactly. A ring's statistics are new evidence every ring, so a
        pattern that persists is judged afresh at each ring's first look, at a threshold
        that shrinks with the day's rings, not with its looks: with one series over the
        day's looks, a fast client's 30th look (its 300th query) was tested at 1 / 930 of
        the share, and a CopycatCNN at 87% out of reference (p 1.4e-7) was never flagged."""
        ring, i = divmod(look - 1, self.looks_per_ring)
        return self.ring * first_heavy_share(ring + 1, FIRST_RING) * float(self.within[i])

    def cumulative_threshold(self, look: int) -> float:
        return self.cumulative * first_heavy_share(look, FIRST_CUMULATIVE)

    def linked_threshold(self, look: int) -> float:
        return self.alpha * LINKED_SHARE / (look * (look + 1))


@dataclass(frozen=True, slots=True)
class Test:
    """One test at one look: its Bonferroni p-value, the threshold it spent, its look of the
    day, and the queries the client had sent."""

    name: str  # "ring", "cumulative" or "linked" (the ring's statistics, linked looks)
    p_value: float
    threshold: float
    look: int
    queries: int

    @property
    def statistics(self) -> np.ndarray:
        return CUMULATIVE if self.name == "cumulative" else RING

    @property
    def per_statistic(self) -> np.ndarray:
        """Each statistic of the test fired at or below this (its weight's share of the
        threshold; 0 for the other test's)."""
        return np.where(self.statistics, self.threshold * WEIGHTS, 0.0)

    def details(self) -> dict[str, object]:
        return {
            "p_value": float(f"{self.p_value:.3g}"),
            "threshold": float(f"{self.threshold:.3g}"),
            "look_of_day": self.look,
            "statistics": [STATISTICS[i] for i in np.flatnonzero(self.statistics)],
            "weights": {
                STATISTICS[i]: round(float(WEIGHTS[i]), 4) for i in np.flatnonzero(self.statistics)
            },
        }


def cumulative_looks_due(counts: np.ndarray, check_every: int) -> np.ndarray:
    """Whether a look at `counts` queries seen is also a look of the cumulative test: the
    first look at or after each CUMULATIVE_FIRST x 2^k queries (k = 0, 1, ...), the previous
    look having been `check_every` queries earlier."""
    return doublings(counts) > doublings(counts - check_every)


def doublings(counts: np.ndarray) -> np.ndarray:
    """How many of CUMULATIVE_FIRST x 2^k (k >= 0) are at most each count: the bit length
    of count // CUMULATIVE_FIRST (np.frexp's exponent, exact for integers)."""
    return np.frexp(np.maximum(counts, 0) // CUMULATIVE_FIRST)[1]


def bonferroni(p_values: np.ndarray, tested: np.ndarray) -> np.ndarray:
    """The weighted Bonferroni p-value of each row over the `tested` columns, the least of
    p / weight (`WEIGHTS`, summing to 1 over each test's columns; a statistic without a
    value, NaN, counts as p = 1)."""
    chosen = p_values[:, tested]
    scaled = np.where(np.isnan(chosen), 1.0, chosen) / WEIGHTS[tested]
    return np.minimum(1.0, scaled.min(axis=1))
