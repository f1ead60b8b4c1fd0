"""How a suspicious-client look spends the false-alarm budget: two tests share alpha (benign
clients flagged per client-day, at most), the ring statistics at every look and the
cumulative coverages at the day's first look and at doublings of queries seen; each
combines its statistics by Bonferroni (docs/query-patterns.md derives it)."""

from __future__ import annotations

from dataclasses import dataclass

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
# Of the ring test's share, what its looks of the day's first ring spend; each later ring
# of the day (`Spending.ring_threshold`) spends (1 - FIRST_RING) / ((g - 1) g), the g-th.
FIRST_RING = 0.9


@dataclass(frozen=True, slots=True)
class Spending:
    """alpha (benign clients flagged per client-day, at most) split between the two tests;
    the cumulative test's i-th look of a client's day is tested at its share / (i (i + 1)),
    and sum over i of 1 / (i (i + 1)) = 1, so a day's looks spend less than alpha however
    many there are (docs/query-patterns.md derives it). The ring test's looks restart that
    series with each ring's worth of the day's looks (`ring_threshold`)."""

    alpha: float
    looks_per_ring: int  # buffer_size / check_every, rounded up: a ring's worth of new queries

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
        that share / (i (i + 1)). A ring's statistics are new evidence every ring, so a
        pattern that persists is judged afresh at each ring's first look, at a threshold
        that shrinks with the day's rings, not with its looks: with one series over the
        day's looks, a fast client's 30th look (its 300th query) was tested at 1 / 930 of
        the share, and a CopycatCNN at 87% out of reference (p 1.4e-7) was never flagged."""
        ring, i = divmod(look - 1, self.looks_per_ring)
        share = FIRST_RING if ring == 0 else (1 - FIRST_RING) / (ring * (ring + 1))
        return self.ring * share / ((i + 1) * (i + 2))

    def cumulative_threshold(self, look: int) -> float:
        return self.cumulative / (look * (look + 1))

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
    def per_statistic(self) -> float:
        """A statistic of the test fired at or below this (Bonferroni's share)."""
        return self.threshold / int(self.statistics.sum())

    def details(self) -> dict[str, object]:
        return {
            "p_value": float(f"{self.p_value:.3g}"),
            "threshold": float(f"{self.threshold:.3g}"),
            "look_of_day": self.look,
            "statistics": [STATISTICS[i] for i in np.flatnonzero(self.statistics)],
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
    """Bonferroni's combined p-value of each row over the `tested` columns (a statistic
    without a value, NaN, counts as p = 1)."""
    chosen = p_values[:, tested]
    smallest = np.where(np.isnan(chosen), 1.0, chosen).min(axis=1)
    return np.minimum(1.0, int(tested.sum()) * smallest)
