"""Classifiers: per-pair scores, confidence and its calibration (CBPE's estimate), precision
and recall, the reference level and its tests, and the wording of an accuracy drop.

The measured test is a CUSUM on the block error rate through Anscombe's arcsine transform
(2*sqrt(B)*(asin(sqrt((c + 3/8)/(B + 3/4))) - asin(sqrt(p0))) is N(0,1) for binomial counts
even when errors are rare, where a plain z-score has a heavy upper tail). The estimated one is
a CUSUM on block means of expected errors, each prediction's confidence mapped to an expected
correctness through a calibration curve fitted on the reference (binned, as NannyML's CBPE).
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from typing import cast

import numpy as np

from detectors.accuracy.blocks import Alarm, BlockCusum, budget_threshold
from detectors.accuracy.intervals import bounded_ci, expected_ci, wilson, with_ci
from detectors.accuracy.join import Joined
from detectors.accuracy.level import Draft, ReferenceLevel
from detectors.accuracy.windows import Window
from detectors.base import Severity
from detectors.settings import AccuracySettings

LOG_LOSS_EPS = 1e-15
CALIBRATION_PRIOR = 5.0  # pseudo-events pulling a sparse calibration bin to the overall rate


def class_keys(values: Sequence[object]) -> list[str | None]:
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
class Scored:
    """Per-pair classification values of a joined batch."""

    correct: np.ndarray  # bool
    p_true: np.ndarray  # probability given to the true class; NaN without scores
    brier: np.ndarray  # NaN without scores
    confidence: np.ndarray  # probability of the predicted class; NaN without scores
    predicted: list[str | None]
    actual: list[str | None]


def confidence_of(
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


def score_pairs(joined: Joined, positive: str, negative: str) -> Scored:
    n = len(joined)
    predicted = class_keys(joined.predictions)
    actual = class_keys(joined.labels)
    scored = _score_pairs_by_class(joined.scores, predicted, actual)
    if scored is not None:
        p_true_array, brier_array = scored
        confidence = confidence_of(predicted, joined.scores, joined.score, positive)
        correct = np.fromiter(map(operator.eq, predicted, actual), bool, n)
        return Scored(correct, p_true_array, brier_array, confidence, predicted, actual)
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
    confidence = confidence_of(predicted, joined.scores, joined.score, positive)
    correct = np.fromiter(map(operator.eq, predicted, actual), bool, n)
    return Scored(
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
    """The probability of the true class and the Brier score of each pair, as `score_pairs`
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


def add_classification(w: Window, scored: Scored, idx: np.ndarray) -> None:
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


def precision_recall_f1(w: Window, s: AccuracySettings) -> tuple[float, float, float]:
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


def fit_calibration(
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


def calibrated(ref: ReferenceLevel, confidence: np.ndarray) -> np.ndarray:
    """Expected correctness of each prediction (NaN where it has no scores)."""
    assert ref.edges is not None and ref.rates is not None
    out = ref.rates[np.searchsorted(ref.edges, np.nan_to_num(confidence), side="right")]
    out[np.isnan(confidence)] = np.nan
    return out


def classification_baseline(
    parts: dict[str, np.ndarray], s: AccuracySettings
) -> tuple[ReferenceLevel, BlockCusum, BlockCusum | None]:
    """The reference level and the tests, from the reference's labelled pairs: the measured
    test, and the estimated one when the scores give a calibration (else None)."""
    b = s.block_size
    loss = parts["loss"]
    p0 = float(loss.mean())
    accuracy = 1 - p0
    ref = ReferenceLevel(n=len(loss), level=accuracy, ci=wilson(accuracy, len(loss)))
    edges, rates = fit_calibration(parts["confidence"], 1 - loss, s.calibration_bins)
    estimate = s.estimate and rates is not None
    tests = 2 if estimate else 1
    k = (
        2
        * math.sqrt(b)
        * (math.asin(math.sqrt(min(p0 + s.margin, 1.0))) - math.asin(math.sqrt(p0)))
    )
    k = max(k, 0.05)
    measured = BlockCusum(
        "proportion",
        b,
        k,
        budget_threshold(k, b, len(loss), tests, s.false_alarms_per_million),
        p0=p0,
    )
    if not estimate:
        return ref, measured, None
    ref.edges, ref.rates = edges, rates
    expected = calibrated(ref, parts["confidence"])
    expected = expected[~np.isnan(expected)]
    ref.estimated = float(expected.mean())
    ref.estimated_ci = expected_ci(expected)
    std = max(float(expected.std()), 1e-3)
    skew = float(np.mean((expected - expected.mean()) ** 3)) / std**3
    k_est = s.margin * math.sqrt(b) / std
    estimated = BlockCusum(
        "mean",
        b,
        k_est,
        budget_threshold(k_est, b, len(expected), tests, s.false_alarms_per_million),
        mean=1 - ref.estimated,
        std=std,
        skew=-skew / math.sqrt(b),  # of the expected errors 1 - e, per block
    )
    return ref, measured, estimated


def classification_finding(
    s: AccuracySettings, ref: ReferenceLevel, alarm: Alarm, estimated: bool
) -> Draft | None:
    """An accuracy (measured or estimated) that fell by `margin` or more since the change
    point; None for a smaller drop."""
    after = 1 - alarm.mean
    before = ref.estimated if estimated else ref.level
    assert before is not None
    drop = before - after
    if drop < s.margin:
        return None
    if estimated:
        # Sum of e(1-e) over the window from the sums of the expected errors l = 1 - e.
        variance = max(alarm.mean - alarm.mean_square, 0.0) * alarm.count
        after_ci = bounded_ci(after, variance, alarm.count)
        before_ci = ref.estimated_ci
        subject, statistic = "estimated_accuracy", "cusum_estimated_error_rate"
    else:
        after_ci = wilson(after, alarm.count)
        before_ci = ref.ci
        subject, statistic = "accuracy", "cusum_error_rate"
    what = "estimated accuracy" if estimated else "accuracy"
    return Draft(
        subject,
        statistic,
        _severity(drop, s),
        effect=drop,
        title=f"{what} fell from {before:.3f} to {after:.3f} ({100 * drop:.1f} points)",
        details={
            "metric": "accuracy",
            "estimated": estimated,
            "before": with_ci(before, before_ci, ref.n),
            "after": with_ci(after, after_ci, alarm.count),
            "drop": round(drop, 4),
            "margin": s.margin,
            "labelled_events": alarm.count if not estimated else 0,
            "predictions": alarm.count if estimated else 0,
            "test": "cusum_on_block_error_rate",
        },
    )


def _severity(drop: float, s: AccuracySettings) -> Severity:
    if drop >= s.critical_drop:
        return Severity.CRITICAL
    return Severity.WARNING if drop >= s.warning_drop else Severity.INFO
