"""Reference transforms and benign-sample tails: what makes a statistic N(0, 1) in control,
or gives it a p-value, so a threshold can come from a false-alarm budget."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import ndtri


class NormalScores:
    """Maps values to N(0,1) scores through a reference sample's empirical distribution.

    Whatever the feature's shape (skewed, heavy-tailed, bounded), the scores of data drawn
    from the reference distribution are standard normal, which is what makes thresholds
    derived from a budget hold. Ties get mid-ranks; the scores are then re-centred and scaled
    on the reference itself, so discrete features are standardized too.

    Scores are tabulated once per distinct reference value and per gap between them, so
    scoring costs one binary search per value (the hot path of numeric drift).

    Mid-ranks keep the mean and variance of the scores, not their law: where one value holds
    much of the reference (a count that is 0 in 97% of rows), most values get the same score,
    and a block of them has a within-block variance of 0, which a test of block variances
    takes for a spread narrowed to nothing, again and again on a stationary stream.
    `randomized` breaks ties at random instead (the randomized probability integral
    transform): a value held by c of the n reference values takes a uniform position among
    them, so scores of data drawn from the reference are N(0,1) whatever its atoms.
    """

    def __init__(self, reference: np.ndarray) -> None:
        self.sorted = np.sort(np.asarray(reference, dtype=np.float64))
        self.distinct, counts = np.unique(self.sorted, return_counts=True)
        n = len(self.sorted)
        at_or_below = np.cumsum(counts)
        below = at_or_below - counts
        self.counts, self.below = counts, below
        on_value = ndtri((below + at_or_below + 1) / (2 * n + 2))  # mid-rank, inside (0, 1)
        edges = np.concatenate([[0], at_or_below])
        in_gap = ndtri((2 * edges + 1) / (2 * n + 2))  # gap i lies just below distinct[i]
        self.gap_score = in_gap  # not re-centred: what `randomized` gives between values
        self.mean = float(np.dot(on_value, counts) / n)
        self.std = float(np.sqrt(np.dot((on_value - self.mean) ** 2, counts) / n)) or 1.0
        self.on_value = (on_value - self.mean) / self.std
        self.in_gap = (in_gap - self.mean) / self.std

    def __call__(self, values: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.distinct, values, side="left")
        exact = self.distinct.take(index, mode="clip") == values
        return np.where(exact, self.on_value.take(index, mode="clip"), self.in_gap[index])

    def randomized(self, values: np.ndarray, first: int) -> np.ndarray:
        """Scores with ties broken at random (class docstring). The uniform draw of each
        value is a hash of its index in the stream (`first`, `first` + 1, ...), not of a
        generator's state: a replay, a restart from a checkpoint or other batch boundaries
        give the same scores. A value between reference values takes its gap's position,
        on the same scale: (values below + 0.5) / (n + 1), nothing re-centred (random ties
        leave nothing to standardise)."""
        index = np.searchsorted(self.distinct, values, side="left")
        scores = self.gap_score[index]
        exact = np.flatnonzero(self.distinct.take(index, mode="clip") == values)
        if len(exact):  # only these need a draw and an inverse normal (most values of a
            on = index[exact]  # continuous feature fall between reference values)
            u = stream_uniforms(first + exact)
            position = (self.below[on] + u * self.counts[on] + 0.5) / (len(self.sorted) + 1)
            scores[exact] = ndtri(position)  # position inside (0, 1)
        return scores


def stream_uniforms(indices: np.ndarray) -> np.ndarray:
    """A uniform on [0, 1) for each stream index: SplitMix64 of the index (Steele et al.
    2014), its top 53 bits."""
    with np.errstate(over="ignore"):
        z = indices.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


class TailPValue:
    """Upper-tail p-values of a statistic against a benign sample (peaks over threshold).

    Below the sample's 90th percentile the p-value is empirical; beyond it the tail is
    modelled as exponential (a generalized Pareto tail with shape 0), so p-values far smaller
    than 1/len(sample) stay meaningful, and heavy-tailed benign behaviour (a batch job among
    ordinary users) widens the tail instead of tripping it: the tail's scale is the mean
    excess over the 90th percentile. The flip side: whatever the sample holds counts as benign,
    so it should come from traffic that is mostly clean (each client's weight capped).
    """

    def __init__(self, sample: np.ndarray, min_scale: float = 1e-3) -> None:
        values = np.sort(np.asarray(sample, dtype=np.float64))
        self.sorted = values
        q25, q50, q75, q90 = np.quantile(values, [0.25, 0.5, 0.75, 0.9])
        self.median = float(q50)
        self.u = float(q90)
        excess = values[values > self.u] - self.u
        mean_excess = float(excess.mean()) if len(excess) else 0.0
        self.scale = max(mean_excess, min_scale, 0.1 * float(q75 - q25))

    def state(self) -> dict[str, Any]:
        """Plain data: the sorted sample and the tail model fitted on it."""
        return {"sorted": self.sorted, "median": self.median, "u": self.u, "scale": self.scale}

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> TailPValue:
        tail = cls.__new__(cls)
        tail.sorted, tail.median = state["sorted"], state["median"]
        tail.u, tail.scale = state["u"], state["scale"]
        return tail

    def __call__(self, value: float) -> float:
        if value > self.u:
            return 0.1 * math.exp(-(value - self.u) / self.scale)
        n = len(self.sorted)
        at_or_above = n - int(np.searchsorted(self.sorted, value, side="left"))
        return (at_or_above + 1) / (n + 1)

    def p_values(self, values: np.ndarray) -> np.ndarray:
        """`self(value)` of every value at once (the same numbers), NaN for NaN: one call per
        statistic for all the clients due in a batch instead of one per client."""
        values = np.asarray(values, dtype=np.float64)
        n = len(self.sorted)
        at_or_above = n - np.searchsorted(self.sorted, values, side="left")
        empirical = (at_or_above + 1) / (n + 1)
        beyond = values > self.u
        tail = 0.1 * np.exp(-(values[beyond] - self.u) / self.scale)
        out = np.where(np.isnan(values), np.nan, empirical)
        out[beyond] = tail
        return out
