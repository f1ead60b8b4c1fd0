"""Direct loss estimation (DLE) for regressors: the expected |error| of every prediction from
its inputs and its output, before any label comes.

NannyML's DLE fits a "nanny" model (LightGBM, 100 trees) of the loss |y - y_hat| on the
reference, with the features and the prediction as inputs, and estimates a chunk's MAE as the
mean of its predictions' estimated losses. The nanny model here is of the same kind, a
gradient-boosted tree ensemble, in numpy:

- **Codes.** Every input is coded as LightGBM bins its values: numeric inputs and the
  prediction by the reference's quantiles (`BINS`), 0 for missing; categorical ones by their
  frequent categories and "other" (any other value, unseen ones included), ordered by their
  mean |error| on the reference so that one threshold splits them where it matters, 0 for
  missing. A value beyond the reference's range is in its outermost bin: the estimate stays
  flat there (trees do not extrapolate), for better (no wild values) and worse (a model whose
  error keeps growing out there is underestimated).
- **Trees.** Oblivious trees of depth `DEPTH` (every node of a level splits on the same input
  and threshold, as CatBoost's): each tree can express an interaction of up to three inputs
  (the model errs where two inputs are both high), which an additive model cannot, and a
  batch is estimated with a few numpy calls per tree level over all trees at once.
  Fitted by gradient boosting of the squared error on histograms of the codes.
- **Held-out rows.** Every `HELD_OUT`-th reference pair is kept out of the fit: the number of
  trees is where the held-out error stops falling, and the skill (`explained`: the share of
  the held-out |error| variance explained) and the spread below are measured on those rows,
  not in-sample, where trees can fit noise.

The same codes fit the squared error (for RMSE), with its own trees. The spread of the loss
around its estimate is summarised by one ratio measured on the held-out pairs,
c = sum((|e| - est)^2) / sum(est^2): for errors of one shape scaled by the inputs (the usual
heteroscedastic case) Var(|e| given x) = c * est(x)^2 exactly, which gives the intervals of
an estimated MAE.

When the inputs do not tell where the model errs (the trees explain less than
`MIN_EXPLAINED` of the held-out variance of |error|), there is nothing to estimate: the
estimate would be the reference MAE whatever happens, and no model is returned. The model is
plain data (arrays and lists), checkpointed as such.

`FeatureStore` keeps the inputs of the first predictions by id, so that the reference pairs
(which the label join completes without their features) can be given them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

from streams.batch import ModelBatch

BINS = 32  # quantile bins per numeric input and the prediction: the codes trees split on
MAX_CATEGORIES = 30  # most frequent categories kept per categorical input
MIN_CATEGORY_SHARE = 0.005  # ... each seen in at least this share of the reference (and 10)
MIN_PRESENT = 0.1  # an input missing from more than 90% of the reference is left out
MIN_EXPLAINED = 0.01  # held-out share of the |error| variance the inputs must explain
DEPTH = 3  # levels per tree: interactions of up to three inputs
LEARNING_RATE = 0.2
MAX_TREES = 300
PATIENCE = 30  # trees without a held-out improvement before the boosting stops
LEAF_PRIOR = 20.0  # pseudo-rows at zero added to every leaf: shrinks leaves of few rows
CHUNK = 256  # rows per step of the trees' evaluation (see `Trees.predict`)
HELD_OUT = 5  # every fifth reference pair is held out, to stop the boosting and judge it


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
class Trees:
    """A boosted ensemble of oblivious trees as data: every level of a tree splits all its
    nodes on one input's code, so a tree is `depth` (input, threshold) pairs and 2^depth leaf
    values. A row goes right at a level when its code is above the threshold; its leaf is the
    binary number of those choices (level 0 the lowest bit)."""

    features: np.ndarray  # trees x depth, input of each level's split
    thresholds: np.ndarray  # trees x depth, int16 as the codes (a wider type costs 5x)
    values: np.ndarray  # trees x 2^depth, learning rate applied
    base: float  # what the trees add to: the target's mean on the training rows

    def predict(self, codes: np.ndarray) -> np.ndarray:
        """The ensemble's output for coded rows (inputs x n, see `LossModel.codes`): one
        comparison per tree and level and one leaf lookup per tree, vectorized over the rows
        (rows of codes are gathered whole, the leaves are built in bytes). Rows go `CHUNK` at
        a time: temporaries of trees x CHUNK stay in the allocator's pool, where trees x a
        whole batch would be mapped and unmapped (page faults) on every call."""
        trees, depth = self.features.shape
        out = np.full(codes.shape[1], self.base)
        if trees == 0:
            return out
        offsets = (np.arange(trees, dtype=np.int64) << depth)[:, None]
        thresholds = self.thresholds[:, :, None]
        for start in range(0, codes.shape[1], CHUNK):
            part = codes[:, start : start + CHUNK]
            right = (part[self.features] > thresholds).view(np.uint8)  # trees x depth x rows
            leaf = right[:, 0].copy()
            for level in range(1, depth):
                leaf |= right[:, level] << level
            out[start : start + CHUNK] += self.values.take(leaf + offsets).sum(axis=0)
        return out

    def state(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "thresholds": self.thresholds,
            "values": self.values,
            "base": self.base,
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> Trees:
        return cls(state["features"], state["thresholds"], state["values"], state["base"])


@dataclass(slots=True)
class LossModel:
    """Expected |error| and error^2 of a prediction: how each input is coded (see the module
    docstring) and a boosted tree ensemble per target."""

    numeric: list[tuple[str, np.ndarray]]  # input name, bin edges
    categorical: list[tuple[str, list[object], int]]  # name, categories by code - 1, other's code
    prediction_edges: np.ndarray
    absolute: Trees
    square: Trees
    spread: float  # c: Var(|e| given x) = c * est^2, measured on the held-out pairs
    explained: float  # share of the variance of |error| explained on the held-out pairs
    rows: int  # reference pairs it was fitted on (training and held out)

    def estimate(
        self,
        numeric: dict[str, np.ndarray],
        categorical: dict[str, np.ndarray],
        predicted: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Expected |error| (>= 0) and error^2 (>= its square) of each prediction."""
        codes = self.codes(numeric, categorical, predicted)
        absolute = np.maximum(self.absolute.predict(codes), 0.0)
        square = self.square.predict(codes)
        return absolute, np.maximum(square, absolute * absolute)

    def codes(
        self,
        numeric: dict[str, np.ndarray],
        categorical: dict[str, np.ndarray],
        predicted: np.ndarray,
    ) -> np.ndarray:
        """Each prediction's code of each input (inputs x n, the prediction last: one row per
        input, so trees gather rows): 0 when missing; a numeric value's quantile bin from 1; a
        category's code from the model (codes fit in int16: at most `BINS` + 1)."""
        n = len(predicted)
        columns = [_numeric_codes(numeric.get(name), edges, n) for name, edges in self.numeric]
        columns.extend(
            _category_codes(categorical.get(name), categories, other, n)
            for name, categories, other in self.categorical
        )
        columns.append(_numeric_codes(predicted, self.prediction_edges, n))
        return np.stack(columns).astype(np.int16)

    def state(self) -> dict[str, Any]:
        return {
            "numeric": [[name, edges] for name, edges in self.numeric],
            "categorical": [[name, list(cats), other] for name, cats, other in self.categorical],
            "prediction_edges": self.prediction_edges,
            "absolute": self.absolute.state(),
            "square": self.square.state(),
            "spread": self.spread,
            "explained": self.explained,
            "rows": self.rows,
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> LossModel:
        return cls(
            numeric=[(name, edges) for name, edges in state["numeric"]],
            categorical=[(name, list(cats), other) for name, cats, other in state["categorical"]],
            prediction_edges=state["prediction_edges"],
            absolute=Trees.of_state(state["absolute"]),
            square=Trees.of_state(state["square"]),
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
    absolute = np.abs(error)
    numeric_inputs: list[tuple[str, np.ndarray]] = []
    for name, col in sorted(numeric.items()):
        values = col[~np.isnan(col)]
        if len(values) >= MIN_PRESENT * n:
            edges = _edges(values)
            if len(edges):
                numeric_inputs.append((name, edges))
    categorical_inputs: list[tuple[str, list[object], int]] = []
    for name, col in sorted(categorical.items()):
        # numpy's stubs reject None as an operand, which it compares elementwise.
        present = np.not_equal(col, None)  # type: ignore[call-overload]
        if np.mean(present) >= MIN_PRESENT:
            categories = _frequent(col, n)
            if categories:
                categorical_inputs.append((name, *_ordered(col, categories, absolute)))
    empty = Trees(
        np.empty((0, DEPTH), np.int64), np.empty((0, DEPTH), np.int16), np.empty((0, 0)), 0.0
    )
    model = LossModel(
        numeric_inputs, categorical_inputs, _edges(predicted), empty, empty, 0.0, 0.0, n
    )
    codes = model.codes(numeric, categorical, predicted)
    held = np.arange(n) % HELD_OUT == HELD_OUT - 1
    model.absolute, model.explained = _boost(codes, absolute, held)
    if model.explained < MIN_EXPLAINED:
        return None
    model.square, _ = _boost(codes, error * error, held)
    fitted = np.maximum(model.absolute.predict(codes[:, held]), 0.0)
    model.spread = float(np.sum((absolute[held] - fitted) ** 2) / max(np.sum(fitted**2), 1e-300))
    return model


def _boost(codes: np.ndarray, target: np.ndarray, held: np.ndarray) -> tuple[Trees, float]:
    """Gradient boosting of oblivious trees for the squared error on the rows not `held`,
    histogram-style (codes are bins already), stopped where the held-out rows stop improving;
    returns the trees and the share of the held-out target's variance they explain (0 when
    no tree beats the training mean)."""
    x, y = codes[:, ~held].T.astype(np.int64), target[~held]
    x_held, y_held = codes[:, held], target[held]
    inputs = x.shape[1]
    sizes = codes.max(axis=1).astype(np.int64) + 1
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    width = int(sizes.sum())
    input_of = np.repeat(np.arange(inputs), sizes)
    first = offsets[input_of]  # each code's input's first column
    splittable = np.ones(width, dtype=bool)
    splittable[offsets + sizes - 1] = False  # a split at an input's last code moves nothing
    columns = (x + offsets).ravel()
    base = float(y.mean())
    fitted, fitted_held = np.full(len(y), base), np.full(len(y_held), base)
    baseline = float(np.mean((y_held - base) ** 2))
    best_loss, best = baseline, 0
    features, thresholds, values = [], [], []
    for tree in range(MAX_TREES):
        residual = y - fitted
        weights = np.repeat(residual, inputs)
        leaf = np.zeros(len(y), dtype=np.int64)
        split_features, split_thresholds = [], []
        for level in range(DEPTH):
            leaves = 1 << level
            cells = (leaf * width).repeat(inputs) + columns
            sums = np.bincount(cells, weights, leaves * width).reshape(leaves, width)
            counts = np.bincount(cells, None, leaves * width).reshape(leaves, width)
            gain = _gain(sums, counts, first) if splittable.any() else None
            if gain is None:
                break
            gain[:, ~splittable] = -np.inf
            j = int(np.argmax(gain.sum(axis=0)))
            feature = int(input_of[j])
            threshold = j - int(offsets[feature])
            split_features.append(feature)
            split_thresholds.append(threshold)
            leaf |= (x[:, feature] > threshold).astype(np.int64) << level
        if len(split_features) < DEPTH:
            break
        leaf_sum = np.bincount(leaf, residual, 1 << DEPTH)
        leaf_count = np.bincount(leaf, None, 1 << DEPTH)
        value = LEARNING_RATE * leaf_sum / (leaf_count + LEAF_PRIOR)
        fitted += value[leaf]
        split = np.array([split_features]), np.array([split_thresholds], dtype=np.int16)
        fitted_held += Trees(*split, value[None, :], 0.0).predict(x_held)
        features.append(split_features)
        thresholds.append(split_thresholds)
        values.append(value)
        loss = float(np.mean((y_held - fitted_held) ** 2))
        if loss < best_loss:
            best_loss, best = loss, tree + 1
        elif tree + 1 - best >= PATIENCE:
            break
    trees = Trees(
        np.array(features[:best], dtype=np.int64).reshape(-1, DEPTH),
        np.array(thresholds[:best], dtype=np.int16).reshape(-1, DEPTH),
        np.array(values[:best], dtype=np.float64).reshape(-1, 1 << DEPTH),
        base,
    )
    return trees, (1 - best_loss / baseline if baseline > 0 else 0.0)


def _gain(sums: np.ndarray, counts: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Per leaf (rows) and candidate split (columns: go right above this code of its input),
    the fall in squared error of fitting the two sides' means, shrunk by `LEAF_PRIOR`."""
    zero = np.zeros((len(sums), 1))
    cum_sums = np.cumsum(sums, axis=1)
    cum_counts = np.cumsum(counts, axis=1)
    left_sum = cum_sums - np.hstack([zero, cum_sums])[:, first]
    left_count = cum_counts - np.hstack([zero, cum_counts])[:, first]
    total_sum = left_sum[:, -1:]  # the last input's whole range: every row of the leaf
    total_count = left_count[:, -1:]
    right_sum, right_count = total_sum - left_sum, total_count - left_count
    return left_sum**2 / (left_count + LEAF_PRIOR) + right_sum**2 / (right_count + LEAF_PRIOR)


def _edges(values: np.ndarray) -> np.ndarray:
    """The quantile bin edges of a numeric input (fewer when values repeat)."""
    if len(values) == 0:
        return np.empty(0)
    return np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]))


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


def _ordered(
    column: np.ndarray, categories: list[object], absolute: np.ndarray
) -> tuple[list[object], int]:
    """The kept categories and "other" (any other value) ordered by their mean |error| on
    the reference, so that a tree's threshold on the codes can split them where it matters
    (the order that makes one binary split of a category optimal for a squared loss); returns
    the categories in code order (code = place + 1, 0 is missing) and other's code."""
    n = len(categories)
    codes = _category_codes(column, categories, n + 1, len(column)) - 1  # other: n, missing: -1
    present = codes >= 0
    sums = np.bincount(codes[present], absolute[present], n + 1)
    counts = np.bincount(codes[present], None, n + 1)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), absolute.mean())
    order = np.argsort(means, kind="stable").tolist()
    ordered = [categories[i] for i in order if i < n]
    return ordered, order.index(n) + 1


def _numeric_codes(column: np.ndarray | None, edges: np.ndarray, n: int) -> np.ndarray:
    """Code of each value: 0 when missing, 1 + its bin by the edges (values beyond the
    reference's range are in its outermost bins)."""
    if column is None:
        return np.zeros(n, dtype=np.int64)
    codes = np.searchsorted(edges, column, side="right") + 1
    codes[np.isnan(column)] = 0
    return codes


def _category_codes(
    column: np.ndarray | None, categories: list[object], other: int, n: int
) -> np.ndarray:
    """Code of each value: 0 when missing, place + 1 of a kept category, `other` for any
    other value (categorical values are strings or booleans)."""
    if column is None:
        return np.zeros(n, dtype=np.int64)
    lookup: dict[object, int] = {c: i + 1 for i, c in enumerate(categories)}
    lookup[None] = 0
    return np.fromiter(map(lookup.get, column.tolist(), repeat(other)), np.int64, n)
