"""95% confidence intervals of the accuracy detector's metrics, and how a finding shows one."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Z95 = 1.959964


def wilson(p: float, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion: sane near 0 and 1, unlike p +- z*se."""
    if n <= 0:
        return (0.0, 1.0)
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def expected_ci(expected: np.ndarray) -> tuple[float, float]:
    """CI of an estimated accuracy: CBPE's variance, each prediction a Bernoulli(e)."""
    variance = float((expected * (1 - expected)).sum())
    return bounded_ci(float(expected.mean()), variance, len(expected))


def bounded_ci(value: float, variance_of_sum: float, n: int) -> tuple[float, float]:
    """A mean of n values in [0, 1] whose sum has this variance, clipped to [0, 1]."""
    half = Z95 * math.sqrt(variance_of_sum) / n
    return (max(0.0, value - half), min(1.0, value + half))


def mean_ci(values: np.ndarray) -> tuple[float, float]:
    return sums_ci(float(values.sum()), float(np.dot(values, values)), len(values))


def sums_ci(total: float, squares: float, n: int) -> tuple[float, float]:
    """A mean's normal interval from running sums (what a window keeps)."""
    mean = total / n
    std = math.sqrt(max(squares / n - mean * mean, 0.0))
    half = Z95 * std / math.sqrt(n)
    return (mean - half, mean + half)


def with_ci(value: float, ci: tuple[float, float], n: int) -> dict[str, Any]:
    """A finding's "before" or "after": the value, its interval and its support."""
    return {"value": round(value, 6), "ci95": [round(ci[0], 6), round(ci[1], 6)], "n": n}
