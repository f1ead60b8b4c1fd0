"""Which detectors watch a model, with which settings: the one place that lists them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from detectors.base import Detector
from detectors.input_anomaly import InputAnomalyDetector, InputAnomalySettings
from detectors.numeric_drift import NumericDriftDetector, NumericDriftSettings
from detectors.query_patterns import QueryPatternDetector, QueryPatternSettings


class DetectorSettings(BaseModel):
    """Settings of every detector; `[detectors]` in the config file, per model under
    `[models.NAME.detectors]`."""

    model_config = ConfigDict(extra="forbid")

    numeric_drift: NumericDriftSettings = Field(default_factory=NumericDriftSettings)
    query_patterns: QueryPatternSettings = Field(default_factory=QueryPatternSettings)
    input_anomaly: InputAnomalySettings = Field(default_factory=InputAnomalySettings)

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
    return [
        NumericDriftDetector(model, settings.numeric_drift),
        QueryPatternDetector(model, settings.query_patterns),
        InputAnomalyDetector(model, settings.input_anomaly),
    ]
