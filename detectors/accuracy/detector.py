"""`AccuracyDetector`: joins labels to predictions, keeps the performance windows, learns the
reference level from the first labelled events, then feeds the tests and words what they find.

The task's own arithmetic lives beside it: `classification` and `regression` (scores,
calibration, reference levels, tests and findings), `blocks` (the block CUSUM), `windows`,
`intervals`, `join` (the label join).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np

from detectors.accuracy.blocks import Alarm, BlockCusum
from detectors.accuracy.classification import (
    add_classification,
    calibrated,
    class_keys,
    classification_baseline,
    classification_finding,
    confidence_of,
    precision_recall_f1,
    score_pairs,
)
from detectors.accuracy.estimate import FeatureStore, LossModel, fit_loss_model
from detectors.accuracy.intervals import Z95, bounded_ci, sums_ci, wilson
from detectors.accuracy.join import Joined, LabelJoin
from detectors.accuracy.level import Draft, ReferenceLevel
from detectors.accuracy.regression import (
    add_errors,
    estimate_tests,
    estimated_regression_finding,
    is_number,
    numbers,
    regression_baseline,
    regression_finding,
)
from detectors.accuracy.windows import Window, groups, window_of_state, window_state
from detectors.base import Detector, Finding, Kind, MetricPoint
from detectors.baseline import Baseline
from detectors.settings import AccuracySettings
from streams.batch import ModelBatch
from streams.events import Position

STORE_FACTOR = 10  # inputs of the first reference_size * 10 predictions kept for the reference
MIN_COVERAGE_FOR_ERROR = 0.5  # labelled share of a window before its estimate is graded


class AccuracyDetector(Detector):
    """`accuracy_drop` from joined labels (measured) and from class scores (estimated)."""

    name = "accuracy"
    baseline = Baseline.OWN  # the first labelled events: a reference has no labels
    state_version = 2  # 2: the regression loss model is boosted trees (detectors.accuracy.estimate)

    def __init__(self, model: str, settings: AccuracySettings | None = None) -> None:
        self.model = model
        self.settings = s = settings or AccuracySettings()
        self.join = LabelJoin(s.label_ttl_seconds, s.max_pending, s.max_early_labels)
        self.task: str | None = None if s.task == "auto" else s.task
        self.source, self.partition = "", 0
        self.labelled = 0  # joined pairs seen
        self.ref_parts: list[dict[str, np.ndarray]] = []
        self.ref_count = 0
        self.reference: ReferenceLevel | None = None
        self.tests: dict[str, BlockCusum] = {}
        self.estimate_test: BlockCusum | None = None
        # Regression, label-free: the reference's inputs until it is fitted, then the model.
        self.store: FeatureStore | None = None
        self.loss_model: LossModel | None = None
        self.loss_tests: dict[str, BlockCusum] = {}
        self.windows: dict[tuple[str, float], Window] = {}
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
                [version, start, window_state(w)] for (version, start), w in self.windows.items()
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
            self.reference = ReferenceLevel(**ref)
        self.tests = {subject: BlockCusum.of_state(t) for subject, t in state["tests"].items()}
        estimate = state["estimate_test"]
        self.estimate_test = None if estimate is None else BlockCusum.of_state(estimate)
        store, model = state["store"], state["loss_model"]
        self.store = None if store is None else FeatureStore.of_state(store)
        self.loss_model = None if model is None else LossModel.of_state(model)
        self.loss_tests = {s: BlockCusum.of_state(t) for s, t in state["loss_tests"].items()}
        self.windows = {
            (version, start): window_of_state(w) for version, start, w in state["windows"]
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
            self.task = guess_task(batch)
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
            confidence = confidence_of(
                class_keys(batch.predictions),
                batch.scores,
                batch.score,
                s.positive_class,
            )
            expected = calibrated(ref, confidence)
        for version, start, idx in groups(batch.model_versions, batch.ts, s.window_seconds):
            w = self._window(version, start)
            w.predictions += len(idx)
            if expected is not None:
                e = expected[idx]
                e = e[~np.isnan(e)]
                w.est_n += len(e)
                w.est += float(e.sum())
                w.est_var += float((e * (1 - e)).sum())
        test = self.estimate_test
        if expected is None or test is None:
            return []
        assert ref is not None
        valid = np.flatnonzero(~np.isnan(expected))
        findings = []
        for alarm in test.feed(1.0 - expected[valid]):
            i = int(valid[alarm.index])
            draft = classification_finding(s, ref, alarm, estimated=True)
            if draft is not None:
                findings.append(
                    self._finding(draft, test, alarm, float(batch.ts[i]), batch.position(i))
                )
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
            predicted = numbers(batch.predictions)
            valid = np.flatnonzero(~np.isnan(predicted))
            numeric, categorical = batch.numeric, batch.categorical
            if len(valid) < len(batch):
                numeric = {k: v[valid] for k, v in numeric.items()}
                categorical = {k: v[valid] for k, v in categorical.items()}
            absolute, square = model.estimate(numeric, categorical, predicted[valid])
            estimated = np.full((3, len(batch)), np.nan)
            estimated[:, valid] = absolute, square, model.spread * absolute * absolute
        for version, start, idx in groups(batch.model_versions, batch.ts, s.window_seconds):
            w = self._window(version, start)
            w.predictions += len(idx)
            if estimated is not None:
                a, sq, var = estimated[:, idx]
                has = ~np.isnan(a)
                w.est_n += int(has.sum())
                w.est += float(a[has].sum())
                w.est_sq += float(sq[has].sum())
                w.est_var += float(var[has].sum())
        if model is None or estimated is None:
            return []
        ref = self.reference
        findings = []
        for subject, test in self.loss_tests.items():
            sign = -1.0 if subject == "estimated_mae_improved" else 1.0
            for alarm in test.feed(sign * estimated[0, valid]):
                i = int(valid[alarm.index])
                assert ref is not None
                draft = estimated_regression_finding(subject, s, ref, model, alarm)
                if draft is not None:
                    findings.append(
                        self._finding(draft, test, alarm, float(batch.ts[i]), batch.position(i))
                    )
        return findings

    def _joined(self, batch: ModelBatch, joined: Joined) -> list[Finding]:
        s = self.settings
        n = len(joined)
        self.labelled += n
        delay = joined.label_ts - joined.pred_ts
        if self.task == "classification":
            scored = score_pairs(joined, s.positive_class, s.negative_class)
            per_event = {
                "loss": (~scored.correct).astype(np.float64),
                "confidence": scored.confidence,
            }
        else:
            predicted = np.array(
                [np.nan if not is_number(p) else float(p) for p in joined.predictions]
            )
            actual = np.array([np.nan if not is_number(v) else float(v) for v in joined.labels])
            err = predicted - actual
            usable = ~np.isnan(err)
            per_event = {"err": err[usable]}
            if self.reference is None and self.store is not None:
                # The reference pairs' inputs, by id, for the loss model (-1: not kept).
                ids = [joined.ids[i] for i in np.flatnonzero(usable).tolist()]
                per_event["row"] = self.store.take(ids).astype(np.float64)
                per_event["pred"] = predicted[usable]
        for version, start, idx in groups(joined.versions, joined.pred_ts, s.window_seconds):
            w = self._window(version, start)
            w.labelled += len(idx)
            w.delay += float(delay[idx].sum())
            if self.task == "classification":
                add_classification(w, scored, idx)
            else:
                add_errors(w, err, idx)
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
        ref = self.reference
        assert ref is not None
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
                    draft = classification_finding(self.settings, ref, alarm, estimated=False)
                else:
                    draft = regression_finding(subject, self.settings, ref, alarm)
                if draft is not None:
                    findings.append(self._finding(draft, test, alarm, ts, position))
        return findings

    # ----------------------------------------------------------------- reference

    def _freeze(self) -> None:
        s = self.settings
        parts = {k: np.concatenate([p[k] for p in self.ref_parts]) for k in self.ref_parts[0]}
        self.ref_parts = []
        if self.task == "classification":
            ref, self.tests["accuracy"], self.estimate_test = classification_baseline(parts, s)
        else:
            model = self._fit_loss_model(parts)
            tests = 6 if model is not None else 4  # with a loss model: estimated MAE up, down
            ref, measured = regression_baseline(parts["err"], s, tests)
            self.tests.update(measured)
            if model is not None:
                self.loss_tests = estimate_tests(ref, model, parts["estimated"], s, tests)
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

    # ----------------------------------------------------------------- findings

    def _finding(
        self, draft: Draft, test: BlockCusum, alarm: Alarm, ts: float, position: Position
    ) -> Finding:
        """The fields every accuracy finding shares around its own details."""
        return Finding(
            model=self.model,
            kind=Kind.ACCURACY_DROP,
            subject=draft.subject,
            severity=draft.severity,
            ts=ts,
            position=position,
            detector=self.name,
            statistic=draft.statistic,
            value=round(alarm.value, 4),
            threshold=round(test.h, 4),
            effect_size=round(draft.effect, 4),
            support=alarm.count,
            title=draft.title,
            details={
                **draft.details,
                "labelled_events_total": self.labelled,
                "k": round(test.k, 4),
                "block_size": test.block_size,
                "blocks_since_change": alarm.blocks,
                "join": self.join.counters.as_dict(),
            },
        )

    # ----------------------------------------------------------------- history

    def _window(self, version: str, start: float) -> Window:
        key = (version, start)
        self.dirty.add(key)
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = Window()
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

    def _points(self, version: str, start: float, w: Window) -> list[MetricPoint]:
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
                out.append(point("accuracy", accuracy, wilson(accuracy, n), n))
                precision, recall, f1 = precision_recall_f1(w, self.settings)
                out.append(point("precision", precision, None, n))
                out.append(point("recall", recall, None, n))
                out.append(point("f1", f1, None, n))
                if w.scored:
                    out.append(point("log_loss", w.log_loss / w.scored, None, w.scored))
                    out.append(point("brier", w.brier / w.scored, None, w.scored))
            else:
                out.append(point("mae", w.abs_err / n, sums_ci(w.abs_err, w.abs_err_sq, n), n))
                out.append(point("rmse", math.sqrt(w.err_sq / n), None, n))
                out.append(point("bias", w.err / n, sums_ci(w.err, w.err_sq, n), n))
        if w.est_n and self.task == "regression":
            value = w.est / w.est_n
            half = Z95 * math.sqrt(w.est_var) / w.est_n
            out.append(point("mae", value, (max(value - half, 0.0), value + half), w.est_n, True))
            out.append(point("rmse", math.sqrt(w.est_sq / w.est_n), None, w.est_n, est=True))
            if w.est_n == w.predictions and n >= MIN_COVERAGE_FOR_ERROR * w.predictions:
                # Graded against the labels (the measured MAE is what counts), only where the
                # estimate covers the whole window, so both speak of the same predictions.
                error = value - w.abs_err / n
                lo, hi = sums_ci(w.abs_err, w.abs_err_sq, n)
                spread = (hi - lo) / 2
                out.append(point("mae_estimate_error", error, (error - spread, error + spread), n))
        elif w.est_n:
            value = w.est / w.est_n
            ci = bounded_ci(value, w.est_var, w.est_n)
            out.append(point("accuracy", value, ci, w.est_n, est=True))
        return out


def guess_task(batch: ModelBatch) -> str | None:
    """Classification unless predictions are numbers that look continuous."""
    values = [p for p in batch.predictions if p is not None]
    if any(s is not None for s in batch.scores) or batch.score is not None:
        return "classification"
    if not values:
        return None
    if all(is_number(v) for v in values) and (
        any(isinstance(v, float) and not v.is_integer() for v in values) or len(set(values)) > 20
    ):
        return "regression"
    return "classification"
