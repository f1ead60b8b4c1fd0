"""Per-query and per-client measures the suspicious-client statistics are built from: low
margins, the coverage histograms' entropy, and the Shapiro-Wilk W of PRADA's minimum
distances (AS R94 coefficients cached per ring size), and the Chernoff tail the reference
prior gives a share of independent rare events (boundary pairs)."""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import chain

import numpy as np
from numpy.polynomial import polynomial
from scipy.special import ndtri

from streams.batch import ModelBatch


def entropy(histograms: np.ndarray) -> np.ndarray:
    """Sum over features of each histogram's entropy (nats): clients x features x bins in."""
    counts = histograms.astype(np.float64)
    totals = counts.sum(axis=2, keepdims=True)
    p = counts / np.maximum(totals, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=(1, 2))


def low_margin(batch: ModelBatch, margin: float) -> np.ndarray:
    """1 where the top two class scores (or a single score and 0.5) are within `margin`,
    0 where they are not, -1 where the event carries no score."""
    n = len(batch)
    out = np.full(n, -1, dtype=np.int8)
    present = list(filter(None, batch.scores))
    widths = set(map(len, present))
    every = len(present) == n == len(batch.scores) and len(widths) == 1
    if every and (classes := widths.pop()) >= 2:
        # The usual case, every event with the same number of classes: one matrix.
        flat = chain.from_iterable(map(dict.values, present))  # map: no Python frame each
        top = np.fromiter(flat, np.float64, n * classes).reshape(n, classes)
        if classes == 2:
            gap = np.abs(top[:, 0] - top[:, 1])
        else:  # the two largest of each row, negated, first
            top *= -1
            top.partition(1, axis=1)
            gap = top[:, 1] - top[:, 0]
        out[:] = gap < margin
    else:
        for i, scores in enumerate(batch.scores):
            if scores:
                ranked = sorted(scores.values(), reverse=True)
                one_gap = ranked[0] - ranked[1] if len(ranked) > 1 else abs(2 * ranked[0] - 1)
                out[i] = one_gap < margin
    if batch.score is not None:
        single = np.flatnonzero((out < 0) & np.isfinite(batch.score))
        out[single] = np.abs(2 * batch.score[single] - 1) < margin
    return out


# Royston's (1995, AS R94) polynomial corrections of the two most extreme coefficients.
_SW_C1 = (0.0, 0.221157, -0.147981, -2.071190, 4.434685, -2.706056)
_SW_C2 = (0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633)


@lru_cache(maxsize=4096)  # n <= buffer_size
def shapiro_weights(n: int) -> np.ndarray:
    """Shapiro-Wilk coefficients for n sorted values, as scipy (AS R94) computes them.

    They depend on n only, and rings are mostly full, so caching them makes W one sort and
    two dot products instead of a call into scipy (~20x faster; W agrees to 1e-9)."""
    half = n // 2
    m = ndtri((np.arange(1, half + 1) - 0.375) / (n + 0.25))
    summ2 = 2 * float(m @ m)
    ssumm2 = math.sqrt(summ2)
    rsn = 1 / math.sqrt(n)
    a1 = float(polynomial.polyval(rsn, _SW_C1)) - m[0] / ssumm2
    if n == 3:
        a = np.array([math.sqrt(0.5)])
    elif n > 5:
        a2 = float(polynomial.polyval(rsn, _SW_C2)) - m[1] / ssumm2
        fac = math.sqrt((summ2 - 2 * m[0] ** 2 - 2 * m[1] ** 2) / (1 - 2 * a1**2 - 2 * a2**2))
        a = -m / fac
        a[0], a[1] = a1, a2
    else:
        fac = math.sqrt((summ2 - 2 * m[0] ** 2) / (1 - 2 * a1**2))
        a = -m / fac
        a[0] = a1
    weights = np.zeros(n)
    weights[:half] = -a
    weights[n - half :] = a[::-1]
    return weights


def shapiro_w(ordered: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Shapiro-Wilk W of each row's first `counts[i]` values (rows sorted ascending, the
    rest ignored): the squared correlation of the sorted values with the coefficients. NaN
    for fewer than 3 values or all equal. Rows of equal length share their coefficients, so
    many clients cost one pass over a matrix."""
    rows, width = ordered.shape
    counts = np.asarray(counts)
    inside = np.arange(width) < counts[:, None]
    values = np.where(inside, ordered, 0.0)
    weights = np.zeros((rows, width))
    for n in np.unique(counts[counts >= 3]).tolist():
        weights[counts == n, :n] = shapiro_weights(n)
    last = values[np.arange(rows), np.maximum(counts - 1, 0)]
    spread = (counts >= 3) & (last > values[:, 0])
    centred = values - (values.sum(axis=1) / np.maximum(counts, 1))[:, None]
    centred[~inside] = 0.0
    top = np.einsum("ij,ij->i", weights, values) ** 2
    bottom = np.einsum("ij,ij->i", weights, weights) * np.einsum("ij,ij->i", centred, centred)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(spread, top / np.where(spread, bottom, 1.0), np.nan)


def chernoff_tail(n: int, rate: float) -> tuple[float, float]:
    """(u, b) of an exponential tail p(x) = 0.1 exp(-(x - u) / b) that bounds the share x of
    n independent events of probability `rate` from above: Chernoff's P(share >= x) <=
    exp(-n KL(x || rate)), with u where that bound is 0.1 and b from its slope there (the
    exponent is concave in x, so its tangent at u lies above it for every x >= u)."""

    def kl(x: float) -> float:
        return x * math.log(x / rate) + (1 - x) * math.log((1 - x) / (1 - rate))

    low, high = rate, 1 - 1e-9
    if n * kl(high) <= math.log(10):
        return 1.0, 1.0  # too few events for the bound to reach 0.1: no evidence
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if n * kl(mid) < math.log(10) else (low, mid)
    u = high
    slope = n * math.log(u * (1 - rate) / (rate * (1 - u)))
    return u, 1 / slope
