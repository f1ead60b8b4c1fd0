"""A column's distribution, reference against the recent window, for the web page.

Built from what the pipeline stores anyway: the model's reference sample and its recent
predictions (`recent_samples`, written with checkpoints). A column is a feature, or one of the
outputs prediction drift watches: `prediction` / `class_proportions` (the model's output) and
`score` (the single score, else the positive-class probability of a binary classifier, else the
top-class probability: the rule of `detectors.prediction_drift`).

Besides the two distributions it gives the column's history over the recent window in blocks
of events: for a numeric column the block's mean and quantiles and its mean shift in reference
standard deviations (what the numeric drift test watches), for a categorical one the block's
PSI against the reference (the categorical test's effect measure). That is the monitored
quantity between alarms, which evidence alone does not show.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from agent.samples import Sample

BINS = 20
TOP_CATEGORIES = 12
HISTORY_BLOCKS = 40
MIN_BLOCK = 50
PSI_FLOOR = 1e-4  # share given to a category absent on one side, so PSI stays finite
OUTPUTS = ("prediction", "class_proportions", "score")


class NoColumn(LookupError):
    """The column is in neither sample (one line, for a 404)."""


def column_values(sample: Sample, column: str, output: bool = False) -> list[Any]:
    """The value per event (None where missing) of a feature, or with `output` of one of
    `OUTPUTS`."""
    if not output:
        return [row.get(column) for row in sample.features]
    if column in ("prediction", "class_proportions"):
        return list(sample.predictions)
    if column == "score":
        if any(s is not None for s in sample.score):
            return list(sample.score)
        classes = sorted({c for s in sample.scores if s for c in s})
        positive = classes[-1] if len(classes) == 2 else None
        return [
            None if not s else s.get(positive) if positive is not None else max(s.values())
            for s in sample.scores
        ]
    raise NoColumn(f"unknown output {column!r}; outputs are {', '.join(OUTPUTS)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def distribution(
    reference: Sample, recent: Sample, column: str, output: bool = False
) -> dict[str, Any]:
    """Both distributions of `column` on common bins (shares, so sizes may differ), their
    summaries, and the recent window's history in blocks."""
    ref_values = column_values(reference, column, output)
    cur_values = column_values(recent, column, output)
    ref_present = [v for v in ref_values if v is not None]
    cur_present = [v for v in cur_values if v is not None]
    if not ref_present and not cur_present:
        raise NoColumn(f"column {column!r} has no values in the reference or the recent window")
    present = ref_present + cur_present
    numbers = [v for v in present if _is_number(v)]
    numeric = len(numbers) == len(present) and len(set(numbers)) > TOP_CATEGORIES
    out: dict[str, Any] = {
        "column": column,
        "output": output,
        "type": "numeric" if numeric else "categorical",
        "reference": _side(reference, ref_values),
        "recent": _side(recent, cur_values),
    }
    if numeric:
        ref = np.asarray(ref_present, dtype=np.float64)
        cur = np.asarray(cur_present, dtype=np.float64)
        both = np.concatenate([ref, cur])
        low, high = np.quantile(both, [0.005, 0.995])
        if high <= low:
            low, high = float(both.min()), float(both.max()) + 1.0
        edges = np.linspace(low, high, BINS + 1)
        out["bins"] = edges.tolist()
        out["reference"]["shares"] = _hist(ref, edges)
        out["recent"]["shares"] = _hist(cur, edges)
        out["reference"]["summary"] = _numeric_summary(ref)
        out["recent"]["summary"] = _numeric_summary(cur)
        out["history"] = _numeric_history(recent, cur_values, ref)
    else:
        ref_shares = _shares(ref_present)
        cur_shares = _shares(cur_present)
        combined = {
            k: ref_shares.get(k, 0.0) + cur_shares.get(k, 0.0) for k in {*ref_shares, *cur_shares}
        }
        top = sorted(combined, key=lambda k: (-combined[k], k))[:TOP_CATEGORIES]
        out["categories"] = top
        out["reference"]["shares"] = [ref_shares.get(k, 0.0) for k in top]
        out["recent"]["shares"] = [cur_shares.get(k, 0.0) for k in top]
        out["reference"]["other_share"] = max(0.0, 1 - sum(out["reference"]["shares"]))
        out["recent"]["other_share"] = max(0.0, 1 - sum(out["recent"]["shares"]))
        out["history"] = _categorical_history(recent, cur_values, ref_shares)
    return out


def _side(sample: Sample, values: list[Any]) -> dict[str, Any]:
    missing = sum(v is None for v in values)
    return {
        "rows": len(values),
        "missing_share": round(missing / len(values), 6) if values else 0.0,
        "start": min(sample.ts) if sample.ts else None,
        "end": max(sample.ts) if sample.ts else None,
    }


def _hist(values: np.ndarray, edges: np.ndarray) -> list[float]:
    """Shares per bin; values beyond the outer edges count in the outer bins."""
    if not len(values):
        return [0.0] * (len(edges) - 1)
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return [round(float(c) / len(values), 6) for c in counts]


def _numeric_summary(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    q = np.quantile(values, [0.05, 0.5, 0.95])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p05": float(q[0]),
        "p50": float(q[1]),
        "p95": float(q[2]),
    }


def _key(value: Any) -> str:
    """A category as its JSON text (`"DE"`, `true`, `1`), as the reference summaries show it."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _shares(values: list[Any]) -> dict[str, float]:
    counts: dict[str, int] = {}
    for v in values:
        k = _key(v)
        counts[k] = counts.get(k, 0) + 1
    total = len(values) or 1
    return {k: n / total for k, n in counts.items()}


def _blocks(recent: Sample) -> list[np.ndarray]:
    """The recent window's events in time order, cut into equal-count blocks."""
    n = len(recent)
    if n == 0:
        return []
    count = max(1, min(HISTORY_BLOCKS, n // MIN_BLOCK))
    return np.array_split(np.argsort(np.asarray(recent.ts), kind="stable"), count)


def _numeric_history(recent: Sample, values: list[Any], ref: np.ndarray) -> list[dict[str, Any]]:
    ref_mean = float(ref.mean()) if len(ref) else math.nan
    ref_std = float(ref.std()) if len(ref) else math.nan
    history = []
    for block in _blocks(recent):
        x = np.asarray([values[i] for i in block if values[i] is not None], dtype=np.float64)
        point: dict[str, Any] = {
            "start": recent.ts[block[0]],
            "end": recent.ts[block[-1]],
            "n": len(block),
            "missing_share": round(1 - len(x) / len(block), 6),
        }
        if len(x):
            q = np.quantile(x, [0.05, 0.5, 0.95])
            mean = float(x.mean())
            point |= {"mean": mean, "p05": float(q[0]), "p50": float(q[1]), "p95": float(q[2])}
            if ref_std > 0:
                point["shift_std"] = round((mean - ref_mean) / ref_std, 4)
        history.append(point)
    return history


def _categorical_history(
    recent: Sample, values: list[Any], ref_shares: dict[str, float]
) -> list[dict[str, Any]]:
    history = []
    for block in _blocks(recent):
        present = [values[i] for i in block if values[i] is not None]
        point: dict[str, Any] = {
            "start": recent.ts[block[0]],
            "end": recent.ts[block[-1]],
            "n": len(block),
            "missing_share": round(1 - len(present) / len(block), 6),
        }
        if present and ref_shares:
            point["psi"] = round(psi(ref_shares, _shares(present)), 4)
        history.append(point)
    return history


def psi(reference: dict[str, float], current: dict[str, float]) -> float:
    """Population stability index of two category shares (absent categories floored)."""
    total = 0.0
    for k in {*reference, *current}:
        p = max(reference.get(k, 0.0), PSI_FLOOR)
        q = max(current.get(k, 0.0), PSI_FLOOR)
        total += (q - p) * math.log(q / p)
    return total
