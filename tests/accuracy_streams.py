"""Synthetic labelled streams as columnar ModelBatches, for the accuracy tests and bench.

A binary classifier whose scores are calibrated: x ~ N(0, spread), p = sigmoid(2x), the model
predicts p > 0.5 with scores {"0": 1-p, "1": p}, and the label is drawn with probability p.
Its accuracy is E[max(p, 1-p)]. Two ways to lose accuracy after event `change_at`:

- `spread` shrinks (covariate shift towards the decision boundary): accuracy falls and the
  scores show it, so the label-free estimate sees it too;
- labels flip with probability `flip` (concept drift): scores do not change, only labels do.

Labels arrive `delay` events after their prediction (event time: one event per second).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from streams.batch import LabelColumns, ModelBatch

START = 1_767_225_600.0


def accuracy_of_spread(spread: float, samples: int = 400_000, seed: int = 99) -> float:
    x = np.random.default_rng(seed).normal(0, spread, samples)
    p = 1 / (1 + np.exp(-2 * x))
    return float(np.maximum(p, 1 - p).mean())


def spread_for_accuracy(target: float) -> float:
    """The spread whose accuracy is `target` (bisection; accuracy grows with spread)."""
    low, high = 0.01, 20.0
    for _ in range(40):
        mid = (low + high) / 2
        if accuracy_of_spread(mid) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def classification_batches(
    n: int,
    *,
    batch_size: int = 2000,
    delay: int = 500,
    spread: float = 2.0,
    change_at: int | None = None,
    spread_after: float | None = None,
    flip: float = 0.0,
    seed: int = 1,
    model: str = "m",
    version: str = "v1",
) -> Iterator[ModelBatch]:
    rng = np.random.default_rng(seed)
    scale = np.full(n, spread)
    flips = np.zeros(n, bool)
    if change_at is not None:
        if spread_after is not None:
            scale[change_at:] = spread_after
        flips[change_at:] = rng.random(n - change_at) < flip
    x = rng.normal(0, 1, n) * scale
    p = 1 / (1 + np.exp(-2 * x))
    label = (rng.random(n) < p) ^ flips
    prediction = (p > 0.5).astype(np.int64)
    yield from _batches(n, batch_size, delay, model, version, prediction, p, label.astype(np.int64))


def regression_batches(
    n: int,
    *,
    batch_size: int = 2000,
    delay: int = 500,
    change_at: int | None = None,
    bias_after: float = 0.0,
    noise_after: float = 1.0,
    seed: int = 2,
    model: str = "r",
) -> Iterator[ModelBatch]:
    """Predictions are y plus noise (std 1); after `change_at` they are off by `bias_after`
    and their noise has std `noise_after`."""
    rng = np.random.default_rng(seed)
    y = rng.normal(100, 20, n)
    noise = rng.normal(0, 1, n)
    if change_at is not None:
        noise[change_at:] *= noise_after
    prediction = y + noise
    if change_at is not None:
        prediction[change_at:] += bias_after
    yield from _batches(n, batch_size, delay, model, "v1", prediction, None, y)


def _batches(
    n: int,
    batch_size: int,
    delay: int,
    model: str,
    version: str,
    predictions: np.ndarray,
    p1: np.ndarray | None,
    labels: np.ndarray,
) -> Iterator[ModelBatch]:
    """Batches built lazily (score dicts per batch), as a decoder would hand them over."""
    ts = START + np.arange(n, dtype=np.float64)
    offset = 0
    for start in range(0, n + delay, batch_size):
        stop = min(start + batch_size, n)
        k = max(0, stop - start)
        lab_lo, lab_hi = max(0, start - delay), max(0, min(stop, n + delay) - delay)
        lab_hi = min(lab_hi, n)
        m = max(0, lab_hi - lab_lo)
        batch = ModelBatch(
            model=model,
            source="synthetic",
            partition=0,
            ts=ts[start:stop] if k else np.empty(0),
            offsets=np.arange(offset, offset + k, dtype=np.int64),
            ids=[f"{model}-{i}" for i in range(start, stop)],
            clients=[None] * k,
            model_versions=[version] * k,
            rows=[{}] * k,
            predictions=predictions[start:stop].tolist() if k else [],
            scores=(
                [None] * k
                if p1 is None
                else [{"0": 1 - q, "1": q} for q in p1[start:stop].tolist()]
            ),
        )
        offset += k
        if m:
            batch.labels = LabelColumns(
                ids=[f"{model}-{i}" for i in range(lab_lo, lab_hi)],
                values=labels[lab_lo:lab_hi].tolist(),
                ts=ts[lab_lo:lab_hi] + delay,
                offsets=np.arange(offset, offset + m, dtype=np.int64),
            )
            offset += m
        yield batch


def heteroscedastic_regression_batches(
    n: int,
    *,
    batch_size: int = 2000,
    delay: int = 500,
    change_at: int | None = None,
    x1_shift: float = 0.0,
    noise_after: float = 1.0,
    seed: int = 3,
    model: str = "h",
) -> Iterator[ModelBatch]:
    """A regressor that errs more in one region of its inputs, as DLE needs: features x1, x2
    (normal), x3 (uniform, unrelated to anything) and a category c in {a, b, c}; the model
    predicts the target's mean, and its error has std `error_scale` (1 + 1.5 max(x1, 0), x1.5
    when c = "c"). After `change_at`, x1's mean moves by `x1_shift` (a covariate shift: into
    the region where it errs more when positive, less when negative) and the error is
    multiplied by `noise_after` (concept drift: the inputs do not show it)."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(0, 1, n)
    if change_at is not None:
        x1[change_at:] += x1_shift
    x2 = rng.normal(0, 1, n)
    x3 = rng.random(n)
    c = rng.choice(np.array(["a", "b", "c"], dtype=object), n, p=[0.5, 0.3, 0.2])
    mean = 50 + 10 * x1 + 5 * x2
    error = rng.normal(0, 1, n) * error_scale(x1, c)
    if change_at is not None:
        error[change_at:] *= noise_after
    y = mean + error
    features = {"x1": x1, "x2": x2, "x3": x3}
    for batch in _batches(n, batch_size, delay, model, "v1", mean, None, y):
        if len(batch):  # its predictions are [first, first + len) of the stream
            first = int(batch.ids[0].rsplit("-", 1)[1])  # type: ignore[union-attr]
            span = slice(first, first + len(batch))
            batch.numeric = {k: v[span] for k, v in features.items()}
            batch.categorical = {"c": c[span]}
        yield batch


def error_scale(x1: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The std of the model's error given its inputs (see `heteroscedastic_regression_batches`)."""
    return (1 + 1.5 * np.maximum(x1, 0)) * np.where(c == "c", 1.5, 1.0)
