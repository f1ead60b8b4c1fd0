"""Moved to `detectors.stats`: kept so imports written before the move still work."""

from detectors.stats.calibration import (
    cusum_arl0,
    cusum_arl0_exact,
    cusum_threshold,
    cusum_threshold_exact,
    steps_budget,
    window_alpha,
)
from detectors.stats.scores import NormalScores, TailPValue

__all__ = [
    "NormalScores",
    "TailPValue",
    "cusum_arl0",
    "cusum_arl0_exact",
    "cusum_threshold",
    "cusum_threshold_exact",
    "steps_budget",
    "window_alpha",
]
