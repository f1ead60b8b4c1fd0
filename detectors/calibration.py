"""False-alarm budgets turned into sequential-test thresholds, and reference transforms.

Every sequential detector in Bulwark runs a one-sided CUSUM (River's Page-Hinkley with no
forgetting is exactly that) on a statistic that is N(0, 1) when nothing has changed. Then
the in-control average run length (ARL0) of a CUSUM with reference value k and threshold h
is known in closed form to good accuracy (Siegmund's approximation), so the threshold can be
derived from a false-alarm budget instead of being tuned by hand.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtri

SIEGMUND_CORRECTION = 1.166  # 2 * 0.583: the overshoot correction for normal increments


def cusum_arl0(k: float, h: float) -> float:
    """In-control ARL of a one-sided CUSUM on N(0,1) increments (Siegmund's approximation)."""
    b = h + SIEGMUND_CORRECTION
    if k <= 0:
        return b * b
    return (math.exp(2 * k * b) - 2 * k * b - 1) / (2 * k * k)


def cusum_threshold(k: float, arl0: float) -> float:
    """The smallest h whose in-control ARL reaches `arl0` (bisection on the monotone ARL)."""
    low, high = 0.0, 1.0
    while cusum_arl0(k, high) < arl0:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        if cusum_arl0(k, mid) < arl0:
            low = mid
        else:
            high = mid
    return high


def steps_budget(events_per_step: float, tests: int, false_alarms_per_million: float) -> float:
    """The ARL0 (in steps) each of `tests` one-sided tests needs so that, together, they make at
    most `false_alarms_per_million` false alarms per million events."""
    steps_per_million = 1e6 / events_per_step
    return steps_per_million * tests / false_alarms_per_million


class NormalScores:
    """Maps values to N(0,1) scores through a reference sample's empirical distribution.

    Whatever the feature's shape (skewed, heavy-tailed, bounded), the scores of data drawn
    from the reference distribution are standard normal, which is what makes thresholds
    derived from a budget hold. Ties get mid-ranks; the scores are then re-centred and scaled
    on the reference itself, so discrete features are standardized too.
    """

    def __init__(self, reference: np.ndarray) -> None:
        self.sorted = np.sort(np.asarray(reference, dtype=np.float64))
        raw = self._raw(self.sorted)
        self.mean = float(raw.mean())
        self.std = float(raw.std()) or 1.0

    def _raw(self, values: np.ndarray) -> np.ndarray:
        n = len(self.sorted)
        below = np.searchsorted(self.sorted, values, side="left")
        at_or_below = np.searchsorted(self.sorted, values, side="right")
        u = (below + at_or_below + 1) / (2 * n + 2)  # mid-rank, strictly inside (0, 1)
        return ndtri(u)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return (self._raw(values) - self.mean) / self.std


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

    def __call__(self, value: float) -> float:
        if value > self.u:
            return 0.1 * math.exp(-(value - self.u) / self.scale)
        n = len(self.sorted)
        at_or_above = n - int(np.searchsorted(self.sorted, value, side="left"))
        return (at_or_above + 1) / (n + 1)
