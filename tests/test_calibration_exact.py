"""The exact CUSUM ARL against published values and against Siegmund where it is good."""

from __future__ import annotations

import pytest

from detectors.stats.calibration import (
    cusum_arl0,
    cusum_arl0_exact,
    cusum_threshold,
    cusum_threshold_exact,
)


@pytest.mark.parametrize(("h", "published"), [(4.0, 336.0), (5.0, 930.0)])
def test_exact_arl_matches_the_tables(h: float, published: float) -> None:
    # Montgomery, Introduction to Statistical Quality Control, table 9.3 (k = 0.5).
    assert cusum_arl0_exact(0.5, h) == pytest.approx(published, rel=0.01)


def test_siegmund_overstates_the_arl_for_large_k_and_the_exact_threshold_is_higher() -> None:
    assert cusum_arl0(0.25, 8.0) == pytest.approx(cusum_arl0_exact(0.25, 8.0), rel=0.01)
    assert cusum_arl0(2.8, 1.9) > 2 * cusum_arl0_exact(2.8, 1.9)
    h = cusum_threshold_exact(2.8, 1e5)
    assert h > cusum_threshold(2.8, 1e5)
    assert cusum_arl0_exact(2.8, h) == pytest.approx(1e5, rel=1e-3)


def test_extreme_k_and_h_stay_finite_thresholds() -> None:
    # A test whose steps can never exceed k has no false alarms: ARL infinite, h near 0.
    assert cusum_arl0_exact(300.0, 1.0) == float("inf")
    assert 0 <= cusum_threshold_exact(300.0, 1e5) < 1e-6
    # k near 0 needs a large h, where Siegmund is accurate and quadrature is not needed.
    assert cusum_threshold_exact(0.0, 1e5) == pytest.approx(cusum_threshold(0.0, 1e5))
