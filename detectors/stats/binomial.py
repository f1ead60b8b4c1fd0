"""The exact conditional test of two rates: a window's count against the reference's.

Given both samples' total count t, a window of m values and a reference of n values from
one distribution split t binomially: the window's count is B(t, m / (n + m)). Exact for any
count, where Pearson's chi-square is not for counts near zero (data quality's rare rates,
categorical drift's flags that are almost never set).
"""

from __future__ import annotations

import math

from scipy.special import bdtr, bdtrc  # scipy.special, not scipy.stats: ~50 MB less to import


def conditional_binomial_tails(
    count: int, size: int, ref_count: float, ref_size: int
) -> tuple[float, float]:
    """P(X >= count) and P(X <= count) for the window's count X of `size` values, given its
    total with the reference's `ref_count` of `ref_size` values."""
    share = size / (size + ref_size)
    trials = math.floor(ref_count + count)
    if count > trials:
        return 0.0, 1.0
    return float(bdtrc(count - 1, trials, share)), float(bdtr(count, trials, share))
