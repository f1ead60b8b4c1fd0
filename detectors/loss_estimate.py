"""Direct loss estimation (DLE) for regressors: the expected |error| of every prediction from
its inputs and its output, before any label comes.

NannyML's DLE fits a "nanny" model (LightGBM, 100 trees) of the loss |y - y_hat| on the
reference, with the features and the prediction as inputs, and estimates a chunk's MAE as the
mean of its predictions' estimated losses. Here the nanny model is the additive part of that:
every input is cut into bins (numeric: quantile bins of the reference, plus a missing bin;
categorical: its frequent categories, "other" and missing; the prediction: quantile bins),
each numeric input (and the prediction) also gets a slope on its value clipped to the
reference's range, and a ridge regression on these columns gives each bin an additive effect
on the loss. That is a piecewise-constant (plus linear) generalized additive model, the main
effects boosted trees mostly find; interactions (the model errs only where two inputs are
both high) are not learned, which NannyML's trees can learn. In exchange:

- no runtime dependency (numpy only), a closed-form fit on the reference (one SVD, once),
  the ridge penalty chosen by generalized cross-validation (the trees' depth and rounds are
  hand-set hyperparameters in NannyML), and an estimate that cannot extrapolate wildly:
  beyond the reference's range an input stays in its outermost bin, as a tree does;
- a hot path of one binary search (numeric) or dict lookup (categorical) per input and a
  table lookup, so a batch's estimates cost a few numpy calls per input.

The same design matrix fits the squared error (for RMSE) with its own penalty. The spread of
the loss around its estimate is summarised by one ratio measured on the reference,
c = sum((|e| - est)^2) / sum(est^2): for errors of one shape scaled by the inputs (the usual
heteroscedastic case) Var(|e| given x) = c * est(x)^2 exactly, which gives the intervals of
an estimated MAE.

When the inputs do not tell where the model errs (the cross-validated fit explains less than
`MIN_EXPLAINED` of the variance of |error|), there is nothing to estimate: the estimate would
be the reference MAE whatever happens, and no model is returned.

`FeatureStore` keeps the inputs of the first predictions by id, so that the reference pairs
(which the label join completes without their features) can be given them back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

from streams.batch import ModelBatch

BINS = 10  # quantile bins per numeric input (fewer when inputs are many, see `_bins_for`)
MAX_COLUMNS = 600  # one-hot columns at most: keeps the reference fit (one SVD) short
MAX_CATEGORIES = 30  # most frequent categories kept per categorical input
MIN_CATEGORY_SHARE = 0.005  # ... each seen in at least this share of the reference (and 10)
MIN_PRESENT = 0.1  # an input missing from more than 90% of the reference is left out
MIN_EXPLAINED = 0.01  # cross-validated share of the |error| variance the inputs must explain
PENALTIES = np.geomspace(0.1, 1e5, 37)  # ridge penalties tried, in pseudo-events per bin


class FeatureStore:
    """The inputs of the first `cap` identified predictions, until their labels come.

    Rows are kept as numpy columns per batch part (what the batch already holds), and a dict
    maps each id to its row number; a second prediction with the same id points it to the new
    row, as the join keeps the latest. Pairs completed by the join are given their rows back
    by id (`take`); the store is dropped once the reference is fitted.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.rows = 0
        self.index: dict[str, int] = {}
        self.parts: list[dict[str, Any]] = []

    def add(self, batch: ModelBatch) -> None:
        """Keeps the inputs of the batch's predictions, up to the cap."""
        take = min(len(batch), self.cap - self.rows)
        if take <= 0:
            return
        ids = batch.ids[:take]
        self.index.update((pid, self.rows + i) for i, pid in enumerate(ids) if pid is not None)
        self.parts.append(
            {
                "numeric": {k: v[:take] for k, v in batch.numeric.items()},
                "categorical": {k: v[:take].tolist() for k, v in batch.categorical.items()},
                "size": take,
            }
        )
        self.rows += take

    def take(self, ids: list[str]) -> np.ndarray:
        """The row of each id (-1 for an id whose inputs were not kept), forgetting the ids."""
        pop = self.index.pop
        return np.fromiter((pop(pid, -1) for pid in ids), np.int64, len(ids))

    def columns(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The numeric and categorical inputs of `rows` (NaN / None where a part lacks one)."""
        numeric: dict[str, np.ndarray] = {}
        categorical: dict[str, np.ndarray] = {}
        names_n = sorted({k for p in self.parts for k in p["numeric"]})
        names_c = sorted({k for p in self.parts for k in p["categorical"]})
        for name in names_n:
            full = np.concatenate(
                [p["numeric"].get(name, np.full(p["size"], np.nan)) for p in self.parts]
            )
            numeric[name] = full[rows]
        for name in names_c:
            values: list[object] = []
            for p in self.parts:
                values.extend(p["categorical"].get(name, [None] * p["size"]))
            column = np.empty(len(values), dtype=object)
            column[:] = values
            categorical[name] = column[rows]
        return numeric, categorical

    def state(self) -> dict[str, Any]:
        return {
            "cap": self.cap,
            "rows": self.rows,
            "ids": list(self.index),
            "at": np.fromiter(self.index.values(), np.int64, len(self.index)),
            "parts": self.parts,
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> FeatureStore:
        store = cls(state["cap"])
        store.rows = state["rows"]
        store.index = dict(zip(state["ids"], state["at"].tolist(), strict=True))
        store.parts = state["parts"]
        return store


@dataclass(slots=True)
class LossModel:
    """Expected |error| and error^2 of a prediction: an intercept, one effect per bin of each
    input, and one slope per numeric input (see the module docstring)."""

    numeric: list[tuple[str, np.ndarray]]  # input name, bin edges and clipping range (below)
    categorical: list[tuple[str, list[object]]]  # input name, categories kept
    prediction_edges: np.ndarray
    ranges: np.ndarray  # (numeric inputs + 1) x 2: the reference range of each, prediction last
    abs_coef: np.ndarray  # one effect per one-hot column, then one slope per numeric input
    abs_intercept: float
    sq_coef: np.ndarray
    sq_intercept: float
    spread: float  # c: Var(|e| given x) = c * est^2
    explained: float  # cross-validated share of the variance of |error| explained
    rows: int  # reference pairs it was fitted on

    def estimate(
        self,
        numeric: dict[str, np.ndarray],
        categorical: dict[str, np.ndarray],
        predicted: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Expected |error| (>= 0) and error^2 (>= its square) of each prediction."""
        codes, linear = self._inputs(numeric, categorical, predicted)
        absolute = np.maximum(self._sum(self.abs_coef, codes, linear) + self.abs_intercept, 0.0)
        square = self._sum(self.sq_coef, codes, linear) + self.sq_intercept
        return absolute, np.maximum(square, absolute * absolute)

    @staticmethod
    def _sum(coef: np.ndarray, codes: np.ndarray, linear: np.ndarray) -> np.ndarray:
        width = len(coef) - linear.shape[1]
        out = linear @ coef[width:]
        for j in range(codes.shape[1]):
            out += coef.take(codes[:, j])
        return out

    def _inputs(
        self,
        numeric: dict[str, np.ndarray],
        categorical: dict[str, np.ndarray],
        predicted: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The one-hot column of each prediction's bin of each input (n x inputs), and each
        numeric input clipped to its reference range and scaled to [-0.5, 0.5], 0 if missing
        (n x numeric inputs + 1, the prediction last)."""
        n = len(predicted)
        codes: list[np.ndarray] = []
        linear: list[np.ndarray] = []
        offset = 0
        for (name, edges), (low, high) in zip(self.numeric, self.ranges[:-1], strict=True):
            column = numeric.get(name)
            codes.append(offset + _numeric_bins(column, edges, n))
            linear.append(_scaled(column, low, high, n))
            offset += len(edges) + 2
        for name, categories in self.categorical:
            codes.append(offset + _category_bins(categorical.get(name), categories, n))
            offset += len(categories) + 2
        codes.append(offset + _numeric_bins(predicted, self.prediction_edges, n))
        low, high = self.ranges[-1]
        linear.append(_scaled(predicted, low, high, n))
        return np.stack(codes, axis=1), np.stack(linear, axis=1)

    def width(self) -> int:
        """Columns of the design: the one-hot bins, then the slopes."""
        return (
            sum(len(e) + 2 for _, e in self.numeric)
            + sum(len(c) + 2 for _, c in self.categorical)
            + len(self.prediction_edges)
            + 2
            + len(self.ranges)
        )

    def state(self) -> dict[str, Any]:
        return {
            "numeric": [[name, edges] for name, edges in self.numeric],
            "categorical": [[name, list(cats)] for name, cats in self.categorical],
            "prediction_edges": self.prediction_edges,
            "ranges": self.ranges,
            "abs_coef": self.abs_coef,
            "abs_intercept": self.abs_intercept,
            "sq_coef": self.sq_coef,
            "sq_intercept": self.sq_intercept,
            "spread": self.spread,
            "explained": self.explained,
            "rows": self.rows,
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> LossModel:
        return cls(
            numeric=[(name, edges) for name, edges in state["numeric"]],
            categorical=[(name, list(cats)) for name, cats in state["categorical"]],
            prediction_edges=state["prediction_edges"],
            ranges=state["ranges"],
            abs_coef=state["abs_coef"],
            abs_intercept=state["abs_intercept"],
            sq_coef=state["sq_coef"],
            sq_intercept=state["sq_intercept"],
            spread=state["spread"],
            explained=state["explained"],
            rows=state["rows"],
        )


def fit_loss_model(
    numeric: dict[str, np.ndarray],
    categorical: dict[str, np.ndarray],
    predicted: np.ndarray,
    error: np.ndarray,
) -> LossModel | None:
    """The nanny model of |error| and error^2 on the reference pairs, or None when the inputs
    do not say where the model errs (or the pairs are too few to tell)."""
    n = len(error)
    if n < 200:
        return None
    present_n = {
        name: col for name, col in numeric.items() if np.mean(~np.isnan(col)) >= MIN_PRESENT
    }
    present_c = {
        name: col
        for name, col in categorical.items()
        # numpy's stubs reject None as an operand, which it compares elementwise.
        if np.mean(np.not_equal(col, None)) >= MIN_PRESENT  # type: ignore[call-overload]
    }
    bins = _bins_for(len(present_n) + len(present_c) + 1)
    numeric_inputs: list[tuple[str, np.ndarray]] = []
    ranges: list[tuple[float, float]] = []
    for name, col in sorted(present_n.items()):
        values = col[~np.isnan(col)]
        edges = _edges(values, bins)
        if len(edges):
            numeric_inputs.append((name, edges))
            ranges.append(_range(values))
    categorical_inputs: list[tuple[str, list[object]]] = []
    for name, col in sorted(present_c.items()):
        categories = _frequent(col, n)
        if categories:
            categorical_inputs.append((name, categories))
    ranges.append(_range(predicted))
    model = LossModel(
        numeric_inputs,
        categorical_inputs,
        _edges(predicted, bins),
        np.array(ranges, dtype=np.float64).reshape(-1, 2),
        np.empty(0),
        0.0,
        np.empty(0),
        0.0,
        0.0,
        0.0,
        n,
    )
    codes, linear = model._inputs(numeric, categorical, predicted)
    width = model.width()
    design = np.zeros((n, width))
    np.put_along_axis(design, codes, 1.0, axis=1)
    design[:, width - linear.shape[1] :] = linear
    absolute = np.abs(error)
    (model.abs_coef, model.abs_intercept), model.explained = _ridge_gcv(design, absolute)
    if model.explained < MIN_EXPLAINED:
        return None
    (model.sq_coef, model.sq_intercept), _ = _ridge_gcv(design, error * error)
    fitted, _ = model.estimate(numeric, categorical, predicted)
    model.spread = float(np.sum((absolute - fitted) ** 2) / max(np.sum(fitted**2), 1e-300))
    return model


def _ridge_gcv(design: np.ndarray, target: np.ndarray) -> tuple[tuple[np.ndarray, float], float]:
    """Ridge regression with an unpenalized intercept, its penalty chosen by generalized
    cross-validation; returns (coefficients, intercept) and the cross-validated share of the
    target's variance explained (0 when no penalty beats the intercept alone)."""
    n = len(target)
    means = design.mean(axis=0)
    centred = design - means
    y_mean = float(target.mean())
    y = target - y_mean
    # The eigen-decomposition of X'X (columns x columns) gives what the SVD of X would
    # (s^2 and V, and U'y = V'X'y / s) at a fraction of its cost when rows outnumber columns.
    s2, v = np.linalg.eigh(centred.T @ centred)
    s2 = np.maximum(s2, 0.0)
    s = np.sqrt(s2)
    keep = s2 > s2.max(initial=0.0) * 1e-12
    uy = np.where(keep, (v.T @ (centred.T @ y)) / np.where(keep, s, 1.0), 0.0)
    vt = v.T
    total = float(y @ y)
    outside = total - float(uy @ uy)  # the part of y no column can reach
    best_gcv, best_penalty = total / n, math.inf  # the intercept alone (infinite penalty)
    for penalty in PENALTIES:
        shrink = s2 / (s2 + penalty)
        rss = outside + float(np.sum(((1 - shrink) * uy) ** 2))
        df = float(shrink.sum())
        gcv = n * rss / (n - df - 1) ** 2 if df + 1 < n else math.inf
        if gcv < best_gcv:
            best_gcv, best_penalty = gcv, penalty
    if not math.isfinite(best_penalty) or total <= 0:
        return (np.zeros(design.shape[1]), y_mean), 0.0
    coef = vt.T @ (s / (s2 + best_penalty) * uy)
    intercept = y_mean - float(means @ coef)
    explained = 1 - best_gcv / (total / (n - 1))
    return (coef, intercept), explained


def _bins_for(inputs: int) -> int:
    """Bins per numeric input: `BINS`, fewer when there are so many inputs that the one-hot
    design would exceed `MAX_COLUMNS` (never fewer than 3)."""
    return max(3, min(BINS, MAX_COLUMNS // max(inputs, 1) - 2))


def _edges(values: np.ndarray, bins: int) -> np.ndarray:
    if len(values) == 0:
        return np.empty(0)
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))


def _frequent(column: np.ndarray, n: int) -> list[object]:
    """The categories seen in at least `MIN_CATEGORY_SHARE` of the reference (and 10 times),
    most frequent first, at most `MAX_CATEGORIES`."""
    counts: dict[object, int] = {}
    for value in column.tolist():
        if value is not None:
            counts[value] = counts.get(value, 0) + 1
    floor = max(10, MIN_CATEGORY_SHARE * n)
    kept = sorted((c for c in counts.items() if c[1] >= floor), key=lambda c: -c[1])
    return [value for value, _ in kept[:MAX_CATEGORIES]]


def _range(values: np.ndarray) -> tuple[float, float]:
    """Where a numeric input's slope applies: its reference's 0.5% to 99.5% quantiles (beyond,
    the estimate stays flat, as a tree's would: no extrapolation)."""
    low, high = np.quantile(values, [0.005, 0.995])
    return float(low), float(high)


def _scaled(column: np.ndarray | None, low: float, high: float, n: int) -> np.ndarray:
    """The values clipped to [low, high] and mapped to [-0.5, 0.5]; 0 where missing."""
    if column is None or high <= low:
        return np.zeros(n)
    out = (np.clip(column, low, high) - (low + high) / 2) / (high - low)
    out[np.isnan(out)] = 0.0
    return out


def _numeric_bins(column: np.ndarray | None, edges: np.ndarray, n: int) -> np.ndarray:
    """Bin of each value: 0..len(edges) by the edges, len(edges) + 1 when missing."""
    if column is None:
        return np.full(n, len(edges) + 1, dtype=np.int64)
    bins = np.searchsorted(edges, column, side="right")
    bins[np.isnan(column)] = len(edges) + 1
    return bins


def _category_bins(column: np.ndarray | None, categories: list[object], n: int) -> np.ndarray:
    """Bin of each value: its category's place, len(categories) for any other value,
    len(categories) + 1 when missing (categorical values are strings or booleans)."""
    other, missing = len(categories), len(categories) + 1
    if column is None:
        return np.full(n, missing, dtype=np.int64)
    lookup: dict[object, int] = {c: i for i, c in enumerate(categories)}
    lookup[None] = missing
    return np.fromiter(map(lookup.get, column.tolist(), repeat(other)), np.int64, n)
