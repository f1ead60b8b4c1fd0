"""Which detectors watch a model, with which settings: the one place that lists them.

The false-alarm budget is the model's: `false_alarms_per_million` is the expected number of
false incidents per million events across all its features and detectors together. Each
reference-based detector gets `budget_share` of it and splits that over its own tests (per
feature, per statistic, per side, per window), so adding features or detectors never raises
the model's false-alarm rate.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from detectors.accuracy import AccuracyDetector, AccuracySettings
from detectors.base import Detector
from detectors.categorical_drift import CategoricalDriftDetector, CategoricalDriftSettings
from detectors.data_quality import DataQualityDetector, DataQualitySettings
from detectors.input_anomaly import InputAnomalyDetector, InputAnomalySettings
from detectors.multivariate_drift import MultivariateDriftDetector, MultivariateDriftSettings
from detectors.numeric_drift import NumericDriftDetector, NumericDriftSettings
from detectors.prediction_drift import PredictionDriftDetector, PredictionDriftSettings
from detectors.query_patterns import QueryPatternDetector, QueryPatternSettings
from detectors.shape_drift import ShapeDriftDetector, ShapeDriftSettings
from detectors.stream_stall import StreamStallDetector, StreamStallSettings


class DetectorSettings(BaseModel):
    """Settings of every detector; `[detectors]` in the config file, per model under
    `[models.NAME.detectors]`."""

    model_config = ConfigDict(extra="forbid")

    # Events of the model learned as its reference when none is stored.
    reference_size: int = Field(3000, ge=200)
    # Expected false incidents per million events, the whole model. The ceiling is 1;
    # the default keeps a margin for what the approximations (Siegmund, chi-square tails)
    # leave uncovered.
    false_alarms_per_million: float = Field(0.2, gt=0, le=1000)
    numeric_drift: NumericDriftSettings = Field(default_factory=NumericDriftSettings)
    shape_drift: ShapeDriftSettings = Field(default_factory=ShapeDriftSettings)
    multivariate_drift: MultivariateDriftSettings = Field(default_factory=MultivariateDriftSettings)
    categorical_drift: CategoricalDriftSettings = Field(default_factory=CategoricalDriftSettings)
    prediction_drift: PredictionDriftSettings = Field(default_factory=PredictionDriftSettings)
    data_quality: DataQualitySettings = Field(default_factory=DataQualitySettings)

    accuracy: AccuracySettings = Field(default_factory=AccuracySettings)
    query_patterns: QueryPatternSettings = Field(default_factory=QueryPatternSettings)
    input_anomaly: InputAnomalySettings = Field(default_factory=InputAnomalySettings)
    stream_stall: StreamStallSettings = Field(default_factory=StreamStallSettings)

    @model_validator(mode="after")
    def _shares_fit(self) -> DetectorSettings:
        total = sum(s.budget_share for s in self.budgeted().values())
        if total > 1 + 1e-9:
            raise ValueError(
                f"the detectors' budget_share values add up to {total:g}; they must not "
                "exceed 1 (they split the model's false_alarms_per_million)"
            )
        return self

    def budgeted(self) -> dict[str, Any]:
        """The detectors sharing the model's event-based false-alarm budget (accuracy budgets
        labelled events, query patterns benign clients: each on its own)."""
        return {
            "numeric_drift": self.numeric_drift,
            "shape_drift": self.shape_drift,
            "multivariate_drift": self.multivariate_drift,
            "categorical_drift": self.categorical_drift,
            "prediction_drift": self.prediction_drift,
            "data_quality": self.data_quality,
            "input_anomaly": self.input_anomaly,
        }

    def budget_of(self, detector: str) -> float:
        """A detector's false alarms per million events: its share of the model's budget."""
        return self.false_alarms_per_million * self.budgeted()[detector].budget_share

    def merged(self, overrides: dict[str, Any]) -> DetectorSettings:
        """These settings with a model's overrides applied on top, validated again."""
        data = self.model_dump()
        for section, values in overrides.items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section] = {**data[section], **values}
            else:
                data[section] = values
        return DetectorSettings.model_validate(data)


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
