"""Regressors: the reference's MAE, RMSE and bias, their tests, the tests of the label-free
estimate, and the wording of what they find.

The measured tests are CUSUMs on block means of the reference-normal scores of |error| (MAE
up, and down: an improvement, info) and of the signed error (bias, both ways), as the numeric
drift detector does for features. The estimated ones are CUSUMs on block means of the
errors a loss model (`detectors.accuracy.estimate`, as NannyML's DLE) estimates for every
prediction before its label comes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeGuard

import numpy as np

from detectors.accuracy.blocks import Alarm, BlockCusum, budget_threshold
from detectors.accuracy.estimate import LossModel
from detectors.accuracy.intervals import Z95, mean_ci, with_ci
from detectors.accuracy.level import Draft, ReferenceLevel
from detectors.accuracy.windows import Window
from detectors.base import Severity
from detectors.settings import AccuracySettings


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def numbers(values: Sequence[object]) -> np.ndarray:
    """Numeric predictions as floats, NaN for anything else (as the joined pairs are read)."""
    if set(map(type, values)) <= {float, int}:  # the usual batch: numbers only, checked in C
        return np.array(values, dtype=np.float64)
    return np.array([float(v) if is_number(v) else np.nan for v in values])


def add_errors(w: Window, err: np.ndarray, idx: np.ndarray) -> None:
    """A window's error sums over the labelled pairs `idx` (NaN errors skipped)."""
    e = err[idx]
    e = e[~np.isnan(e)]
    w.err += float(e.sum())
    w.err_sq += float(np.dot(e, e))
    a = np.abs(e)
    w.abs_err += float(a.sum())
    w.abs_err_sq += float(np.dot(a, a))


def regression_baseline(
    err: np.ndarray, s: AccuracySettings, tests: int
) -> tuple[ReferenceLevel, dict[str, BlockCusum]]:
    """The reference level and the four measured tests, out of `tests` sharing the budget:
    MAE up, MAE down (an improvement: reported as info, since it often means the inputs
    changed), bias up, bias down."""
    b = s.block_size
    abs_err = np.abs(err)
    mae = float(abs_err.mean())
    ref = ReferenceLevel(
        n=len(err),
        level=mae,
        ci=mean_ci(abs_err),
        rmse=float(np.sqrt(np.mean(err * err))),
        bias=float(err.mean()),
        bias_ci=mean_ci(err),
    )
    k = math.sqrt(b) * s.min_detectable_shift / 2
    h = budget_threshold(k, b, len(err), tests, s.false_alarms_per_million)
    return ref, {
        "mae": BlockCusum("scores", b, k, h, reference=abs_err),
        "mae_improved": BlockCusum("scores", b, k, h, reference=abs_err, sign=-1.0),
        "bias": BlockCusum("scores", b, k, h, reference=err),
        "bias_down": BlockCusum("scores", b, k, h, reference=err, sign=-1.0),
    }


def estimate_tests(
    ref: ReferenceLevel, model: LossModel, estimated: np.ndarray, s: AccuracySettings, tests: int
) -> dict[str, BlockCusum]:
    """The CUSUMs on block means of estimated |error|, up and down, against their level on
    the reference (which `ref` records); built as the estimated-accuracy test is (`mean`
    kind, k from the margin, skew made normal)."""
    b = s.block_size
    level = float(estimated.mean())
    ref.estimated = level
    half = Z95 * math.sqrt(model.spread * float(np.dot(estimated, estimated))) / len(estimated)
    ref.estimated_ci = (max(level - half, 0.0), level + half)
    std = max(float(estimated.std()), 1e-9 * max(level, 1e-300))
    skew = float(np.mean((estimated - level) ** 3)) / std**3
    # The test is tuned to a change of twice the margin; changes under it stay quiet.
    k = max(s.regression_margin * level * math.sqrt(b) / std, 0.05)
    h = budget_threshold(k, b, len(estimated), tests, s.false_alarms_per_million)
    unskew = skew / math.sqrt(b)  # skewness of a block mean
    return {
        "estimated_mae": BlockCusum("mean", b, k, h, mean=level, std=std, skew=unskew),
        "estimated_mae_improved": BlockCusum("mean", b, k, h, mean=-level, std=std, skew=-unskew),
    }


def regression_finding(
    subject: str, s: AccuracySettings, ref: ReferenceLevel, alarm: Alarm
) -> Draft | None:
    """A measured MAE or bias that moved by `regression_margin` or more since the change
    point (an MAE that fell is info); None for a smaller move."""
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
    return Draft(
        metric,
        statistic,
        severity,
        effect=change,
        title=title,
        details={
            "metric": metric,
            "estimated": False,
            "before": with_ci(before, before_ci, ref.n),
            "after": with_ci(after, after_ci, alarm.count),
            "relative_change" if metric.startswith("mae") else "shift_in_rmse": round(
                -change if subject == "mae_improved" else change, 4
            ),
            "margin": s.regression_margin,
            "labelled_events": alarm.count,
            "test": "cusum_on_block_normal_scores",
            **extra,
        },
    )


def estimated_regression_finding(
    subject: str, s: AccuracySettings, ref: ReferenceLevel, model: LossModel, alarm: Alarm
) -> Draft | None:
    """An estimated MAE that moved by `regression_margin` or more since the change point:
    up is a warning (the estimate cannot confirm it: the labels will, on `mae`), down is
    info (an improvement usually means the inputs changed)."""
    assert ref.estimated is not None
    improved = subject == "estimated_mae_improved"
    before = ref.estimated
    after = -alarm.mean if improved else alarm.mean
    change = (after - before) / before if before > 0 else math.inf
    if abs(change) < s.regression_margin:
        return None
    # Var(|e| given x) = c * est^2, summed over the predictions since the change.
    half = Z95 * math.sqrt(model.spread * alarm.mean_square / alarm.count)
    verb = "fell" if improved else "rose"
    return Draft(
        subject,
        "cusum_estimated_abs_error_down" if improved else "cusum_estimated_abs_error",
        Severity.INFO if improved else Severity.WARNING,
        effect=abs(change),
        title=(
            f"estimated MAE {verb} from {before:.4g} to {after:.4g} ({100 * change:+.0f}%),"
            " before labels"
        ),
        details={
            "metric": "mae",
            "estimated": True,
            "before": with_ci(before, ref.estimated_ci, model.rows),
            "after": with_ci(after, (max(after - half, 0.0), after + half), alarm.count),
            "relative_change": round(change, 4),
            "margin": s.regression_margin,
            "measured_before": with_ci(ref.level, ref.ci, ref.n),
            "labelled_events": 0,
            "predictions": alarm.count,
            "explained": round(model.explained, 4),
            "test": "cusum_on_block_estimated_abs_error",
            **({"direction": "improved"} if improved else {}),
        },
    )
