"""Decision-region coverage: how much a client's answers look like the whole traffic's.

Model extraction needs labels across the model's decision regions, so an extractor's queries,
taken together, reach the classes the way the whole input distribution does (Kesarwani et
al. 2018, "Model Extraction Warning in MLaaS Paradigm": cumulative coverage of the model's
decision regions per client). A real API key serves its own customers, a segment of the
population, and its answers keep their own class mix.

Per client, a cumulative count per predicted class (the event's `prediction`, else its top
score, by a stable hash into `CLASS_SLOTS` slots); the traffic's mix is the counts of every
tracked query, decayed with a time constant of `null_window_seconds` (contemporaneous: it
follows an input shift). The statistic is minus the log of the Kullback-Leibler divergence of
the client's class mix from the traffic's: a client sampling the whole traffic has a
divergence of about (classes - 1) / (2 n) after n queries, so its statistic grows like log n;
a client with its own class mix stays near minus the log of that mix's divergence. (The log
matters: divergences near 0 are where the extractors are, and the null's exponential tail
must see them spread out.) Judged like every statistic against the contemporaneous population
at the same number of queries seen; it tells nothing when benign clients themselves sample
the whole population alike, or on a model with one class.

Coarse input cells (signs of random projections) joined to the class were tried and dropped:
on the tuning seeds they added noise, not separation (bench/client_separation.py).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

CLASS_SLOTS = 16  # predicted classes, by a stable hash of their text (more share slots)
REGIONS = CLASS_SLOTS
SMOOTHING = 0.5  # added to each class of the traffic's mix (a class nobody reached yet)
FLOOR = 1e-6  # of the divergence, under the log
MAX_LABELS = 4096  # labels whose slot is cached (a regression model has endless values)


class RegionCoverage:
    """The class slot of each query, the traffic's decayed mix, and the statistic."""

    def __init__(self, time_constant: float) -> None:
        self.time_constant = time_constant
        self.traffic = np.zeros(REGIONS)  # decayed counts of every tracked query
        self.traffic_ts = -math.inf  # event time the counts are decayed to
        self.slots: dict[object, int] = {}

    def regions(self, predictions: list[object]) -> np.ndarray:
        """Each query's class slot (int64); a missing prediction is hashed as the text
        'None'."""
        slots = self.slots
        if len(slots) > MAX_LABELS:
            slots.clear()
        for label in dict.fromkeys(predictions):
            if label not in slots:
                slots[label] = zlib.crc32(str(label).encode()) % CLASS_SLOTS
        return np.fromiter(map(slots.__getitem__, predictions), np.int64, len(predictions))

    def observe(self, regions: np.ndarray, now: float) -> None:
        """The traffic's mix, decayed to `now`, with these queries added."""
        if math.isfinite(self.traffic_ts) and now > self.traffic_ts:
            self.traffic *= math.exp(-(now - self.traffic_ts) / self.time_constant)
        self.traffic_ts = max(self.traffic_ts, now)
        self.traffic += np.bincount(regions, minlength=REGIONS)

    def statistic(self, counts: np.ndarray) -> np.ndarray:
        """Minus the log KL divergence of each row's mix (looks x REGIONS counts) from the
        traffic's; NaN for a row without queries."""
        q = self.traffic + SMOOTHING
        log_q = np.log(q / q.sum())
        counts = counts.astype(np.float64)
        n = counts.sum(axis=1)
        p = counts / np.maximum(n, 1)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * (np.log(p) - log_q), 0.0)
        divergence = np.maximum(terms.sum(axis=1), 0.0) + FLOOR
        return np.where(n > 0, -np.log(divergence), np.nan)

    def to_data(self) -> dict[str, Any]:
        return {"traffic": self.traffic, "traffic_ts": self.traffic_ts}

    @classmethod
    def from_data(cls, data: dict[str, Any], time_constant: float) -> RegionCoverage:
        out = cls(time_constant)
        out.traffic = np.asarray(data["traffic"], dtype=np.float64)
        out.traffic_ts = float(data["traffic_ts"])
        return out


def labels_of(
    predictions: Sequence[object], scores: Sequence[dict[str, float] | None], n: int
) -> list:
    """Each query's predicted class: its `prediction`, else the top class of its `scores`
    (None when it has neither)."""
    if len(predictions) == n and any(p is not None for p in predictions):
        return list(predictions)
    if len(scores) == n:
        return [None if not row else max(row, key=row.__getitem__) for row in scores]
    return [None] * n


def counts_at(
    stored: np.ndarray, labels: np.ndarray, start: np.ndarray, stop: np.ndarray
) -> np.ndarray:
    """Counts of each look: its client's stored counts (looks x REGIONS, or looks x features x
    bins for per-feature `labels`: rows x features) plus the batch's `labels[start:stop]` of
    that look (rows of its client before and at the look). One bincount over the looks' rows:
    cheaper than a running sum over the whole batch when a look sees a few rows of it."""
    lengths = stop - start
    looks = np.repeat(np.arange(len(start)), lengths)
    rows = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows += np.repeat(start, lengths)
    width = stored.shape[-1]
    cells = labels[rows].reshape(len(rows), -1)
    features = cells.shape[1]
    cells = cells + (looks[:, None] * features + np.arange(features)) * width
    added = np.bincount(cells.ravel(), minlength=stored.size)
    return stored + added.reshape(stored.shape)
