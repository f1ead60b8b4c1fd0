"""What the accuracy tests compare against (`ReferenceLevel`) and what they report (`Draft`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detectors.base import Severity


@dataclass(slots=True)
class ReferenceLevel:
    """What the first `reference_size` labelled events say; frozen afterwards."""

    n: int
    level: float  # accuracy, or MAE for regression
    ci: tuple[float, float]
    rmse: float = 0.0
    bias: float = 0.0
    bias_ci: tuple[float, float] = (0.0, 0.0)
    estimated: float | None = None  # mean expected correctness (or estimated |error|)
    estimated_ci: tuple[float, float] = (0.0, 1.0)
    edges: np.ndarray | None = None  # calibration bins (confidence cut points)
    rates: np.ndarray | None = None  # accuracy per calibration bin


@dataclass(slots=True)
class Draft:
    """A finding's own part, as a task words it; the detector adds what all of them share
    (model, kind, time, position, the test's value and threshold, the join's counters)."""

    subject: str
    statistic: str
    severity: Severity
    effect: float
    title: str
    details: dict[str, Any]
