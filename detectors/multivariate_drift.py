"""Multivariate drift: reconstruction error against the reference's principal components.

Per-feature tests cannot see a change in how features move together (a correlation that
flips, a cluster that moves within the same ranges). NannyML's data-reconstruction method
can: encode every event as one standardized vector, compress it onto the principal components
that explain `explained_variance` (65%) of the reference's variance, decompress it, and watch
the mean Euclidean distance between the event and its reconstruction. A structure the
components no longer describe reconstructs worse.

Here it runs online, over tumbling windows of `window` events in event order:
- encoding: each numeric feature through its reference normal scores (`NormalScores`: every
  shape becomes N(0, 1), and scores are bounded, so the mean error obeys the central limit
  theorem even for heavy-tailed features), missing values at the median (score 0); each
  categorical feature by frequency encoding (the reference share of its value, NannyML's
  choice; unseen values 0, missing a value of its own); then every column standardized;
- calibration without in-sample bias: the encoder and the components are fitted on one half
  of the reference (alternate events) and the errors measured on the other half, so those
  errors are distributed exactly as a stationary stream's are;
- the test: a window's mean error against the held-out half's, by a two-sample z statistic
  (window and held-out variances, so the reference's own sampling error is accounted for),
  two-sided; each side runs at alpha = share / (2 x 1e6 / window), a union bound over the
  windows of a million events; where events carry a `client`, the window's variance is
  scaled by its design effect (`detectors.stats.clustering`: a key's inputs sit in their own
  part of the space, so its errors are alike);
- the effect: the relative change of the mean error, with a floor (`min_relative_change`,
  5%) and a critical level (`critical_relative_change`, 25%).

A finding (kind `multivariate_drift`, subject `*`) names the features whose squared residuals
changed most: where the structure broke.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
from scipy.special import ndtri

from detectors.base import Finding, Kind, Severity, Verdict
from detectors.reference import ReferenceDetector, is_none, reference_type
from detectors.settings import MultivariateDriftSettings
from detectors.stats.calibration import window_alpha
from detectors.stats.clustering import BlockGroups, IntraclassCorrelation, loaded_ids, stored_ids
from detectors.stats.scores import NormalScores
from streams.batch import ModelBatch, knows_clients

MIN_REFERENCE_EVENTS = 400
MIN_FEATURE_VALUES = 50  # non-missing values a feature needs in the fitted half to take part
TOP_FEATURES = 5


@dataclass(frozen=True, slots=True)
class Columns:
    """A batch's features alone (what the encoder reads), possibly a subset of its events."""

    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]
    size: int

    @classmethod
    def of(cls, batch: ModelBatch) -> Columns:
        return cls(batch.numeric, batch.categorical, len(batch))

    def take(self, index: np.ndarray) -> Columns:
        return Columns(
            {n: c[index] for n, c in self.numeric.items()},
            {n: c[index] for n, c in self.categorical.items()},
            len(index),
        )

    def present(self, name: str, kind: str) -> int:
        """How many events have a value of the feature's type."""
        if kind == "numeric":
            column = self.numeric.get(name)
            return 0 if column is None else int(np.count_nonzero(~np.isnan(column)))
        return self.size - int(np.count_nonzero(is_none(self.categories(name))))

    def categories(self, name: str) -> np.ndarray:
        """A categorical feature's values, None where missing (a value of its own here)."""
        column = self.categorical.get(name)
        return np.full(self.size, None, dtype=object) if column is None else column


def fitted_half(reference: Columns) -> Columns:
    """The reference events the encoder and components are fitted on (the even ones)."""
    return reference.take(np.arange(0, reference.size, 2))


class Encoder:
    """Events as standardized vectors: numeric features by normal scores, categorical ones
    by the reference frequency of their value."""

    def __init__(
        self,
        numeric: dict[str, np.ndarray],
        categorical: dict[str, tuple[list[Any], np.ndarray]],
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> None:
        self.numeric = {name: np.sort(values) for name, values in numeric.items()}
        self.scores = {name: NormalScores(values) for name, values in self.numeric.items()}
        self.categorical = categorical  # name -> (values, reference shares)
        self.shares = {
            name: dict(zip(values, shares.tolist(), strict=True))
            for name, (values, shares) in categorical.items()
        }
        self.names = [*self.numeric, *self.categorical]
        self.mean = np.zeros(len(self.names)) if mean is None else mean
        self.std = np.ones(len(self.names)) if std is None else std

    @classmethod
    def fit(cls, reference: Columns, types: dict[str, str]) -> Encoder:
        numeric, categorical = {}, {}
        for name, kind in types.items():
            if kind == "numeric":
                column = reference.numeric[name]
                numeric[name] = column[~np.isnan(column)]
            else:
                counts = Counter(reference.categories(name).tolist())
                values = list(counts)
                shares = np.array([counts[v] for v in values], dtype=np.float64) / reference.size
                categorical[name] = (values, shares)
        encoder = cls(numeric, categorical)
        raw = encoder.raw(reference)
        encoder.mean = raw.mean(axis=0)
        encoder.std = np.where(raw.std(axis=0) > 0, raw.std(axis=0), 1.0)
        return encoder

    def raw(self, batch: Columns) -> np.ndarray:
        """The events encoded, before standardization (one row per event)."""
        columns = []
        for name, scores in self.scores.items():
            column = batch.numeric.get(name)
            if column is None:
                columns.append(np.zeros(batch.size))
                continue
            missing = np.isnan(column)
            columns.append(np.where(missing, 0.0, scores(np.where(missing, 0.0, column))))
        for name in self.categorical:
            shares = self.shares[name]
            values = batch.categories(name).tolist()
            columns.append(
                np.fromiter(map(shares.get, values, repeat(0.0)), np.float64, batch.size)
            )
        return np.column_stack(columns) if columns else np.empty((batch.size, 0))

    def __call__(self, batch: Columns) -> np.ndarray:
        return (self.raw(batch) - self.mean) / self.std

    def state(self) -> dict[str, Any]:
        return {
            "numeric": self.numeric,
            "categorical": {
                n: [values, shares] for n, (values, shares) in self.categorical.items()
            },
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> Encoder:
        categorical = {n: (list(v), np.asarray(s)) for n, (v, s) in state["categorical"].items()}
        return cls(state["numeric"], categorical, state["mean"], state["std"])


@dataclass(slots=True)
class MultivariateAlarm:
    index: int  # index, in the batch, of the window's last event
    z: float
    threshold: float
    mean_error: float
    count: int
    residuals: np.ndarray  # mean squared residual per feature over the window
    design_effect: float = 1.0  # of the window's clients: its variance was scaled by it
    intraclass_correlation: float = 0.0  # of the errors within clients


class ReconstructionMonitor:
    """The reference's components and calibration, and the open window's sums."""

    def __init__(
        self,
        encoder: Encoder,
        components: np.ndarray,
        explained: float,
        calibration: dict[str, Any],
        window: int,
        alpha: float,
    ) -> None:
        self.encoder = encoder
        self.components = components  # q x d, orthonormal rows
        self.explained = explained
        self.ref_mean = float(calibration["mean"])  # held-out errors: mean, std, count
        self.ref_std = float(calibration["std"])
        self.ref_count = int(calibration["count"])
        self.ref_residuals = np.asarray(calibration["residuals"])  # mean squared, per feature
        self.window = window
        self.alpha = alpha
        self.threshold = float(ndtri(1 - alpha))
        self.sums = np.zeros(2)  # of errors and squared errors in the open window
        self.residual_sums = np.zeros(len(encoder.names))
        self.count = 0
        self.seen = 0
        # The open window's errors and clients: its design effect (`_design_effect`).
        self.open_errors = np.zeros(0)
        self.open_ids = np.zeros(0, dtype=np.int64)
        self.icc = IntraclassCorrelation()  # of the errors within clients

    @classmethod
    def fit(
        cls,
        reference: Columns,
        types: dict[str, str],
        settings: MultivariateDriftSettings,
        alpha: float,
    ) -> ReconstructionMonitor:
        """Encoder and components from the reference's even events (`fitted_half`), calibration
        on its odd ones (held out, so the errors are those of new data)."""
        fit_part = fitted_half(reference)
        held_out = reference.take(np.arange(1, reference.size, 2))
        encoder = Encoder.fit(fit_part, types)
        x = encoder(fit_part)
        centred = x - x.mean(axis=0)
        # Principal axes from the d x d covariance (d is small): an SVD of the events
        # themselves gives the same axes at many times the cost.
        variance, axes = np.linalg.eigh(centred.T @ centred)
        order = np.argsort(variance)[::-1]
        variance, vt = np.clip(variance[order], 0.0, None), axes[:, order].T
        cumulative = np.cumsum(variance) / max(float(variance.sum()), 1e-12)
        kept = int(np.searchsorted(cumulative, settings.explained_variance)) + 1
        kept = max(1, min(kept, x.shape[1] - 1))  # at least one dimension left to reconstruct
        monitor = cls(
            encoder,
            vt[:kept],
            float(cumulative[kept - 1]),
            {"mean": 0.0, "std": 1.0, "count": 1, "residuals": np.zeros(x.shape[1])},
            settings.window,
            alpha,
        )
        residuals = monitor.residuals(encoder(held_out))
        errors = np.sqrt(np.einsum("ij,ij->i", residuals, residuals))
        monitor.ref_mean = float(errors.mean())
        monitor.ref_std = float(errors.std(ddof=1))
        monitor.ref_count = len(errors)
        monitor.ref_residuals = (residuals**2).mean(axis=0)
        return monitor

    def residuals(self, x: np.ndarray) -> np.ndarray:
        return x - (x @ self.components.T) @ self.components

    def feed(self, batch: ModelBatch) -> list[MultivariateAlarm]:
        """Adds a batch's events; returns the alarms of the windows they complete."""
        r = self.residuals(self.encoder(Columns.of(batch)))
        squared = r * r
        errors = np.sqrt(squared.sum(axis=1))
        ids = batch.client_ids()
        alarms = []
        start = 0
        while start < len(batch):
            stop = min(len(batch), start + self.window - self.count)
            part = errors[start:stop]
            self.sums += (part.sum(), np.dot(part, part))
            self.residual_sums += squared[start:stop].sum(axis=0)
            self.count += stop - start
            self.open_errors = np.concatenate([self.open_errors, part])
            self.open_ids = np.concatenate([self.open_ids, ids[start:stop]])
            if self.count == self.window:
                alarm = self._test(stop - 1)
                if alarm is not None:
                    alarms.append(alarm)
                self.sums[:] = 0.0
                self.residual_sums[:] = 0.0
                self.count = 0
                self.open_errors, self.open_ids = self.open_errors[:0], self.open_ids[:0]
            start = stop
        self.seen += len(batch)
        return alarms

    def z(self, design_effect: float = 1.0) -> float:
        """The open window's two-sample z statistic against the held-out reference errors,
        the window's variance scaled by its clients' `design_effect`."""
        m = self.count
        mean = self.sums[0] / m
        variance = max((self.sums[1] - m * mean * mean) / (m - 1), 0.0)
        se = math.sqrt(self.ref_std**2 / self.ref_count + design_effect * variance / m)
        return (mean - self.ref_mean) / se if se > 0 else 0.0

    def _design_effect(self) -> tuple[float, float]:
        """(deff, rho) of the open window: `1 + rho (sum_c M_c^2 / N - 1)`, rho the errors'
        intraclass correlation within clients, learned window by window
        (`detectors.stats.clustering`). A key's inputs sit in its own part of the space, so
        its errors are alike; a window of a few keys' sessions varies more than its size
        says. (1, 0) without clients, or for a window begun before a checkpoint that kept
        no errors."""
        ids, errors = self.open_ids, self.open_errors
        if len(ids) != self.count or not knows_clients(ids):
            return 1.0, 0.0
        std = float(errors.std(ddof=1))
        if std <= 0:
            return 1.0, 0.0
        groups = BlockGroups.of(ids[None, :])
        centred = ((errors - errors.mean()) / std)[None, :]
        rho = float(self.icc.through_each(groups, centred)[0])
        return 1.0 + rho * float(groups.excess[0]), rho

    def _test(self, index: int) -> MultivariateAlarm | None:
        deff, rho = self._design_effect()
        z = self.z(deff)
        if abs(z) <= self.threshold:
            return None
        return MultivariateAlarm(
            index,
            z,
            self.threshold,
            float(self.sums[0] / self.count),
            self.count,
            self.residual_sums / self.count,
            deff,
            rho,
        )

    def judge(self, alarm: MultivariateAlarm, floor: float, critical: float) -> Verdict | None:
        """The alarm as evidence, or None when the error changed by less than the floor."""
        change = alarm.mean_error / self.ref_mean - 1 if self.ref_mean > 0 else math.inf
        if abs(change) < floor:
            return None
        delta = alarm.residuals - self.ref_residuals
        order = np.argsort(-delta if change > 0 else delta)[:TOP_FEATURES]
        total = float(np.abs(delta).sum()) or 1.0
        contributors = [
            {
                "feature": self.encoder.names[i],
                "residual_change": round(float(delta[i]), 4),
                "share": round(float(abs(delta[i]) / total), 4),
            }
            for i in order
        ]
        named = ", ".join(c["feature"] for c in contributors[:3])
        direction = "up" if change > 0 else "down"
        return Verdict(
            statistic="reconstruction_error_z",
            value=round(alarm.z, 4),
            threshold=round(self.threshold, 4),
            effect_size=round(change, 4),
            severity=Severity.CRITICAL if abs(change) >= critical else Severity.WARNING,
            support=alarm.count,
            title=(
                f"features' joint distribution changed: reconstruction error {direction} "
                f"{abs(change):.0%} (most: {named})"
            ),
            details={
                "test": "pca_reconstruction_error_two_sample_z",
                "effect_measure": "relative change of the mean reconstruction error",
                "effect_floor": floor,
                "alpha": self.alpha,
                "window": self.window,
                "components": len(self.components),
                "dimensions": len(self.encoder.names),
                "explained_variance": round(self.explained, 4),
                "reference": {
                    "mean_error": round(self.ref_mean, 4),
                    "std_error": round(self.ref_std, 4),
                    "held_out_events": self.ref_count,
                },
                "current": {"mean_error": round(alarm.mean_error, 4), "events": alarm.count},
                # Clients' clusters: the window's variance was scaled by it (1: independent).
                "design_effect": round(alarm.design_effect, 4),
                "intraclass_correlation": round(alarm.intraclass_correlation, 4),
                "contributors": contributors,
                "events_seen": self.seen,
            },
        )

    def state(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.state(),
            "components": self.components,
            "explained": self.explained,
            "calibration": {
                "mean": self.ref_mean,
                "std": self.ref_std,
                "count": self.ref_count,
                "residuals": self.ref_residuals,
            },
            "window": self.window,
            "alpha": self.alpha,
            "sums": self.sums,
            "residual_sums": self.residual_sums,
            "count": self.count,
            "seen": self.seen,
            "open_errors": self.open_errors,
            "open_ids": stored_ids(self.open_ids),
            "icc": self.icc.state(),
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> ReconstructionMonitor:
        monitor = cls(
            Encoder.of_state(state["encoder"]),
            state["components"],
            state["explained"],
            state["calibration"],
            state["window"],
            state["alpha"],
        )
        monitor.sums = state["sums"]
        monitor.residual_sums = state["residual_sums"]
        monitor.count = state["count"]
        monitor.seen = state["seen"]
        # A checkpoint from before windows counted clients has none of these.
        monitor.open_errors = np.asarray(state.get("open_errors", []), dtype=np.float64)
        monitor.open_ids = loaded_ids(state.get("open_ids"), len(monitor.open_errors))
        monitor.icc = IntraclassCorrelation(*state.get("icc", (0.0, 0.0)))
        return monitor


class MultivariateDriftDetector(ReferenceDetector):
    """`multivariate_drift` (subject `*`) on all the model's features; see the module."""

    name = "multivariate_drift"

    settings_type = MultivariateDriftSettings
    settings: MultivariateDriftSettings
    reconstruction: ReconstructionMonitor | None

    def build(self, reference: ModelBatch) -> None:
        columns = Columns.of(reference)
        fitted = fitted_half(columns)
        # A feature almost never present in the fitted half has no distribution to learn.
        types = {
            name: kind
            for name in sorted(reference.feature_names())
            if (kind := reference_type(reference, name)) is not None
            and fitted.present(name, kind) >= MIN_FEATURE_VALUES
        }
        self.reconstruction = None
        if len(types) < 2 or len(reference) < MIN_REFERENCE_EVENTS:
            return  # no joint distribution to watch
        alpha = window_alpha(self.budget, self.settings.window, 2)  # two sides
        self.reconstruction = ReconstructionMonitor.fit(columns, types, self.settings, alpha)

    def monitor(self, batch: ModelBatch) -> list[Finding]:
        if self.reconstruction is None or len(batch) == 0:
            return []
        s = self.settings
        findings = []
        for alarm in self.reconstruction.feed(batch):
            verdict = self.reconstruction.judge(
                alarm, s.min_relative_change, s.critical_relative_change
            )
            if verdict is not None:
                findings.append(
                    verdict.finding(self.name, Kind.MULTIVARIATE_DRIFT, "*", batch, alarm.index)
                )
        return findings

    def built_state(self) -> dict[str, Any]:
        return {"reconstruction": self.reconstruction and self.reconstruction.state()}

    def load_built(self, state: dict[str, Any]) -> None:
        built = state["reconstruction"]
        self.reconstruction = None if built is None else ReconstructionMonitor.of_state(built)
