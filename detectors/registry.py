"""Which detectors watch a model, with which settings: the one place that lists them.

The false-alarm budget is the model's: `false_alarms_per_million` is the expected number of
false incidents per million events across all its features and detectors together. Each
reference-based detector gets `budget_share` of it and splits that over its own tests (per
feature, per statistic, per side, per window), so adding features or detectors never raises
the model's false-alarm rate.
"""

from __future__ import annotations

from detectors.accuracy import AccuracyDetector
from detectors.base import Detector
from detectors.categorical_drift import CategoricalDriftDetector
from detectors.clients.detector import QueryPatternDetector
from detectors.data_quality import DataQualityDetector
from detectors.input_anomaly import InputAnomalyDetector
from detectors.multivariate_drift import MultivariateDriftDetector
from detectors.numeric_drift import NumericDriftDetector
from detectors.prediction_drift import PredictionDriftDetector
from detectors.settings import DetectorSettings
from detectors.shape_drift import ShapeDriftDetector
from detectors.stream_stall import StreamStallDetector


def build_detectors(model: str, settings: DetectorSettings) -> list[Detector]:
    size = settings.reference_size
    return [
        NumericDriftDetector(
            model, settings.numeric_drift, size, settings.budget_of("numeric_drift")
        ),
        ShapeDriftDetector(model, settings.shape_drift, size, settings.budget_of("shape_drift")),
        MultivariateDriftDetector(
            model, settings.multivariate_drift, size, settings.budget_of("multivariate_drift")
        ),
        CategoricalDriftDetector(
            model, settings.categorical_drift, size, settings.budget_of("categorical_drift")
        ),
        PredictionDriftDetector(
            model, settings.prediction_drift, size, settings.budget_of("prediction_drift")
        ),
        DataQualityDetector(model, settings.data_quality, size, settings.budget_of("data_quality")),
        AccuracyDetector(model, settings.accuracy),
        QueryPatternDetector(model, settings.query_patterns),
        InputAnomalyDetector(
            model, settings.input_anomaly, size, settings.budget_of("input_anomaly")
        ),
        StreamStallDetector(model, settings.stream_stall),
    ]
