"""False-alarm budgets turned into sequential-test thresholds, and reference transforms.

Every sequential detector in Bulwark runs a one-sided CUSUM (River's Page-Hinkley with no
forgetting is exactly that) on a statistic that is N(0, 1) when nothing has changed. Then
the in-control average run length (ARL0) of a CUSUM with reference value k and threshold h
is known in closed form to good accuracy (Siegmund's approximation), so the threshold can be
derived from a false-alarm budget instead of being tuned by hand.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

SIEGMUND_CORRECTION = 1.166  # 2 * 0.583: the overshoot correction for normal increments


def cusum_arl0(k: float, h: float) -> float:
    """In-control ARL of a one-sided CUSUM on N(0,1) increments (Siegmund's approximation)."""
    b = h + SIEGMUND_CORRECTION
    if k <= 0:
        return b * b
    return (math.exp(2 * k * b) - 2 * k * b - 1) / (2 * k * k)


def cusum_threshold(
    k: float, arl0: float, arl: Callable[[float, float], float] = cusum_arl0
) -> float:
    """The smallest h whose in-control ARL reaches `arl0` (bisection on the monotone ARL)."""
    low, high = 0.0, 1.0
    while arl(k, high) < arl0:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        if arl(k, mid) < arl0:
            low = mid
        else:
            high = mid
    return high


def steps_budget(events_per_step: float, tests: int, false_alarms_per_million: float) -> float:
    """The ARL0 (in steps) each of `tests` one-sided tests needs so that, together, they make at
    most `false_alarms_per_million` false alarms per million events."""
    steps_per_million = 1e6 / events_per_step
    return steps_per_million * tests / false_alarms_per_million


def window_alpha(per_million: float, window: int, tests: int) -> float:
    """The level of each windowed test so that `tests` of them, each run once per `window`
    values, make at most `per_million` false alarms per million values (union bound)."""
    return per_million / (max(1, tests) * 1e6 / window)


class NormalScores:
    """Maps values to N(0,1) scores through a reference sample's empirical distribution.

    Whatever the feature's shape (skewed, heavy-tailed, bounded), the scores of data drawn
    from the reference distribution are standard normal, which is what makes thresholds
    derived from a budget hold. Ties get mid-ranks; the scores are then re-centred and scaled
    on the reference itself, so discrete features are standardized too.

    Scores are tabulated once per distinct reference value and per gap between them, so
    scoring costs one binary search per value (the hot path of numeric drift).
    """

    def __init__(self, reference: np.ndarray) -> None:
        self.sorted = np.sort(np.asarray(reference, dtype=np.float64))
        self.distinct, counts = np.unique(self.sorted, return_counts=True)
        n = len(self.sorted)
        at_or_below = np.cumsum(counts)
        below = at_or_below - counts
        on_value = ndtri((below + at_or_below + 1) / (2 * n + 2))  # mid-rank, inside (0, 1)
        edges = np.concatenate([[0], at_or_below])
        in_gap = ndtri((2 * edges + 1) / (2 * n + 2))  # gap i lies just below distinct[i]
        self.mean = float(np.dot(on_value, counts) / n)
        self.std = float(np.sqrt(np.dot((on_value - self.mean) ** 2, counts) / n)) or 1.0
        self.on_value = (on_value - self.mean) / self.std
        self.in_gap = (in_gap - self.mean) / self.std

    def __call__(self, values: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.distinct, values, side="left")
        exact = self.distinct.take(index, mode="clip") == values
        return np.where(exact, self.on_value.take(index, mode="clip"), self.in_gap[index])


@functools.cache
def _gauss_legendre(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(nodes)


def cusum_arl0_exact(k: float, h: float) -> float:
    """In-control ARL of a one-sided CUSUM on N(0,1) increments, solving its integral equation.

    L(s) = 1 + L(0) * Phi(k - s) + integral_0^h L(y) phi(y - s + k) dy (Page's equation),
    by Gauss-Legendre quadrature. Siegmund's closed form is good for small k but overstates the
    ARL when k is large and h small (an alarm is then mostly one extreme step), which is where
    tests with large blocks or large margins live; this is accurate for every k and h. For
    small k, where Siegmund is accurate and h grows large, it answers with Siegmund's value.
    """
    if k < 0.25:
        return cusum_arl0(k, h)
    if h <= 0:
        return 1.0 / max(float(ndtr(-k)), 1e-300)
    x, w = _gauss_legendre(min(max(64, math.ceil(6 * h)), 600))
    y = (x + 1) * h / 2
    w = w * h / 2
    points = np.concatenate([[0.0], y])  # L(0) first, then L at the nodes
    kernel = np.exp(-0.5 * (y[None, :] - points[:, None] + k) ** 2) / math.sqrt(2 * math.pi)
    system = np.eye(len(points))
    system[:, 0] -= ndtr(k - points)
    system[:, 1:] -= kernel * w[None, :]
    try:
        arl = float(np.linalg.solve(system, np.ones(len(points)))[0])
    except np.linalg.LinAlgError:
        return math.inf  # no way out of the continuation region: no false alarm, ever
    return arl if arl > 0 and math.isfinite(arl) else math.inf


def cusum_threshold_exact(k: float, arl0: float) -> float:
    """The smallest h whose exact in-control ARL (`cusum_arl0_exact`) reaches `arl0`."""
    return cusum_threshold(k, arl0, cusum_arl0_exact)


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
