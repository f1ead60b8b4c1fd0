"""False-alarm budgets turned into sequential-test thresholds.

Every sequential detector in Bulwark runs a CUSUM (`detectors.stats.cusum`) on a statistic
that is N(0, 1) when nothing has changed (`detectors.stats.scores` makes it so). Then
the in-control average run length (ARL0) of a CUSUM with reference value k and threshold h
is known in closed form to good accuracy (Siegmund's approximation), so the threshold can be
derived from a false-alarm budget instead of being tuned by hand.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from scipy.special import ndtr

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
