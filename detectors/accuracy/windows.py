"""Running sums per model version and event-time window (by prediction time), as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np


@dataclass(slots=True)
class Window:
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


def window_state(w: Window) -> dict[str, Any]:
    """A window's sums as plain data; its per-class counts as pairs (a class may be None)."""
    out: dict[str, Any] = {}
    for f in fields(w):
        value = getattr(w, f.name)
        out[f.name] = list(value.items()) if isinstance(value, dict) else value
    return out


def window_of_state(state: dict[str, Any]) -> Window:
    values: dict[str, Any] = {
        name: dict(map(tuple, value)) if isinstance(value, list) else value
        for name, value in state.items()
    }
    return Window(**values)


def groups(
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
