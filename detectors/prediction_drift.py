"""Prediction drift: what the model outputs, judged against what it output on the reference.

Three subjects, each monitored with the same machinery as features:
- `class_proportions`: the `prediction` of a classifier (strings, booleans, or few distinct
  numbers), by the windowed chi-square test with PSI floor (`CategoricalMonitor`);
- `prediction`: the output of a regressor (many distinct numbers), by the calibrated
  Page-Hinkley tests on normal scores (`NumericMonitor`);
- `score`: the single `score`, or from `scores` the positive-class probability (two classes:
  the one that sorts last, e.g. "1") or else the top-class probability (the model's
  confidence), numeric or categorical depending on how many distinct values it takes;
- `score:<class>`: with more than two classes, each class's own probability (up to
  `MAX_CLASS_SUBJECTS` classes): mass moving between classes that are never on top changes
  neither the top-class probability nor the predicted classes.

The detector's share of the model's false-alarm budget is split evenly over its subjects.
"""

from __future__ import annotations

from dataclasses import astuple
from itertools import repeat
from typing import Any

import numpy as np

from detectors.base import Finding, Kind
from detectors.categorical_drift import CategoricalMonitor, PsiFloors
from detectors.numeric_drift import (
    MONITOR_LAYOUT,
    Floors,
    NumericMonitor,
    client_windows,
    numeric_arl0,
)
from detectors.reference import Monitor, ReferenceDetector, is_continuous, is_none, watch
from detectors.settings import PredictionDriftSettings
from detectors.stats.calibration import window_alpha
from detectors.stats.clustering import ClientContext, ClientWindows
from streams.batch import ModelBatch

MIN_REFERENCE_VALUES = 200
MAX_CLASS_SUBJECTS = 20  # per-class score subjects of a multiclass model, at most
CLASS_PREFIX = "score:"


class PredictionDriftDetector(ReferenceDetector):
    """`prediction_drift` on class proportions, scores and regression outputs."""

    name = "prediction_drift"

    settings_type = PredictionDriftSettings
    settings: PredictionDriftSettings
    monitors: dict[str, tuple[Monitor, Floors | PsiFloors]]
    positive_class: str | None
    single_score: bool
    windows: ClientWindows
    configuration = (*ReferenceDetector.configuration, "monitor_layout")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.monitor_layout = MONITOR_LAYOUT  # numeric monitors, and per-class subjects

    def build(self, reference: ModelBatch) -> None:
        s = self.settings
        scores = reference.scores
        classes = sorted({c for d in scores if d for c in d})
        self.positive_class = classes[-1] if len(classes) == 2 else None
        self.single_score = reference.score is not None and bool(np.any(~np.isnan(reference.score)))
        per_class = classes if 2 < len(classes) <= MAX_CLASS_SUBJECTS else []
        candidates = [
            ("prediction", _outputs(reference)),
            ("score", self._score(reference)),
            *((f"{CLASS_PREFIX}{c}", _present(_class_scores(scores, c))) for c in per_class),
        ]
        outputs = {
            subject: values for subject, values in candidates if len(values) >= MIN_REFERENCE_VALUES
        }
        share = self.budget / max(1, len(outputs))
        self.monitors = {}
        for output, values in outputs.items():
            numeric = values.dtype != object and is_continuous(values)
            subject = "class_proportions" if output == "prediction" and not numeric else output
            if numeric:
                arl0 = numeric_arl0(s.block_size, 1, share)
                numeric_floors = Floors(
                    s.of(subject, "min_effect_size"),
                    s.of(subject, "min_log_scale_change"),
                    s.of(subject, "critical_effect_size"),
                )
                shift = s.of(subject, "min_detectable_shift")
                monitor: Monitor = NumericMonitor(values, s.block_size, shift, arl0, numeric_floors)
                floors: Floors | PsiFloors = numeric_floors
            else:
                alpha = window_alpha(share, s.window, 1)
                floors = PsiFloors(s.of(subject, "min_psi"), s.of(subject, "critical_psi"))
                monitor = CategoricalMonitor(values, s.window, alpha, s.min_expected)
            self.monitors[subject] = (monitor, floors)
        self.windows = client_windows(self._numeric_monitors())

    def built_state(self) -> dict[str, Any]:
        return {
            "positive_class": self.positive_class,
            "single_score": self.single_score,
            "monitors": {
                subject: {
                    "numeric": isinstance(monitor, NumericMonitor),
                    "monitor": monitor.state(),  # type: ignore[attr-defined]
                    "floors": list(astuple(floors)),
                }
                for subject, (monitor, floors) in self.monitors.items()
            },
            "windows": self.windows.state(),
        }

    def load_built(self, state: dict[str, Any]) -> None:
        self.positive_class = state["positive_class"]
        self.single_score = state["single_score"]
        self.monitors = {}
        for subject, entry in state["monitors"].items():
            if entry["numeric"]:
                monitor: Monitor = NumericMonitor.of_state(entry["monitor"])
                floors: Floors | PsiFloors = Floors(*entry["floors"])
            else:
                monitor = CategoricalMonitor.of_state(entry["monitor"])
                floors = PsiFloors(*entry["floors"])
            self.monitors[subject] = (monitor, floors)
        self.windows = ClientWindows.of_state(state["windows"])

    def monitor(self, batch: ModelBatch) -> list[Finding]:
        findings: list[Finding] = []
        clients = ClientContext.of(batch, self.windows)
        for subject, (monitor, floors) in self.monitors.items():
            values, index = self._values(batch, subject)
            if len(values) == 0:
                continue
            findings += watch(
                self.name,
                Kind.PREDICTION_DRIFT,
                subject,
                monitor,
                floors,
                batch,
                values,
                index,
                clients.take(index),
            )
        return findings

    def _numeric_monitors(self) -> list[NumericMonitor]:
        return [m for m, _ in self.monitors.values() if isinstance(m, NumericMonitor)]

    def output_column(self, batch: ModelBatch, subject: str) -> np.ndarray:
        """Per event, the numeric output this detector watches as `subject` ("score" or
        "prediction"), NaN where absent: what agent.incidents.attribution explains by the
        features."""
        if subject == "score":
            return self._score(batch, keep_missing=True)
        return np.array([_number(v) for v in batch.predictions], dtype=np.float64)

    def _values(self, batch: ModelBatch, subject: str) -> tuple[np.ndarray, np.ndarray]:
        """The subject's non-missing values and the indices of their events."""
        if subject == "score":
            raw = self._score(batch, keep_missing=True)
        elif subject.startswith(CLASS_PREFIX):
            raw = _class_scores(batch.scores, subject.removeprefix(CLASS_PREFIX))
        else:
            raw = np.array(batch.predictions, dtype=object)
            if subject == "prediction":
                raw = np.array([_number(v) for v in raw], dtype=np.float64)
        missing = np.isnan(raw) if raw.dtype != object else is_none(raw)
        index = np.flatnonzero(~missing)
        return raw[index], index

    def _score(self, batch: ModelBatch, keep_missing: bool = False) -> np.ndarray:
        if self.single_score:
            values = batch.score if batch.score is not None else np.full(len(batch), np.nan)
        else:
            values = _class_scores(batch.scores, self.positive_class)
        return values if keep_missing else values[~np.isnan(values)]


def _class_scores(scores: list[dict[str, float] | None], positive: str | None) -> np.ndarray:
    """Per event, the positive class's score (or, without one, the top score); NaN where the
    event has no scores."""
    if positive is not None and None not in scores:
        # The usual case: every event has scores. dict.get runs in C, no Python per event.
        # (No None among them, which the stubs cannot see.)
        get: Any = dict.get
        return np.fromiter(map(get, scores, repeat(positive), repeat(np.nan)), np.float64)
    return np.array(
        [
            np.nan if not d else d.get(positive, np.nan) if positive else max(d.values())
            for d in scores
        ],
        dtype=np.float64,
    )


def _present(values: np.ndarray) -> np.ndarray:
    return values[~np.isnan(values)]


def _outputs(reference: ModelBatch) -> np.ndarray:
    """The reference's predictions: floats when all are numbers, else objects."""
    values = [v for v in reference.predictions if v is not None]
    if values and all(_number(v) == v for v in values):
        return np.array(values, dtype=np.float64)
    return np.array(values, dtype=object)


def _number(value: object) -> float:
    """A prediction as a number, NaN when it is not one (booleans are classes, not numbers)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return np.nan
