"""Numeric feature shape drift: windowed two-sample Kolmogorov-Smirnov tests.

The location and spread tests of `numeric_drift` see means and variances; a feature can change
shape with neither moving (one mode splitting into two, a tail growing while the bulk shrinks).
Here each continuous feature's non-missing values are cut, in event order, into tumbling
windows at each of the `windows` sizes (1,000 and 5,000 by default: the short one answers a
strong change quickly, the long one sees a smaller one), and each window is compared with the
whole reference by the two-sample KS distance D = sup |F_ref - F_window|.

Calibration: under no change, sqrt(n m / (n + m)) D follows Kolmogorov's distribution
asymptotically (its tail is conservative with ties, so integer-valued features are safe), and a
two-sample test accounts for the reference's own sampling error, so its level holds for every
window. The detector's share of the model's budget is split over features and window sizes,
and each window's test runs at alpha = share / (tests x 1e6 / window): a union bound, valid
however the windows are correlated through the shared reference.

A significant window becomes a finding only if D reaches `min_ks` (0.05, a practical floor in
distribution terms: the largest gap between the two cumulative distributions, 5 percentage
points), critical from `critical_ks` (0.25). With a 3,000-value reference the test's own
threshold is above the floor for any window (about 0.1 for 1,000 values, 0.06 for 5,000): the
floor binds with larger stored references. The first Wasserstein distance, in reference standard
deviations, is reported alongside.

Where events carry a `client`, a window counts as its size over its design effect (its own
composition, and the intraclass correlation of the values' reference ranks within keys,
`detectors.stats.clustering`): its threshold is that of the smaller sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import kolmogi

from detectors.base import Finding, Kind, Severity, Verdict
from detectors.reference import (
    ReferenceDetector,
    is_continuous,
    present_numbers,
    watch,
)
from detectors.settings import ShapeDriftSettings
from detectors.stats.calibration import window_alpha
from detectors.stats.clustering import (
    ClientContext,
    IntraclassCorrelation,
    loaded_ids,
    stored_ids,
)
from streams.batch import ModelBatch

MIN_REFERENCE_VALUES = 200
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
WASSERSTEIN_GRID = np.linspace(0.0025, 0.9975, 400)


@dataclass(slots=True)
class ShapeAlarm:
    index: int  # index, among the values fed, of the window's last value
    ks: float
    threshold: float
    alpha: float
    window: np.ndarray  # the window's values, sorted
    design_effect: float = 1.0  # of the window's clients: it counted as size / this values
    intraclass_correlation: float = 0.0  # the rho (of reference ranks) it was computed with


@dataclass(frozen=True, slots=True)
class KsFloors:
    min_ks: float
    critical_ks: float


def ks_distance(
    reference_sorted: np.ndarray, sample_sorted: np.ndarray, at: np.ndarray | None = None
) -> float:
    """The two-sample Kolmogorov-Smirnov distance of two sorted samples, ties included.

    Between two consecutive sample values the sample's distribution function is flat and the
    reference's only rises, so the largest gap is at a sample value, just at it or just below
    it: both functions are evaluated there only (binary searches per sample value, none per
    reference value). `at` may hold the first search (reference values <= each sample
    value) where the caller made it."""
    n, m = len(reference_sorted), len(sample_sorted)
    if at is None:
        at = np.searchsorted(reference_sorted, sample_sorted, side="right")
    f_at = at / n
    f_below = np.searchsorted(reference_sorted, sample_sorted, side="left") / n
    if np.any(sample_sorted[1:] == sample_sorted[:-1]):  # ties: count them
        g_at = np.searchsorted(sample_sorted, sample_sorted, side="right") / m
        g_below = np.searchsorted(sample_sorted, sample_sorted, side="left") / m
    else:
        g_below = np.arange(m) / m
        g_at = g_below + 1 / m
    return float(max(np.max(np.abs(f_at - g_at)), np.max(np.abs(f_below - g_below))))


def ks_threshold(alpha: float, n: int, m: float) -> float:
    """The KS distance a two-sample test of sizes n and m exceeds with probability alpha
    under no change (Kolmogorov's limit distribution); m may be an effective size."""
    return float(kolmogi(alpha)) * math.sqrt((n + m) / (n * m))


class ShapeMonitor:
    """One numeric quantity's sorted reference and its tumbling windows of several sizes."""

    def __init__(self, reference: np.ndarray, windows: list[int], alphas: list[float]) -> None:
        self.sorted = np.sort(np.asarray(reference, dtype=np.float64))
        self.ref_std = float(np.std(self.sorted)) or 1.0
        self.windows = list(windows)
        self.alphas = list(alphas)  # the level of each window size's test
        n = len(self.sorted)
        self.thresholds = [ks_threshold(a, n, w) for a, w in zip(alphas, windows, strict=True)]
        self.open: list[np.ndarray] = [np.empty(0) for _ in self.windows]  # per size
        self.open_ids = [np.zeros(0, dtype=np.int64) for _ in self.windows]  # their clients
        # Per size, rho of the values' reference ranks, from its own windows (so each test
        # is the same however the stream was cut into batches).
        self.iccs = [IntraclassCorrelation() for _ in self.windows]
        self.seen = 0

    def state(self) -> dict[str, Any]:
        """Plain data: the sorted reference, the tests' sizes and levels, the open windows."""
        return {
            "reference": self.sorted,
            "windows": self.windows,
            "alphas": self.alphas,
            "open": self.open,
            "open_ids": [stored_ids(ids) for ids in self.open_ids],
            "iccs": [icc.state() for icc in self.iccs],
            "seen": self.seen,
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> ShapeMonitor:
        monitor = cls(state["reference"], state["windows"], state["alphas"])
        monitor.open = [np.asarray(w, dtype=np.float64) for w in state["open"]]
        stored = state.get("open_ids") or [None] * len(monitor.open)
        monitor.open_ids = [
            loaded_ids(ids, len(w)) for ids, w in zip(stored, monitor.open, strict=True)
        ]
        monitor.iccs = [IntraclassCorrelation(*i) for i in state.get("iccs", [])] or [
            IntraclassCorrelation() for _ in monitor.windows
        ]
        monitor.seen = state["seen"]
        return monitor

    def feed(self, values: np.ndarray, clients: ClientContext | None = None) -> list[ShapeAlarm]:
        """Adds values (in arrival order, with their `clients`); returns the alarms of the
        windows they complete. A window whose values came in clients' clusters counts as its
        size over their design effect: its threshold is that of the smaller sample."""
        ids = clients.ids if clients is not None else np.zeros(len(values), dtype=np.int64)
        alarms = []
        for i, size in enumerate(self.windows):
            carried = len(self.open[i])
            pool = np.concatenate([self.open[i], values])
            pool_ids = np.concatenate([self.open_ids[i], ids])
            full = len(pool) // size
            cut = full * size
            clustered = clients is not None and full > 0 and bool(pool_ids[:cut].any())
            # Per window: its values sorted, its KS distance, and (clustered) the values'
            # reference ranks in arrival order, from the search the KS distance makes anyway.
            windows, distances = [], np.empty(full)
            ranks = np.empty((full, size)) if clustered else None
            for w in range(full):
                values_w = pool[w * size : (w + 1) * size]
                if ranks is None:
                    window = np.sort(values_w)
                    distances[w] = ks_distance(self.sorted, window)
                else:
                    order = np.argsort(values_w)
                    window = values_w[order]
                    at = np.searchsorted(self.sorted, window, side="right")
                    distances[w] = ks_distance(self.sorted, window, at)
                    ranks[w, order] = at
                windows.append(window)
            rho, deff = np.zeros(full), np.ones(full)
            if clients is not None and ranks is not None:
                groups = clients.groups(self.open_ids[i], size)
                centred = ranks - ranks.mean(axis=1, keepdims=True)
                spread = np.sqrt(np.einsum("ij,ij->i", centred, centred) / size)[:, None]
                rho = self.iccs[i].through_each(groups, centred / np.where(spread > 0, spread, 1))
                deff = 1.0 + rho * groups.excess
            for w, (window, ks) in enumerate(zip(windows, distances.tolist(), strict=True)):
                threshold = self.thresholds[i]
                if deff[w] > 1:
                    threshold = ks_threshold(self.alphas[i], len(self.sorted), size / deff[w])
                if ks > threshold:
                    index = (w + 1) * size - 1 - carried
                    alarm = ShapeAlarm(index, ks, threshold, self.alphas[i], window)
                    alarm.design_effect, alarm.intraclass_correlation = deff[w], rho[w]
                    alarms.append(alarm)
            self.open[i], self.open_ids[i] = pool[cut:], pool_ids[cut:]
        self.seen += len(values)
        alarms.sort(key=lambda a: (a.index, -a.ks))
        return alarms

    def judge(self, name: str, alarm: ShapeAlarm, floors: KsFloors) -> Verdict | None:
        """The alarm as evidence, or None when its KS distance is under the practical floor."""
        if alarm.ks < floors.min_ks:
            return None
        window = alarm.window
        wasserstein = float(
            np.mean(
                np.abs(
                    np.quantile(self.sorted, WASSERSTEIN_GRID)
                    - np.quantile(window, WASSERSTEIN_GRID)
                )
            )
            / self.ref_std
        )
        shift = (float(window.mean()) - float(self.sorted.mean())) / self.ref_std
        ratio = float(np.std(window)) / self.ref_std
        return Verdict(
            statistic="ks_distance",
            value=round(alarm.ks, 4),
            threshold=round(alarm.threshold, 4),
            effect_size=round(alarm.ks, 4),
            severity=Severity.CRITICAL if alarm.ks >= floors.critical_ks else Severity.WARNING,
            support=len(window),
            title=_title(name, alarm.ks, shift, ratio),
            details={
                "test": "windowed_kolmogorov_smirnov_two_sample",
                "effect_measure": "Kolmogorov-Smirnov distance",
                "effect_floor": floors.min_ks,
                "alpha": alarm.alpha,
                "window": len(window),
                "wasserstein_std": round(wasserstein, 4),
                "standardized_mean_shift": round(shift, 4),
                "std_ratio": round(ratio, 4),
                "reference": {
                    "size": len(self.sorted),
                    "mean": float(self.sorted.mean()),
                    "std": self.ref_std,
                    "quantiles": _quantiles(self.sorted),
                },
                "current": {
                    "size": len(window),
                    "mean": float(window.mean()),
                    "std": float(np.std(window)),
                    "quantiles": _quantiles(window),
                },
                "events_seen": self.seen,
                # Clients' clusters: the window counted as window / design_effect values.
                "design_effect": round(alarm.design_effect, 4),
                "intraclass_correlation": round(alarm.intraclass_correlation, 4),
            },
        )


# What a title names first: a mean shift or spread change this large (reference std, or
# log ratio of stds) is what the on-call reads; below it, the shape changed.
TITLE_FLOOR = 0.2


def _title(name: str, ks: float, shift: float, std_ratio: float) -> str:
    """The change in the words an on-call engineer reads first: mean, spread, else shape."""
    if abs(shift) >= TITLE_FLOOR:
        direction = "up" if shift > 0 else "down"
        return f"{name}: mean shifted {direction} by {abs(shift):.2f} std (KS {ks:.2f})"
    if abs(math.log(max(std_ratio, 1e-12))) >= TITLE_FLOOR:
        change = "widened" if std_ratio > 1 else "narrowed"
        return f"{name}: spread {change} (std x{std_ratio:.2f}, KS {ks:.2f})"
    return f"{name}: distribution shape changed (KS {ks:.2f})"


def _quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"p{round(q * 100):02d}": float(np.quantile(values, q)) for q in QUANTILES}


class ShapeDriftDetector(ReferenceDetector):
    """`feature_drift` (statistic `ks_distance`) on continuous numeric features."""

    name = "shape_drift"

    settings_type = ShapeDriftSettings
    settings: ShapeDriftSettings
    monitors: dict[str, ShapeMonitor]

    def build(self, reference: ModelBatch) -> None:
        s = self.settings
        samples = {n: c[~np.isnan(c)] for n, c in reference.numeric.items()}
        continuous = {
            n: v for n, v in samples.items() if len(v) >= MIN_REFERENCE_VALUES and is_continuous(v)
        }
        # Every window size spends the same part of the budget, split over the features.
        share = self.budget / len(s.windows)
        alphas = [window_alpha(share, w, len(continuous)) for w in s.windows]
        self.monitors = {
            name: ShapeMonitor(values, s.windows, alphas) for name, values in continuous.items()
        }

    def built_state(self) -> dict[str, Any]:
        return {"monitors": {name: m.state() for name, m in self.monitors.items()}}

    def load_built(self, state: dict[str, Any]) -> None:
        self.monitors = {n: ShapeMonitor.of_state(m) for n, m in state["monitors"].items()}

    def monitor(self, batch: ModelBatch) -> list[Finding]:
        findings: list[Finding] = []
        clients = ClientContext.of_ids(batch)
        for name, monitor in self.monitors.items():
            values, valid = present_numbers(batch, name)
            if len(valid) == 0:
                continue
            floors = KsFloors(
                self.settings.of(name, "min_ks"), self.settings.of(name, "critical_ks")
            )
            findings += watch(
                self.name,
                Kind.FEATURE_DRIFT,
                name,
                monitor,
                floors,
                batch,
                values,
                valid,
                clients.take(valid),
            )
        return findings
