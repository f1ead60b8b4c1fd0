"""The budget -> threshold derivation must hold for the statistics detectors feed it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from detectors.stats.calibration import cusum_arl0, cusum_threshold, steps_budget
from detectors.stats.scores import NormalScores, TailPValue


def _run_lengths(k: float, h: float, runs: int, rng: np.random.Generator) -> np.ndarray:
    """Empirical run lengths of a one-sided CUSUM on N(0,1) increments."""
    lengths = np.empty(runs)
    for r in range(runs):
        s, n = 0.0, 0
        chunk = rng.standard_normal(4096)
        i = 0
        while True:
            if i == len(chunk):
                chunk, i = rng.standard_normal(4096), 0
            s = max(0.0, s + chunk[i] - k)
            i += 1
            n += 1
            if s > h:
                break
        lengths[r] = n
    return lengths


@pytest.mark.parametrize("k", [0.5, 0.9])
def test_threshold_reaches_the_requested_in_control_run_length(k: float) -> None:
    target = 400.0
    h = cusum_threshold(k, target)
    assert cusum_arl0(k, h) == pytest.approx(target, rel=1e-6)
    lengths = _run_lengths(k, h, runs=300, rng=np.random.default_rng(3))
    # Siegmund's approximation is accurate to a few percent; the mean of 300 geometric-like
    # run lengths has a standard error of about 6%.
    assert lengths.mean() == pytest.approx(target, rel=0.2)


def test_budget_scales_with_tests_and_events_per_step() -> None:
    one = steps_budget(events_per_step=50, tests=1, false_alarms_per_million=1.0)
    assert one == pytest.approx(20_000)
    assert steps_budget(50, 4, 1.0) == pytest.approx(4 * one)
    assert steps_budget(50, 1, 0.1) == pytest.approx(10 * one)


@pytest.mark.parametrize(
    "sample",
    [
        lambda rng, n: rng.lognormal(3, 1, n),  # skewed
        lambda rng, n: rng.standard_t(2, n),  # heavy-tailed
        lambda rng, n: rng.integers(0, 40, n).astype(float),  # discrete with ties
    ],
)
def test_normal_scores_are_standard_normal_for_any_reference_shape(sample) -> None:
    rng = np.random.default_rng(11)
    scores = NormalScores(sample(rng, 5000))
    fresh = scores(sample(rng, 20_000))
    assert abs(fresh.mean()) < 0.05
    assert fresh.std() == pytest.approx(1.0, abs=0.05)
    if len(np.unique(fresh)) > 1000:  # continuous: the whole shape is normal, not just moments
        assert stats.kstest(fresh, "norm").statistic < 0.03


def test_tail_p_values_of_an_array_are_the_scalar_ones() -> None:
    rng = np.random.default_rng(4)
    tail = TailPValue(rng.gamma(2.0, 1.0, 500), min_scale=0.05)
    values = np.concatenate([rng.gamma(2.0, 1.0, 300), tail.sorted[:50], [tail.u, 40.0, -1.0]])
    together = tail.p_values(np.append(values, np.nan))
    # The same numbers, to the last bit or two: numpy's vectorized exp may differ from
    # math.exp by an ulp, depending on the CPU's SIMD instructions.
    np.testing.assert_allclose(together[:-1], [tail(v) for v in values], rtol=1e-14, atol=0)
    assert np.isnan(together[-1])
