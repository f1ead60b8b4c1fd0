"""Statistics the detectors share: one CUSUM, its calibration from a false-alarm budget, and
the transforms that make a statistic N(0, 1) in control."""
