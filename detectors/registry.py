"""Which detectors watch a model, with which settings: the one place that lists them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from detectors.accuracy import AccuracyDetector, AccuracySettings
from detectors.base import Detector
from detectors.numeric_drift import NumericDriftDetector, NumericDriftSettings


class DetectorSettings(BaseModel):
    """Settings of every detector; `[detectors]` in the config file, per model under
    `[models.NAME.detectors]`."""

    model_config = ConfigDict(extra="forbid")

    numeric_drift: NumericDriftSettings = Field(default_factory=NumericDriftSettings)
    accuracy: AccuracySettings = Field(default_factory=AccuracySettings)

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
        AccuracyDetector(model, settings.accuracy),
    ]
