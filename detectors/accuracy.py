"""Accuracy shifts: delayed-label joins, windowed performance, budgeted sequential tests,
and label-free (CBPE-style) estimates.

Labels are joined to predictions by id (`detectors.label_join`). The first `reference_size`
labelled events fix the reference level. After that, every joined pair feeds a one-sided
CUSUM on blocks of `block_size` labelled events whose statistic is N(0,1) while nothing has
changed, so its threshold comes from the false-alarm budget (`detectors.stats.calibration`):

- classifiers: the block error rate, through Anscombe's arcsine transform
  (2*sqrt(B)*(asin(sqrt((c + 3/8)/(B + 3/4))) - asin(sqrt(p0))) is N(0,1) for binomial
  counts even when errors are rare, where a plain z-score has a heavy upper tail);
- regressors: block means of the reference-normal scores of |error| (MAE/RMSE up) and of
  the signed error (bias, both ways), as the numeric drift detector does for features.

The CUSUM's reference value k is the practical margin itself (it is designed for a drop of
twice the margin): drops smaller than the margin drift the statistic down, so neither they
nor the reference's own sampling error raise alarms, while larger drops are found fast. An
alarm becomes a finding only if the drop measured since the estimated change point clears
the margin; severity grows with that drop.

Where predictions carry class scores, each prediction's confidence is mapped to an expected
correctness through a calibration curve fitted on the reference (binned, as NannyML's CBPE
does), so accuracy is estimated for every prediction at once, before any label comes. A
second CUSUM on blocks of expected errors raises `accuracy_drop` on the subject
`estimated_accuracy`, with `"estimated": true`.

For regressors the same is done by direct loss estimation (`detectors.loss_estimate`, as
NannyML's DLE): a small model of |error| given the inputs and the prediction, fitted on the
reference pairs, estimates every prediction's error at once; CUSUMs on blocks of estimated
errors raise `estimated_mae` (up, warning) and `estimated_mae_improved` (down, info).

Per model version and event-time window (by prediction time) the detector keeps running
sums and hands the metric values to the pipeline through `metrics()`; late labels update
their window again.
"""

from __future__ import annotations

import math
import operator
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import compress, repeat
from typing import Any, Literal, TypeGuard, cast

import numpy as np

from detectors.base import Detector, Finding, Kind, MetricPoint, Severity
from detectors.baseline import Baseline
from detectors.label_join import Joined, LabelJoin
from detectors.loss_estimate import FeatureStore, LossModel, fit_loss_model
from detectors.settings import AccuracySettings
from detectors.stats.calibration import cusum_threshold_exact, steps_budget
from detectors.stats.cusum import Cusum
from detectors.stats.scores import NormalScores
from streams.batch import ModelBatch
from streams.events import Position

RECENT_BLOCKS = 64  # how far back the change point and the "after" value are estimated
Z95 = 1.959964
LOG_LOSS_EPS = 1e-15
CALIBRATION_PRIOR = 5.0  # pseudo-events pulling a sparse calibration bin to the overall rate
STORE_FACTOR = 10  # inputs of the first reference_size * 10 predictions kept for the reference
MIN_COVERAGE_FOR_ERROR = 0.5  # labelled share of a window before its estimate is graded


# --------------------------------------------------------------------------- the test


@dataclass(slots=True)
class _Alarm:
    index: int  # index, in the values fed, of the last value of the alarming block
    value: float  # the CUSUM statistic that crossed the threshold
    mean: float  # raw mean since the estimated change point
    mean_square: float
    count: int
    blocks: int


class _Cusum:
    """Blocks of values made N(0,1) in control (larger = worse), fed to a one-sided `Cusum`.

    `kind` says how a block becomes that statistic: "proportion" (0/1 losses, arcsine
    transform against the reference rate `p0`), "mean" (bounded values, z-score against the
    reference mean and std) or "scores" (any values, reference-normal scores times `sign`).
    """

    def __init__(
        self,
        kind: Literal["proportion", "mean", "scores"],
        block_size: int,
        k: float,
        h: float,
        *,
        p0: float = 0.0,
        mean: float = 0.0,
        std: float = 1.0,
        reference: np.ndarray | None = None,
        sign: float = 1.0,
        skew: float = 0.0,
    ) -> None:
        self.kind = kind
        self.skew = skew  # of the block mean ("mean"): its tail is made normal by `_unskew`
        self.block_size = block_size
        self.cusum = Cusum(k, h)
        self.g0 = math.asin(math.sqrt(min(max(p0, 0.0), 1.0)))
        self.mean, self.std = mean, std
        self.scores = NormalScores(reference) if reference is not None else None
        self.sign = sign
        self.pending = np.empty(0)
        self.recent: deque[tuple[float, float, float]] = deque(maxlen=RECENT_BLOCKS)
        self.seen = 0

    @property
    def k(self) -> float:
        return self.cusum.k

    @property
    def h(self) -> float:
        return self.cusum.h

    def state(self) -> dict[str, Any]:
        """Plain data: the test's constants, its sum, partial block and recent blocks (a
        "scores" test keeps its sorted reference; the normal scores are rebuilt from it)."""
        return {
            "kind": self.kind,
            "skew": self.skew,
            "block_size": self.block_size,
            "k": self.k,
            "h": self.h,
            "g0": self.g0,
            "mean": self.mean,
            "std": self.std,
            "reference": None if self.scores is None else self.scores.sorted,
            "sign": self.sign,
            "s": self.cusum.state()["up"],
            "pending": self.pending,
            "recent": np.array(list(self.recent), dtype=np.float64).reshape(-1, 3),
            "seen": self.seen,
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> _Cusum:
        test = cls(
            state["kind"],
            state["block_size"],
            state["k"],
            state["h"],
            mean=state["mean"],
            std=state["std"],
            reference=state["reference"],
            sign=state["sign"],
            skew=state["skew"],
        )
        test.g0, test.pending, test.seen = state["g0"], state["pending"], state["seen"]
        test.cusum.load_state({"up": state["s"]})
        test.recent.extend(tuple(r) for r in state["recent"].tolist())
        return test

    def _z(self, blocks: np.ndarray) -> np.ndarray:
        b = self.block_size
        if self.kind == "proportion":
            g = np.arcsin(np.sqrt((blocks.sum(axis=1) + 0.375) / (b + 0.75)))
            return 2 * math.sqrt(b) * (g - self.g0)
        if self.kind == "mean":
            return _unskew((blocks.mean(axis=1) - self.mean) * math.sqrt(b) / self.std, self.skew)
        assert self.scores is not None
        normal = self.scores(blocks.ravel()).reshape(blocks.shape)
        return self.sign * normal.mean(axis=1) * math.sqrt(b)

    def feed(self, values: np.ndarray) -> list[_Alarm]:
        """Adds values in arrival order; returns the alarms of the blocks they complete."""
        b = self.block_size
        data = np.concatenate([self.pending, values])
        carried = len(self.pending)
        full = len(data) // b
        self.pending = data[full * b :]
        if full == 0:
            return []
        blocks = data[: full * b].reshape(full, b)
        z = self._z(blocks)
        sums = blocks.sum(axis=1)
        squares = np.einsum("ij,ij->i", blocks, blocks)
        alarms = []
        for i in range(full):
            self.recent.append((float(z[i]), float(sums[i]), float(squares[i])))
            self.seen += b
            if self.cusum.update(float(z[i])).drift_detected:
                alarms.append(self._alarm((i + 1) * b - 1 - carried))
                self.recent.clear()  # later evidence stands on blocks after this alarm
        return alarms

    def _alarm(self, index: int) -> _Alarm:
        """The blocks since the most likely change point (the CUSUM's argmax)."""
        recent = list(self.recent)
        tail = np.cumsum((np.array([r[0] for r in recent]) - self.k)[::-1])
        m = int(np.argmax(tail)) + 1
        window = recent[-m:]
        count = m * self.block_size
        return _Alarm(
            index=index,
            value=self.cusum.statistic,
            mean=sum(r[1] for r in window) / count,
            mean_square=sum(r[2] for r in window) / count,
            count=count,
            blocks=m,
        )


def _unskew(z: np.ndarray, skew: float) -> np.ndarray:
    """Standardized block means with skewness `skew` -> N(0,1), via Wilson-Hilferty.

    A mean of skewed values (expected errors are mostly near 0, sometimes large) has a heavier
    upper tail than the normal, and a CUSUM's false alarms live in that tail. Matching a gamma
    of the same skewness (shape 4/skew^2) and taking its cube root makes it normal again.
    """
    if abs(skew) < 1e-3:
        return z
    shape = 4 / (skew * skew)
    sign = 1.0 if skew > 0 else -1.0
    x = np.maximum(shape + math.sqrt(shape) * sign * z, 0.0) / shape
    return sign * (np.cbrt(x) - (1 - 1 / (9 * shape))) / math.sqrt(1 / (9 * shape))


def _threshold(
    k: float, block_size: int, reference_size: int, tests: int, per_million: float
) -> float:
    """The budget's threshold, for a reference level that is one standard error off.

    The reference level is estimated, and an error of e in it shifts every block statistic
    by e*sqrt(B)/sigma, which acts on the CUSUM like a smaller k. With B/N = block/reference
    size, one reference standard error is sqrt(B/N) in block units: the threshold is the one
    the budget asks for at k - sqrt(B/N), so it holds unless the reference is unusually off.
    """
    allowance = math.sqrt(block_size / reference_size)
    budget = steps_budget(block_size, tests, per_million)
    return cusum_threshold_exact(max(k - allowance, 0.0), budget)


# --------------------------------------------------------------------------- windows


@dataclass(slots=True)
class _Window:
    """Running sums of one model version over one event-time window (prediction time)."""

    predictions: int = 0
    labelled: int = 0
    delay: float = 0.0
    correct: int = 0
    scored: int = 0
    log_loss: float = 0.0
    brier: float = 0.0
    err: float = 0.0
    err_sq: float = 0.0
    abs_err: float = 0.0
    abs_err_sq: float = 0.0
    est_n: int = 0
    est: float = 0.0
    est_var: float = 0.0  # variance of the estimated sum: e(1-e) each, or c * est^2 (DLE)
    est_sq: float = 0.0  # regression: sum of the estimated squared errors
    tp: dict[str | None, int] = field(default_factory=dict)
    fp: dict[str | None, int] = field(default_factory=dict)
    fn: dict[str | None, int] = field(default_factory=dict)


def _window_state(w: _Window) -> dict[str, Any]:
    """A window's sums as plain data; its per-class counts as pairs (a class may be None)."""
    out: dict[str, Any] = {}
    for f in fields(w):
        value = getattr(w, f.name)
        out[f.name] = list(value.items()) if isinstance(value, dict) else value
    return out


def _window_of_state(state: dict[str, Any]) -> _Window:
    values: dict[str, Any] = {
        name: dict(map(tuple, value)) if isinstance(value, list) else value
        for name, value in state.items()
    }
    return _Window(**values)


def _groups(
    versions: list[str | None], ts: np.ndarray, width: float
) -> list[tuple[str, float, np.ndarray]]:
    """(model_version, window_start, indices) for each group present in the events."""
    starts = np.floor(ts / width) * width
    distinct_versions = set(versions)
    if len(distinct_versions) == 1 and len(starts) and starts.min() == starts.max():
        # The usual batch: one version, one window. No sorting, no masks.
        version = distinct_versions.pop()
        return [("" if version is None else version, float(starts[0]), np.arange(len(starts)))]
    names = ["" if v is None else v for v in versions]
    distinct = set(names)
    if len(distinct) == 1:
        codes = np.zeros(len(names), np.int64)
        labels = [next(iter(distinct))]
    else:
        labels = sorted(distinct)
        lookup = {v: i for i, v in enumerate(labels)}
        codes = np.fromiter((lookup[v] for v in names), np.int64, len(names))
    unique_starts, start_codes = np.unique(starts, return_inverse=True)
    keys = codes * len(unique_starts) + start_codes
    out = []
    for key in np.unique(keys):
        label, start = divmod(int(key), len(unique_starts))
        out.append((labels[label], float(unique_starts[start]), np.flatnonzero(keys == key)))
    return out


# --------------------------------------------------------------------------- classes


def _class_keys(values: Sequence[object]) -> list[str | None]:
    """`_class_key` of each value, worked out once per distinct value (classes are few)."""
    keys = {v: _class_key(v) for v in set(values)}
    return list(map(keys.__getitem__, values))


def _class_key(value: object) -> str | None:
    """Labels, predictions and score keys compared as strings: 1, 1.0, True and "1" agree."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(slots=True)
class _Scored:
    """Per-pair classification values of a joined batch."""

    correct: np.ndarray  # bool
    p_true: np.ndarray  # probability given to the true class; NaN without scores
    brier: np.ndarray  # NaN without scores
    confidence: np.ndarray  # probability of the predicted class; NaN without scores
    predicted: list[str | None]
    actual: list[str | None]


@dataclass(slots=True)
class _Reference:
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


class AccuracyDetector(Detector):
    """`accuracy_drop` from joined labels (measured) and from class scores (estimated)."""

    name = "accuracy"
    baseline = Baseline.OWN  # the first labelled events: a reference has no labels
    state_version = 2  # 2: the regression loss model is boosted trees (detectors.loss_estimate)

    def __init__(self, model: str, settings: AccuracySettings | None = None) -> None:
        self.model = model
        self.settings = s = settings or AccuracySettings()
        self.join = LabelJoin(s.label_ttl_seconds, s.max_pending, s.max_early_labels)
        self.task: str | None = None if s.task == "auto" else s.task
        self.source, self.partition = "", 0
        self.labelled = 0  # joined pairs seen
        self.ref_parts: list[dict[str, np.ndarray]] = []
        self.ref_count = 0
        self.reference: _Reference | None = None
        self.tests: dict[str, _Cusum] = {}
        self.estimate_test: _Cusum | None = None
        # Regression, label-free: the reference's inputs until it is fitted, then the model.
        self.store: FeatureStore | None = None
        self.loss_model: LossModel | None = None
        self.loss_tests: dict[str, _Cusum] = {}
        self.windows: dict[tuple[str, float], _Window] = {}
        self.dirty: set[tuple[str, float]] = set()

    def state(self) -> dict[str, Any]:
        return {
            "join": self.join.state(),
            "task": self.task,
            "source": self.source,
            "partition": self.partition,
            "labelled": self.labelled,
            "ref_parts": self.ref_parts,
            "ref_count": self.ref_count,
            "reference": None if self.reference is None else asdict(self.reference),
            "tests": {subject: test.state() for subject, test in self.tests.items()},
            "estimate_test": None if self.estimate_test is None else self.estimate_test.state(),
            "store": None if self.store is None else self.store.state(),
            "loss_model": None if self.loss_model is None else self.loss_model.state(),
            "loss_tests": {subject: test.state() for subject, test in self.loss_tests.items()},
            "windows": [
                [version, start, _window_state(w)] for (version, start), w in self.windows.items()
            ],
            "dirty": sorted(self.dirty),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self._load_join(state)
        self.task = state["task"]
        self.source, self.partition = state["source"], state["partition"]
        self.labelled = state["labelled"]
        self.ref_parts, self.ref_count = state["ref_parts"], state["ref_count"]
        ref = state["reference"]
        if ref is not None:
            for name in ("ci", "bias_ci", "estimated_ci"):
                ref[name] = tuple(ref[name])
            self.reference = _Reference(**ref)
        self.tests = {subject: _Cusum.of_state(t) for subject, t in state["tests"].items()}
        estimate = state["estimate_test"]
        self.estimate_test = None if estimate is None else _Cusum.of_state(estimate)
        store, model = state["store"], state["loss_model"]
        self.store = None if store is None else FeatureStore.of_state(store)
        self.loss_model = None if model is None else LossModel.of_state(model)
        self.loss_tests = {s: _Cusum.of_state(t) for s, t in state["loss_tests"].items()}
        self.windows = {
            (version, start): _window_of_state(w) for version, start, w in state["windows"]
        }
        self.dirty = {(version, start) for version, start in state["dirty"]}

    def keep_on_reconfigure(self, state: dict[str, Any]) -> None:
        """Settings changed: the baseline and tests are learned again, but the predictions
        still waiting for their labels are kept (under the new caps), or those labels would
        be lost."""
        self._load_join(state)

    def _load_join(self, state: dict[str, Any]) -> None:
        s = self.settings
        self.join = LabelJoin.of_state(
            state["join"], s.label_ttl_seconds, s.max_pending, s.max_early_labels
        )

    # ----------------------------------------------------------------- update

    def update(self, batch: ModelBatch) -> list[Finding]:
        self.source, self.partition = batch.source, batch.partition
        if self.task is None and len(batch):
            self.task = _guess_task(batch)
        findings: list[Finding] = []
        if len(batch):
            findings.extend(self._predictions(batch))
        joined = self.join.add(batch)
        if len(joined) and self.task is not None:
            findings.extend(self._joined(batch, joined))
        self._forget_old_windows()
        return findings

    def _predictions(self, batch: ModelBatch) -> list[Finding]:
        """Counts predictions per window and, once calibrated, estimates their accuracy."""
        s = self.settings
        if self.task == "regression":
            return self._regression_predictions(batch)
        expected = None
        ref = self.reference
        if (
            s.estimate
            and ref is not None
            and ref.rates is not None
            and self.task == "classification"
        ):
            confidence = _confidence(
                _class_keys(batch.predictions),
                batch.scores,
                batch.score,
                s.positive_class,
            )
            expected = _calibrated(ref, confidence)
        for version, start, idx in _groups(batch.model_versions, batch.ts, s.window_seconds):
            w = self._window(version, start)
            w.predictions += len(idx)
            if expected is not None:
                e = expected[idx]
                e = e[~np.isnan(e)]
                w.est_n += len(e)
                w.est += float(e.sum())
                w.est_var += float((e * (1 - e)).sum())
        if expected is None or self.estimate_test is None:
            return []
        valid = np.flatnonzero(~np.isnan(expected))
        findings = []
        for alarm in self.estimate_test.feed(1.0 - expected[valid]):
            i = int(valid[alarm.index])
            position = batch.position(i)
            finding = self._classification_finding(
                alarm, float(batch.ts[i]), position, estimated=True
            )
            if finding is not None:
                findings.append(finding)
        return findings

    def _regression_predictions(self, batch: ModelBatch) -> list[Finding]:
        """Counts predictions per window; keeps the inputs of the first ones (the reference's)
        and, once the loss model is fitted, estimates every prediction's error."""
        s = self.settings
        if self.reference is None and s.estimate:
            if self.store is None:
                self.store = FeatureStore(STORE_FACTOR * s.reference_size)
            self.store.add(batch)
        model = self.loss_model
        estimated = None
        if model is not None:
            predicted = _numbers(batch.predictions)
            valid = np.flatnonzero(~np.isnan(predicted))
            numeric, categorical = batch.numeric, batch.categorical
            if len(valid) < len(batch):
                numeric = {k: v[valid] for k, v in numeric.items()}
                categorical = {k: v[valid] for k, v in categorical.items()}
            absolute, square = model.estimate(numeric, categorical, predicted[valid])
            estimated = np.full((3, len(batch)), np.nan)
            estimated[:, valid] = absolute, square, model.spread * absolute * absolute
        for version, start, idx in _groups(batch.model_versions, batch.ts, s.window_seconds):
            w = self._window(version, start)
            w.predictions += len(idx)
            if estimated is not None:
                a, sq, var = estimated[:, idx]
                has = ~np.isnan(a)
                w.est_n += int(has.sum())
                w.est += float(a[has].sum())
                w.est_sq += float(sq[has].sum())
                w.est_var += float(var[has].sum())
        if estimated is None:
            return []
        findings = []
        for subject, test in self.loss_tests.items():
            sign = -1.0 if subject == "estimated_mae_improved" else 1.0
            for alarm in test.feed(sign * estimated[0, valid]):
                i = int(valid[alarm.index])
                finding = self._estimated_regression_finding(
                    subject, test, alarm, float(batch.ts[i]), batch.position(i)
                )
                if finding is not None:
                    findings.append(finding)
        return findings

    def _joined(self, batch: ModelBatch, joined: Joined) -> list[Finding]:
        s = self.settings
        n = len(joined)
        self.labelled += n
        delay = joined.label_ts - joined.pred_ts
        if self.task == "classification":
            scored = _score_pairs(joined, s.positive_class, s.negative_class)
            per_event = {
                "loss": (~scored.correct).astype(np.float64),
                "confidence": scored.confidence,
            }
        else:
            predicted = np.array(
                [np.nan if not _is_number(p) else float(p) for p in joined.predictions]
            )
            actual = np.array([np.nan if not _is_number(v) else float(v) for v in joined.labels])
            err = predicted - actual
            usable = ~np.isnan(err)
            per_event = {"err": err[usable]}
            if self.reference is None and self.store is not None:
                # The reference pairs' inputs, by id, for the loss model (-1: not kept).
                ids = [joined.ids[i] for i in np.flatnonzero(usable).tolist()]
                per_event["row"] = self.store.take(ids).astype(np.float64)
                per_event["pred"] = predicted[usable]
        for version, start, idx in _groups(joined.versions, joined.pred_ts, s.window_seconds):
            w = self._window(version, start)
            w.labelled += len(idx)
            w.delay += float(delay[idx].sum())
            if self.task == "classification":
                _add_classification(w, scored, idx)
            else:
                e = err[idx]
                e = e[~np.isnan(e)]
                w.err += float(e.sum())
                w.err_sq += float(np.dot(e, e))
                a = np.abs(e)
                w.abs_err += float(a.sum())
                w.abs_err_sq += float(np.dot(a, a))
        # Which joined pair each per-event value belongs to (regression drops unusable pairs).
        where = np.arange(n) if self.task == "classification" else np.flatnonzero(usable)
        if self.reference is None:
            take = min(len(where), self.settings.reference_size - self.ref_count)
            self.ref_parts.append({k: v[:take] for k, v in per_event.items()})
            self.ref_count += take
            if self.ref_count < self.settings.reference_size:
                return []
            self._freeze()
            per_event = {k: v[take:] for k, v in per_event.items()}
            where = where[take:]
        return self._test(joined, per_event, where)

    def _test(
        self, joined: Joined, per_event: dict[str, np.ndarray], where: np.ndarray
    ) -> list[Finding]:
        findings: list[Finding] = []
        for subject, test in self.tests.items():
            values = per_event["loss"] if self.task == "classification" else per_event["err"]
            if subject in ("mae", "mae_improved"):
                values = np.abs(values)
            for alarm in test.feed(values):
                i = int(where[alarm.index])
                ts = float(joined.at_ts[i])
                position = joined.at_position[i]
                if self.task == "classification":
                    finding = self._classification_finding(alarm, ts, position, estimated=False)
                else:
                    finding = self._regression_finding(subject, test, alarm, ts, position)
                if finding is not None:
                    findings.append(finding)
        return findings

    # ----------------------------------------------------------------- reference

    def _freeze(self) -> None:
        s = self.settings
        parts = {k: np.concatenate([p[k] for p in self.ref_parts]) for k in self.ref_parts[0]}
        self.ref_parts = []
        b = s.block_size
        if self.task == "classification":
            loss = parts["loss"]
            p0 = float(loss.mean())
            accuracy = 1 - p0
            ref = _Reference(n=len(loss), level=accuracy, ci=_wilson(accuracy, len(loss)))
            edges, rates = _fit_calibration(parts["confidence"], 1 - loss, s.calibration_bins)
            estimate = s.estimate and rates is not None
            tests = 2 if estimate else 1
            k = (
                2
                * math.sqrt(b)
                * (math.asin(math.sqrt(min(p0 + s.margin, 1.0))) - math.asin(math.sqrt(p0)))
            )
            k = max(k, 0.05)
            self.tests["accuracy"] = _Cusum(
                "proportion",
                b,
                k,
                _threshold(k, b, len(loss), tests, s.false_alarms_per_million),
                p0=p0,
            )
            if estimate:
                ref.edges, ref.rates = edges, rates
                expected = _calibrated(ref, parts["confidence"])
                expected = expected[~np.isnan(expected)]
                ref.estimated = float(expected.mean())
                ref.estimated_ci = _expected_ci(expected)
                std = max(float(expected.std()), 1e-3)
                skew = float(np.mean((expected - expected.mean()) ** 3)) / std**3
                k_est = s.margin * math.sqrt(b) / std
                self.estimate_test = _Cusum(
                    "mean",
                    b,
                    k_est,
                    _threshold(k_est, b, len(expected), tests, s.false_alarms_per_million),
                    mean=1 - ref.estimated,
                    std=std,
                    skew=-skew / math.sqrt(b),  # of the expected errors 1 - e, per block
                )
        else:
            err = parts["err"]
            abs_err = np.abs(err)
            mae = float(abs_err.mean())
            ref = _Reference(
                n=len(err),
                level=mae,
                ci=_mean_ci(abs_err),
                rmse=float(np.sqrt(np.mean(err * err))),
                bias=float(err.mean()),
                bias_ci=_mean_ci(err),
            )
            model = self._fit_loss_model(parts)
            tests = 6 if model is not None else 4
            k = math.sqrt(b) * s.min_detectable_shift / 2
            # Four one-sided tests: MAE up, MAE down (an improvement: reported as info, since
            # it often means the inputs changed), bias up, bias down; and with a loss model,
            # the estimated MAE up and down.
            h = _threshold(k, b, len(err), tests, s.false_alarms_per_million)
            self.tests["mae"] = _Cusum("scores", b, k, h, reference=abs_err)
            self.tests["mae_improved"] = _Cusum("scores", b, k, h, reference=abs_err, sign=-1.0)
            self.tests["bias"] = _Cusum("scores", b, k, h, reference=err)
            self.tests["bias_down"] = _Cusum("scores", b, k, h, reference=err, sign=-1.0)
            if model is not None:
                self._estimate_tests(ref, model, parts, tests)
        self.reference = ref

    def _fit_loss_model(self, parts: dict[str, np.ndarray]) -> LossModel | None:
        """The loss model on the reference pairs whose inputs were kept (None without them,
        or when the inputs do not tell where the model errs). The inputs are dropped."""
        store, self.store = self.store, None
        if store is None or "row" not in parts:
            return None
        have = parts["row"] >= 0
        rows = parts["row"][have].astype(np.int64)
        numeric, categorical = store.columns(rows)
        self.loss_model = fit_loss_model(
            numeric, categorical, parts["pred"][have], parts["err"][have]
        )
        if self.loss_model is not None:
            parts["estimated"] = self.loss_model.estimate(
                numeric, categorical, parts["pred"][have]
            )[0]
        return self.loss_model

    def _estimate_tests(
        self, ref: _Reference, model: LossModel, parts: dict[str, np.ndarray], tests: int
    ) -> None:
        """The CUSUMs on block means of estimated |error|, up and down, against their level on
        the reference; built as the estimated-accuracy test is (`mean` kind, k from the
        margin, skew made normal)."""
        s = self.settings
        b = s.block_size
        estimated = parts["estimated"]
        level = float(estimated.mean())
        ref.estimated = level
        half = Z95 * math.sqrt(model.spread * float(np.dot(estimated, estimated))) / len(estimated)
        ref.estimated_ci = (max(level - half, 0.0), level + half)
        std = max(float(estimated.std()), 1e-9 * max(level, 1e-300))
        skew = float(np.mean((estimated - level) ** 3)) / std**3
        # The test is tuned to a change of twice the margin; changes under it stay quiet.
        k = max(s.regression_margin * level * math.sqrt(b) / std, 0.05)
        h = _threshold(k, b, len(estimated), tests, s.false_alarms_per_million)
        unskew = skew / math.sqrt(b)  # skewness of a block mean
        self.loss_tests = {
            "estimated_mae": _Cusum("mean", b, k, h, mean=level, std=std, skew=unskew),
            "estimated_mae_improved": _Cusum("mean", b, k, h, mean=-level, std=std, skew=-unskew),
        }

    # ----------------------------------------------------------------- findings

    def _classification_finding(
        self, alarm: _Alarm, ts: float, position: Position, estimated: bool
    ) -> Finding | None:
        s, ref = self.settings, self.reference
        assert ref is not None
        after = 1 - alarm.mean
        before = ref.estimated if estimated else ref.level
        assert before is not None
        drop = before - after
        if drop < s.margin:
            return None
        if estimated:
            # Sum of e(1-e) over the window from the sums of the expected errors l = 1 - e.
            variance = max(alarm.mean - alarm.mean_square, 0.0) * alarm.count
            after_ci = _bounded_ci(after, variance, alarm.count)
            before_ci = ref.estimated_ci
            subject, statistic = "estimated_accuracy", "cusum_estimated_error_rate"
            test = self.estimate_test
        else:
            after_ci = _wilson(after, alarm.count)
            before_ci = ref.ci
            subject, statistic = "accuracy", "cusum_error_rate"
            test = self.tests["accuracy"]
        assert test is not None
        what = "estimated accuracy" if estimated else "accuracy"
        return self._finding(
            subject,
            statistic,
            self._severity(drop),
            test,
            alarm,
            ts,
            position,
            effect=drop,
            title=f"{what} fell from {before:.3f} to {after:.3f} ({100 * drop:.1f} points)",
            details={
                "metric": "accuracy",
                "estimated": estimated,
                "before": _value(before, before_ci, ref.n),
                "after": _value(after, after_ci, alarm.count),
                "drop": round(drop, 4),
                "margin": s.margin,
                "labelled_events": alarm.count if not estimated else 0,
                "predictions": alarm.count if estimated else 0,
                "test": "cusum_on_block_error_rate",
            },
        )

    def _regression_finding(
        self, subject: str, test: _Cusum, alarm: _Alarm, ts: float, position: Position
    ) -> Finding | None:
        s, ref = self.settings, self.reference
        assert ref is not None
        std = math.sqrt(max(alarm.mean_square - alarm.mean**2, 0.0))
        after_ci = (
            alarm.mean - Z95 * std / math.sqrt(alarm.count),
            alarm.mean + Z95 * std / math.sqrt(alarm.count),
        )
        if subject in ("mae", "mae_improved"):
            before, before_ci, after = ref.level, ref.ci, alarm.mean
            change = (after - before) / before if before > 0 else math.inf
            verb = "rose" if subject == "mae" else "fell"
            title = f"MAE {verb} from {before:.4g} to {after:.4g} ({100 * change:+.0f}%)"
            metric, statistic = "mae", "cusum_abs_error"
            extra: dict[str, Any] = {
                "rmse_after": round(math.sqrt(alarm.mean_square), 6),
                "rmse_before": round(ref.rmse, 6),
            }
            if subject == "mae_improved":
                # An improvement: worth knowing (the inputs often changed), not an alarm.
                metric, statistic = "mae_improved", "cusum_abs_error_down"
                extra["direction"] = "improved"
                change = -change
        else:
            before, before_ci, after = ref.bias, ref.bias_ci, alarm.mean
            change = abs(after - before) / ref.rmse if ref.rmse > 0 else math.inf
            title = f"bias moved from {before:.4g} to {after:.4g} ({change:.2f} reference RMSE)"
            metric, statistic = "bias", "cusum_signed_error"
            extra = {
                "direction": "up" if after > before else "down",
                "rmse_before": round(ref.rmse, 6),
            }
        if change < s.regression_margin:
            return None
        severity = Severity.CRITICAL if change >= s.regression_critical else Severity.WARNING
        if subject == "mae_improved":
            severity = Severity.INFO
        return self._finding(
            metric,
            statistic,
            severity,
            test,
            alarm,
            ts,
            position,
            effect=change,
            title=title,
            details={
                "metric": metric,
                "estimated": False,
                "before": _value(before, before_ci, ref.n),
                "after": _value(after, after_ci, alarm.count),
                "relative_change" if metric.startswith("mae") else "shift_in_rmse": round(
                    -change if subject == "mae_improved" else change, 4
                ),
                "margin": s.regression_margin,
                "labelled_events": alarm.count,
                "test": "cusum_on_block_normal_scores",
                **extra,
            },
        )

    def _estimated_regression_finding(
        self, subject: str, test: _Cusum, alarm: _Alarm, ts: float, position: Position
    ) -> Finding | None:
        """An estimated MAE that moved by `regression_margin` or more since the change point:
        up is a warning (the estimate cannot confirm it: the labels will, on `mae`), down is
        info (an improvement usually means the inputs changed)."""
        s, ref, model = self.settings, self.reference, self.loss_model
        assert ref is not None and ref.estimated is not None and model is not None
        improved = subject == "estimated_mae_improved"
        before = ref.estimated
        after = -alarm.mean if improved else alarm.mean
        change = (after - before) / before if before > 0 else math.inf
        if abs(change) < s.regression_margin:
            return None
        # Var(|e| given x) = c * est^2, summed over the predictions since the change.
        half = Z95 * math.sqrt(model.spread * alarm.mean_square / alarm.count)
        verb = "fell" if improved else "rose"
        return self._finding(
            subject,
            "cusum_estimated_abs_error_down" if improved else "cusum_estimated_abs_error",
            Severity.INFO if improved else Severity.WARNING,
            test,
            alarm,
            ts,
            position,
            effect=abs(change),
            title=(
                f"estimated MAE {verb} from {before:.4g} to {after:.4g} ({100 * change:+.0f}%),"
                " before labels"
            ),
            details={
                "metric": "mae",
                "estimated": True,
                "before": _value(before, ref.estimated_ci, model.rows),
                "after": _value(after, (max(after - half, 0.0), after + half), alarm.count),
                "relative_change": round(change, 4),
                "margin": s.regression_margin,
                "measured_before": _value(ref.level, ref.ci, ref.n),
                "labelled_events": 0,
                "predictions": alarm.count,
                "explained": round(model.explained, 4),
                "test": "cusum_on_block_estimated_abs_error",
                **({"direction": "improved"} if improved else {}),
            },
        )

    def _finding(
        self,
        subject: str,
        statistic: str,
        severity: Severity,
        test: _Cusum,
        alarm: _Alarm,
        ts: float,
        position: Position,
        effect: float,
        title: str,
        details: dict[str, Any],
    ) -> Finding:
        """The fields every accuracy finding shares around its own details."""
        return Finding(
            model=self.model,
            kind=Kind.ACCURACY_DROP,
            subject=subject,
            severity=severity,
            ts=ts,
            position=position,
            detector=self.name,
            statistic=statistic,
            value=round(alarm.value, 4),
            threshold=round(test.h, 4),
            effect_size=round(effect, 4),
            support=alarm.count,
            title=title,
            details={
                **details,
                "labelled_events_total": self.labelled,
                "k": round(test.k, 4),
                "block_size": test.block_size,
                "blocks_since_change": alarm.blocks,
                "join": self.join.counters.as_dict(),
            },
        )

    def _severity(self, drop: float) -> Severity:
        s = self.settings
        if drop >= s.critical_drop:
            return Severity.CRITICAL
        return Severity.WARNING if drop >= s.warning_drop else Severity.INFO

    # ----------------------------------------------------------------- history

    def _window(self, version: str, start: float) -> _Window:
        key = (version, start)
        self.dirty.add(key)
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = _Window()
        return w

    def _forget_old_windows(self) -> None:
        """A window no label can reach any more (older than the TTL) is final: drop it."""
        s = self.settings
        cutoff = self.join.watermark - s.label_ttl_seconds - s.window_seconds
        for key in [k for k in self.windows if k[1] < cutoff]:
            del self.windows[key]
            self.dirty.discard(key)

    def metrics(self) -> list[MetricPoint]:
        points: list[MetricPoint] = []
        for key in sorted(self.dirty):
            w = self.windows.get(key)
            if w is not None:
                points.extend(self._points(key[0], key[1], w))
        self.dirty.clear()
        return points

    def _points(self, version: str, start: float, w: _Window) -> list[MetricPoint]:
        end = start + self.settings.window_seconds

        def point(
            metric: str, value: float, ci: tuple[float, float] | None, n: int, est: bool = False
        ) -> MetricPoint:
            return MetricPoint(
                model=self.model,
                model_version=version,
                source=self.source,
                partition=self.partition,
                window_start=start,
                window_end=end,
                metric=metric,
                value=float(value),
                ci_low=None if ci is None else float(ci[0]),
                ci_high=None if ci is None else float(ci[1]),
                n=n,
                estimated=est,
            )

        out: list[MetricPoint] = []
        if not (w.labelled or w.est_n):
            return out  # no labels, no estimate: nothing to say about performance yet
        if w.predictions:
            out.append(point("coverage", w.labelled / w.predictions, None, w.predictions))
        n = w.labelled
        if n:
            out.append(point("label_delay", w.delay / n, None, n))
            if self.task == "classification":
                accuracy = w.correct / n
                out.append(point("accuracy", accuracy, _wilson(accuracy, n), n))
                precision, recall, f1 = _precision_recall_f1(w, self.settings)
                out.append(point("precision", precision, None, n))
                out.append(point("recall", recall, None, n))
                out.append(point("f1", f1, None, n))
                if w.scored:
                    out.append(point("log_loss", w.log_loss / w.scored, None, w.scored))
                    out.append(point("brier", w.brier / w.scored, None, w.scored))
            else:
                out.append(point("mae", w.abs_err / n, _sums_ci(w.abs_err, w.abs_err_sq, n), n))
                out.append(point("rmse", math.sqrt(w.err_sq / n), None, n))
                out.append(point("bias", w.err / n, _sums_ci(w.err, w.err_sq, n), n))
        if w.est_n and self.task == "regression":
            value = w.est / w.est_n
            half = Z95 * math.sqrt(w.est_var) / w.est_n
            out.append(point("mae", value, (max(value - half, 0.0), value + half), w.est_n, True))
            out.append(point("rmse", math.sqrt(w.est_sq / w.est_n), None, w.est_n, est=True))
            if w.est_n == w.predictions and n >= MIN_COVERAGE_FOR_ERROR * w.predictions:
                # Graded against the labels (the measured MAE is what counts), only where the
                # estimate covers the whole window, so both speak of the same predictions.
                error = value - w.abs_err / n
                lo, hi = _sums_ci(w.abs_err, w.abs_err_sq, n)
                spread = (hi - lo) / 2
                out.append(point("mae_estimate_error", error, (error - spread, error + spread), n))
        elif w.est_n:
            value = w.est / w.est_n
            ci = _bounded_ci(value, w.est_var, w.est_n)
            out.append(point("accuracy", value, ci, w.est_n, est=True))
        return out


# --------------------------------------------------------------------------- helpers


def _guess_task(batch: ModelBatch) -> str | None:
    """Classification unless predictions are numbers that look continuous."""
    values = [p for p in batch.predictions if p is not None]
    if any(s is not None for s in batch.scores) or batch.score is not None:
        return "classification"
    if not values:
        return None
    if all(_is_number(v) for v in values) and (
        any(isinstance(v, float) and not v.is_integer() for v in values) or len(set(values)) > 20
    ):
        return "regression"
    return "classification"


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(values: Sequence[object]) -> np.ndarray:
    """Numeric predictions as floats, NaN for anything else (as the joined pairs are read)."""
    if set(map(type, values)) <= {float, int}:  # the usual batch: numbers only, checked in C
        return np.array(values, dtype=np.float64)
    return np.array([float(v) if _is_number(v) else np.nan for v in values])


def _confidence(
    predicted: list[str | None],
    scores: list[dict[str, float] | None],
    score: np.ndarray | list[float | None] | None,
    positive: str,
) -> np.ndarray:
    """The probability each prediction gives its predicted class (NaN without scores)."""
    if None not in scores:
        # The usual case: every event has class scores naming its class; dict.get runs in C.
        # Keyed by str | None for the lookup only: a None class finds nothing.
        found = list(map(dict.get, cast(list[dict[str | None, float]], scores), predicted))
        if None not in found:
            return np.array(found, dtype=np.float64)
    lone = score.tolist() if isinstance(score, np.ndarray) else score
    # `lone` may be an endless repeat(None): zip stops at the columns' common length.
    columns = zip(predicted, scores, repeat(None) if lone is None else lone, strict=False)
    values = [
        (s[p] if p in s else max(s.values())) if s else _lone_confidence(p, p1, positive)
        for p, s, p1 in columns
    ]
    return np.array(values, dtype=np.float64)


def _lone_confidence(predicted: str | None, p1: float | None, positive: str) -> float:
    """The probability a lone `score` (of the positive class) gives the predicted class."""
    if p1 is None or math.isnan(p1):
        return math.nan
    return p1 if (predicted == positive if predicted is not None else p1 >= 0.5) else 1 - p1


def _score_pairs(joined: Joined, positive: str, negative: str) -> _Scored:
    n = len(joined)
    predicted = _class_keys(joined.predictions)
    actual = _class_keys(joined.labels)
    scored = _score_pairs_by_class(joined.scores, predicted, actual)
    if scored is not None:
        p_true_array, brier_array = scored
        confidence = _confidence(predicted, joined.scores, joined.score, positive)
        correct = np.fromiter(map(operator.eq, predicted, actual), bool, n)
        return _Scored(correct, p_true_array, brier_array, confidence, predicted, actual)
    p_true: list[float] = [math.nan] * n
    brier: list[float] = [math.nan] * n
    for i, (s, p1, a) in enumerate(zip(joined.scores, joined.score, actual, strict=True)):
        if s:
            if predicted[i] is None:
                predicted[i] = max(s, key=s.__getitem__)
            p = s.get(a, 0.0)  # type: ignore[arg-type]
            squares = sum(map(operator.mul, s.values(), s.values()))
            # Binary Brier is (p1 - y)^2, half the sum over both classes.
            brier[i] = (squares - 2 * p + 1) / (2 if len(s) == 2 else 1)
            p_true[i] = p
        elif p1 is not None:
            if predicted[i] is None:
                predicted[i] = positive if p1 >= 0.5 else negative
            p = p1 if a == positive else 1 - p1
            brier[i] = (1 - p) ** 2
            p_true[i] = p
    confidence = _confidence(predicted, joined.scores, joined.score, positive)
    correct = np.fromiter(map(operator.eq, predicted, actual), bool, n)
    return _Scored(
        correct,
        np.array(p_true, dtype=np.float64),
        np.array(brier, dtype=np.float64),
        confidence,
        predicted,
        actual,
    )


def _score_pairs_by_class(
    scores: list[dict[str, float] | None], predicted: list[str | None], actual: list[str | None]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The probability of the true class and the Brier score of each pair, as `_score_pairs`
    computes them one pair at a time, but column-wise: for the usual batch, where every pair
    has a prediction and scores for the same number of classes. None for any other batch.

    The squares are summed class after class, in each dict's own order, starting from 0: the
    same additions in the same order as `sum(...)` per pair, so the same values to the bit.
    """
    if None in scores or None in predicted:
        return None
    dicts = cast(list[dict[str | None, float]], scores)
    sizes = set(map(len, dicts))
    if len(sizes) != 1 or 0 in sizes:
        return None
    p_true = np.array(list(map(dict.get, dicts, actual, repeat(0.0))), dtype=np.float64)
    values = np.array(list(map(list, map(dict.values, dicts))), dtype=np.float64)
    squares = sum(values[:, j] * values[:, j] for j in range(values.shape[1]))
    # Binary Brier is (p1 - y)^2, half the sum over both classes.
    brier = (squares - 2 * p_true + 1) / (2 if values.shape[1] == 2 else 1)
    return p_true, brier


def _add_classification(w: _Window, scored: _Scored, idx: np.ndarray) -> None:
    correct = scored.correct[idx]
    w.correct += int(correct.sum())
    p = scored.p_true[idx]
    has = ~np.isnan(p)
    if has.any():
        w.scored += int(has.sum())
        w.log_loss += float(-np.log(np.clip(p[has], LOG_LOSS_EPS, 1.0)).sum())
        w.brier += float(scored.brier[idx][has].sum())
    predicted, actual = _pick(scored.predicted, idx), _pick(scored.actual, idx)
    hits = correct.tolist()
    misses = [not ok for ok in hits]
    for counts, classes in (
        (w.tp, compress(predicted, hits)),
        (w.fp, compress(predicted, misses)),
        (w.fn, compress(actual, misses)),
    ):
        for cls_, k in Counter(classes).items():
            counts[cls_] = counts.get(cls_, 0) + k


def _pick(values: list[str | None], idx: np.ndarray) -> list[str | None]:
    """values[idx] for sorted distinct indices (all of them, in the usual one-group batch)."""
    return values if len(idx) == len(values) else [values[i] for i in idx.tolist()]


def _precision_recall_f1(w: _Window, s: AccuracySettings) -> tuple[float, float, float]:
    """Binary (for `positive_class`) when at most two classes are seen, else macro-averaged."""
    classes = {c for c in (*w.tp, *w.fp, *w.fn) if c is not None}
    if len(classes) <= 2 and (s.positive_class in classes or classes <= {s.negative_class}):
        chosen = [s.positive_class]
    else:
        chosen = sorted(classes)
    ps, rs, fs = [], [], []
    for c in chosen:
        tp, fp, fn = w.tp.get(c, 0), w.fp.get(c, 0), w.fn.get(c, 0)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        ps.append(p)
        rs.append(r)
        fs.append(2 * p * r / (p + r) if p + r else 0.0)
    k = len(chosen)
    return sum(ps) / k, sum(rs) / k, sum(fs) / k


def _fit_calibration(
    confidence: np.ndarray, correct: np.ndarray, bins: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Binned accuracy by confidence on the reference: CBPE's calibration step."""
    has = ~np.isnan(confidence)
    if has.sum() < max(100, len(confidence) // 2):
        return None, None
    conf, ok = confidence[has], correct[has]
    edges = np.unique(np.quantile(conf, np.linspace(0, 1, bins + 1)[1:-1]))
    which = np.searchsorted(edges, conf, side="right")
    hits = np.bincount(which, weights=ok, minlength=len(edges) + 1)
    counts = np.bincount(which, minlength=len(edges) + 1)
    overall = float(ok.mean())
    rates = (hits + CALIBRATION_PRIOR * overall) / (counts + CALIBRATION_PRIOR)
    return edges, rates


def _calibrated(ref: _Reference, confidence: np.ndarray) -> np.ndarray:
    """Expected correctness of each prediction (NaN where it has no scores)."""
    assert ref.edges is not None and ref.rates is not None
    out = ref.rates[np.searchsorted(ref.edges, np.nan_to_num(confidence), side="right")]
    out[np.isnan(confidence)] = np.nan
    return out


def _wilson(p: float, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion: sane near 0 and 1, unlike p +- z*se."""
    if n <= 0:
        return (0.0, 1.0)
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _expected_ci(expected: np.ndarray) -> tuple[float, float]:
    """CI of an estimated accuracy: CBPE's variance, each prediction a Bernoulli(e)."""
    variance = float((expected * (1 - expected)).sum())
    return _bounded_ci(float(expected.mean()), variance, len(expected))


def _bounded_ci(value: float, variance_of_sum: float, n: int) -> tuple[float, float]:
    half = Z95 * math.sqrt(variance_of_sum) / n
    return (max(0.0, value - half), min(1.0, value + half))


def _mean_ci(values: np.ndarray) -> tuple[float, float]:
    return _sums_ci(float(values.sum()), float(np.dot(values, values)), len(values))


def _sums_ci(total: float, squares: float, n: int) -> tuple[float, float]:
    mean = total / n
    std = math.sqrt(max(squares / n - mean * mean, 0.0))
    half = Z95 * std / math.sqrt(n)
    return (mean - half, mean + half)


def _value(value: float, ci: tuple[float, float], n: int) -> dict[str, Any]:
    return {"value": round(value, 6), "ci95": [round(ci[0], 6), round(ci[1], 6)], "n": n}
