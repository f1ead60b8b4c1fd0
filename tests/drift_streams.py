"""Small synthetic streams for the drift and data-quality tests, as columnar batches."""

from __future__ import annotations

from typing import Any

import numpy as np

from detectors.base import Detector, Finding
from streams.batch import ModelBatch

START = 1_767_225_600.0


def batch(
    numeric: dict[str, np.ndarray] | None = None,
    categorical: dict[str, list[Any]] | None = None,
    predictions: list[Any] | None = None,
    scores: list[dict[str, float] | None] | None = None,
    start: int = 0,
    model: str = "m",
) -> ModelBatch:
    """One batch of events `start`, `start + 1`, ... (one per second, offsets = indices)."""
    columns = {**(numeric or {}), **(categorical or {})}
    n = len(next(iter(columns.values()))) if columns else len(predictions or scores or [])
    cats = {}
    for name, values in (categorical or {}).items():
        column = np.empty(n, dtype=object)
        column[:] = list(values)
        cats[name] = column
    return ModelBatch(
        model=model,
        source="test",
        partition=0,
        ts=START + np.arange(start, start + n, dtype=np.float64),
        offsets=np.arange(start, start + n, dtype=np.int64),
        ids=[None] * n,
        clients=[None] * n,
        model_versions=[None] * n,
        rows=[],
        numeric={k: np.asarray(v, dtype=np.float64) for k, v in (numeric or {}).items()},
        categorical=cats,
        predictions=list(predictions) if predictions is not None else [None] * n,
        scores=list(scores) if scores is not None else [None] * n,
    )


def chunks(whole: ModelBatch, size: int = 1000) -> list[ModelBatch]:
    """A stream cut into batches of `size` events, as the pipeline would deliver it."""
    return [whole.slice(a, a + size) for a in range(0, len(whole), size)]


def run(detector: Detector, batches: list[ModelBatch]) -> list[Finding]:
    findings: list[Finding] = []
    for b in batches:
        findings.extend(detector.update(b))
    return findings


def choice(rng: np.random.Generator, values: list[Any], p: list[float], n: int) -> list[Any]:
    return [values[i] for i in rng.choice(len(values), n, p=p)]
