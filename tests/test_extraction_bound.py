"""`bench/extraction_bound.py`: the most powerful test of a key's segment counts, which bounds
what any detector can do against the bench's natural-data extractor (issue 14)."""

from __future__ import annotations

import numpy as np
from scipy.stats import dirichlet_multinomial, multinomial

from bench.extraction_bound import Trial, power, ratio


def test_the_ratio_is_the_log_likelihood_ratio_of_a_pool_sampler_against_a_benign_key() -> None:
    shares = np.array([0.5, 0.3, 0.2])
    a = 2.0 * shares
    counts = np.array([[7, 2, 1], [0, 0, 10], [5, 3, 2]])
    expected = multinomial.logpmf(counts, 10, shares) - dirichlet_multinomial.logpmf(counts, a, 10)
    assert np.allclose(ratio(counts, shares, a), expected)


def test_power_spans_chance_to_certainty_with_how_far_keys_stray_from_the_pool() -> None:
    shares = np.array([0.4, 0.3, 0.2, 0.1])
    rng = np.random.default_rng(0)

    def trial(concentration: float) -> Trial:
        return Trial(concentration, 1000, 150, 0.01, 50_000, 2000, 5)

    # Keys whose mixes barely differ from the pool's are samplers too: no test beats chance.
    alike = power(shares, trial(1e5), rng)
    # Keys each mostly in a segment of their own: a sampler of the whole pool stands out.
    apart = power(shares, trial(0.2), rng)
    assert alike[0] < 0.05 and alike[1] < 0.05
    assert apart[0] > 0.95 and apart[1] > 0.95
