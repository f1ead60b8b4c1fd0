"""Numeric feature drift: calibrated Page-Hinkley tests on block normal scores.

Per feature, values are mapped to N(0,1) scores through the reference distribution
(`NormalScores`), averaged over blocks of `block_size` values, and each block feeds two River
Page-Hinkley tests with no forgetting (that is, two-sided CUSUMs): one on the block mean
(location shifts) and one on the Wilson-Hilferty transform of the block's mean square
(spread changes). Both block statistics are N(0,1) in control, so the thresholds come from the
model's false-alarm budget (`detectors.calibration`), split over every test of the model.

Raw River detectors at their defaults are noisy precisely because their inputs are neither
standardized nor aggregated; here they are both. A detection becomes a finding only when its
effect size, measured over the blocks since the estimated change point, clears a practical
significance floor, so trivial shifts on huge streams stay quiet.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from river.drift import PageHinkley

from detectors.base import Detector, Finding, Kind, Severity
from detectors.calibration import NormalScores, cusum_threshold, steps_budget
from streams.batch import ModelBatch

MIN_DISTINCT_VALUES = 10  # fewer distinct reference values: a code, not a measurement
RECENT_BLOCKS = 64  # how far back the change point and effect size are estimated


class NumericDriftSettings(BaseModel):
    """Sensitivity of numeric drift detection; per-feature overrides by feature name."""

    model_config = ConfigDict(extra="forbid")

    reference_size: int = Field(3000, ge=200)
    block_size: int = Field(50, ge=10)
    min_detectable_shift: float = Field(0.25, gt=0)  # in reference standard deviations
    min_effect_size: float = Field(0.2, ge=0)  # practical-significance floor (std units)
    min_log_scale_change: float = Field(0.2, ge=0)  # floor for spread: |log(std ratio)|
    critical_effect_size: float = Field(1.0, gt=0)
    false_alarms_per_million: float = Field(0.1, gt=0)  # this detector's share of the budget
    features: dict[str, dict[str, float]] = Field(default_factory=dict)


@dataclass(slots=True)
class _Block:
    mean_score: float  # mean of normal scores
    mean_square: float  # mean of squared normal scores
    raw_mean: float
    count: int


@dataclass(slots=True)
class _Alarm:
    index: int  # index, among the values fed, of the last value of the alarming block
    test: str  # "location" or "spread"
    value: float  # the Page-Hinkley statistic that crossed the threshold
    window: _Block  # summary of the blocks since the estimated change point
    blocks_since_change: int


class _FeatureMonitor:
    """Reference, block accumulator and the two Page-Hinkley tests of one feature."""

    def __init__(self, reference: np.ndarray, block_size: int, k: float, h: float) -> None:
        self.scores = NormalScores(reference)
        self.ref_mean = float(np.mean(reference))
        self.ref_std = float(np.std(reference)) or 1.0
        self.ref_quantiles = [float(q) for q in np.quantile(reference, [0.05, 0.5, 0.95])]
        self.block_size = block_size
        self.k, self.h = k, h
        self.location = PageHinkley(min_instances=1, delta=k, threshold=h, alpha=1.0)
        self.spread = PageHinkley(min_instances=1, delta=k, threshold=h, alpha=1.0)
        self.pending_scores = np.empty(0)
        self.pending_raw = np.empty(0)
        self.recent: deque[_Block] = deque(maxlen=RECENT_BLOCKS)
        self.seen = 0
        # Warm both tests up on the reference's own blocks, so that their running means start
        # at the reference level: a stream drifted from its very first block is still caught.
        ref_scores = self.scores(reference)
        for start in range(0, len(reference) - block_size + 1, block_size):
            block = ref_scores[start : start + block_size]
            self.location.update(self._location_stat(block))
            self.spread.update(self._spread_stat(block))

    def _location_stat(self, block: np.ndarray) -> float:
        return float(block.sum() / math.sqrt(len(block)))

    def _spread_stat(self, block: np.ndarray) -> float:
        return float(_wilson_hilferty(np.dot(block, block) / len(block), len(block)))

    def feed(self, raw: np.ndarray) -> list[_Alarm]:
        """Adds values (in arrival order) and returns the alarms of the blocks they complete."""
        scores = np.concatenate([self.pending_scores, self.scores(raw)])
        raws = np.concatenate([self.pending_raw, raw])
        carried = len(self.pending_scores)
        full = len(scores) // self.block_size
        cut = full * self.block_size
        self.pending_scores, self.pending_raw = scores[cut:], raws[cut:]
        if full == 0:
            return []
        blocks = scores[:cut].reshape(full, self.block_size)
        mean_scores = blocks.mean(axis=1)
        mean_squares = np.einsum("ij,ij->i", blocks, blocks) / self.block_size
        raw_means = raws[:cut].reshape(full, self.block_size).mean(axis=1)
        location_stats = mean_scores * math.sqrt(self.block_size)
        spread_stats = _wilson_hilferty(mean_squares, self.block_size)
        alarms = []
        for b in range(full):
            self.recent.append(
                _Block(
                    float(mean_scores[b]),
                    float(mean_squares[b]),
                    float(raw_means[b]),
                    self.block_size,
                )
            )
            self.seen += self.block_size
            last_index = (b + 1) * self.block_size - 1 - carried
            for test, ph, stat in (
                ("location", self.location, location_stats[b]),
                ("spread", self.spread, spread_stats[b]),
            ):
                ph.update(float(stat))
                if ph.drift_detected:
                    window, blocks_since = self._since_change(test)
                    alarms.append(_Alarm(last_index, test, _ph_value(ph), window, blocks_since))
        return alarms

    def _since_change(self, test: str) -> tuple[_Block, int]:
        """Summary of the blocks since the most likely change point (the CUSUM's argmax)."""
        blocks = list(self.recent)
        if test == "location":
            stats = np.array([b.mean_score * math.sqrt(b.count) for b in blocks])
        else:
            stats = np.array([_wilson_hilferty(b.mean_square, b.count) for b in blocks])
        best_m, best = 1, -math.inf
        for sign in (1.0, -1.0):
            tail = np.cumsum((sign * stats - self.k)[::-1])
            m = int(np.argmax(tail)) + 1
            if tail[m - 1] > best:
                best_m, best = m, float(tail[m - 1])
        window = blocks[-best_m:]
        count = sum(b.count for b in window)
        return (
            _Block(
                mean_score=sum(b.mean_score * b.count for b in window) / count,
                mean_square=sum(b.mean_square * b.count for b in window) / count,
                raw_mean=sum(b.raw_mean * b.count for b in window) / count,
                count=count,
            ),
            best_m,
        )


class NumericDriftDetector(Detector):
    """`feature_drift` on numeric features; see the module docstring for the method."""

    name = "numeric_drift"

    def __init__(self, model: str, settings: NumericDriftSettings | None = None) -> None:
        self.model = model
        self.settings = settings or NumericDriftSettings()
        self.reference: dict[str, list[np.ndarray]] = {}
        self.reference_events = 0  # events (predictions) of the model fed to the reference
        self.monitors: dict[str, _FeatureMonitor] = {}
        self.discrete: set[str] = set()
        self.ready = False

    def update(self, batch: ModelBatch) -> list[Finding]:
        start = 0
        if not self.ready:
            start = self._collect_reference(batch)
            if not self.ready:
                return []
        findings: list[Finding] = []
        for name, column in batch.numeric.items():
            valid = start + np.flatnonzero(~np.isnan(column[start:]))
            if len(valid) == 0:
                continue
            monitor = self.monitors.get(name)
            if monitor is None:
                continue  # a feature unseen in the reference: data quality's business
            for alarm in monitor.feed(column[valid]):
                finding = self._finding(batch, name, monitor, int(valid[alarm.index]), alarm)
                if finding is not None:
                    findings.append(finding)
        return findings

    def _collect_reference(self, batch: ModelBatch) -> int:
        """Feeds the reference with the model's first `reference_size` events; returns the
        index of the batch's first event left for monitoring.

        Counted in events, not per feature, so the reference (and every later result) is the
        same however the stream is cut into batches: a Kafka run equals a replay.
        """
        take = min(len(batch), self.settings.reference_size - self.reference_events)
        for name, column in batch.numeric.items():
            values = column[:take]
            values = values[~np.isnan(values)]
            if len(values):
                self.reference.setdefault(name, []).append(values)
        self.reference_events += take
        if self.reference_events >= self.settings.reference_size:
            self._freeze_reference()
        return take

    def _freeze_reference(self) -> None:
        s = self.settings
        samples = {n: np.concatenate(parts) for n, parts in self.reference.items()}
        continuous = {
            n: v
            for n, v in samples.items()
            if len(v) >= s.block_size * 4 and len(np.unique(v)) >= MIN_DISTINCT_VALUES
        }
        self.discrete = set(samples) - set(continuous)
        tests = max(1, 4 * len(continuous))  # 2 statistics x 2 sides per feature
        arl0 = steps_budget(s.block_size, tests, s.false_alarms_per_million)
        for name, values in continuous.items():
            shift = s.features.get(name, {}).get("min_detectable_shift", s.min_detectable_shift)
            k = math.sqrt(s.block_size) * shift / 2
            self.monitors[name] = _FeatureMonitor(values, s.block_size, k, cusum_threshold(k, arl0))
        self.reference = {}
        self.ready = True

    def _finding(
        self,
        batch: ModelBatch,
        name: str,
        monitor: _FeatureMonitor,
        index: int,
        alarm: _Alarm,
    ) -> Finding | None:
        s = self.settings
        test, window = alarm.test, alarm.window
        floor_key = "min_effect_size" if test == "location" else "min_log_scale_change"
        floor = s.features.get(name, {}).get(floor_key, getattr(s, floor_key))
        if test == "location":
            effect = window.mean_score
            statistic = "cusum_mean_shift"
        else:
            effect = 0.5 * math.log(max(window.mean_square, 1e-12))
            statistic = "cusum_scale_change"
        if abs(effect) < floor:
            return None
        severity = Severity.CRITICAL if abs(effect) >= s.critical_effect_size else Severity.WARNING
        raw_shift = (window.raw_mean - monitor.ref_mean) / monitor.ref_std
        what = "mean" if test == "location" else "spread"
        direction = "up" if effect > 0 else "down"
        return Finding(
            model=self.model,
            kind=Kind.FEATURE_DRIFT,
            subject=name,
            severity=severity,
            ts=float(batch.ts[index]),
            position=batch.positions[index],
            detector=self.name,
            statistic=statistic,
            value=round(alarm.value, 4),
            threshold=round(monitor.h, 4),
            effect_size=round(effect, 4),
            support=window.count,
            title=f"{name}: {what} shifted {direction} by {abs(effect):.2f} std",
            details={
                "test": "page_hinkley_on_block_normal_scores",
                "effect_measure": (
                    "mean normal-score shift (std units)"
                    if test == "location"
                    else "log ratio of standard deviations"
                ),
                "k": round(monitor.k, 4),
                "block_size": monitor.block_size,
                "blocks_since_change": alarm.blocks_since_change,
                "reference": {
                    "mean": monitor.ref_mean,
                    "std": monitor.ref_std,
                    "p05_p50_p95": monitor.ref_quantiles,
                    "size": len(monitor.scores.sorted),
                },
                "current": {"mean": window.raw_mean, "count": window.count},
                "standardized_mean_shift": round(raw_shift, 4),
                "events_seen": monitor.seen,
            },
        )


def _wilson_hilferty(mean_square: float | np.ndarray, n: int) -> float | np.ndarray:
    """N(0,1) in control: the cube root of a chi-square(n)/n is close to normal."""
    return (np.cbrt(mean_square) - (1 - 2 / (9 * n))) / math.sqrt(2 / (9 * n))


def _ph_value(ph: PageHinkley) -> float:
    """The Page-Hinkley statistic that crossed the threshold (the larger of its two sides)."""
    up = ph._sum_increase - ph._min_increase
    down = ph._max_decrease - ph._sum_decrease
    return float(max(up, down))
