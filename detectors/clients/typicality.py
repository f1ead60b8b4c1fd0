"""Off the rows: a query farther from every reference row than the rows are from each other.

One of the two rules of `atypical_share` (the other, in `detectors.clients.detector`: out of
range and beyond the 16 k-means cells' typical radius). Both ask whether a client's inputs
lie off the reference's joint picture, where no real row is, rather than at the edge of one
feature (`ood_share`'s business). The cells' rule sees a random input drawn over a wider box
than the data's, which leaves the ranges; it cannot see one drawn inside the data's own
per-feature box, which seldom does: on wine (13 features, 178 rows) 19-28% of such queries
left the learned reference's 0.25-99.75% ranges, and three of four such extractors on seeds
328 and 329 of `bench/client_attacks.py` were never flagged. Yet 84% of them lie farther from
their nearest wine row than 99% of the rows lie from their own nearest other row (all 178
rows, robust-scaled; 99.9% on the breast-cancer data, 100% on digits).

The rule: up to `ANCHORS` distinct reference rows, drawn uniformly, are the anchors
(drawn as k-means++ seeds instead, to give small clusters more, they flagged wine's heavy
user on three of three held-out seeds hours after a population-wide shift: see
docs/query-patterns.md, "Runs of stop 50"). A reference row's
distance to the nearest anchor other than itself (an identical row does not count: a repeat
is the same input, not a neighbour) stands for a fresh benign query's distance to its
nearest anchor, so the radius is the typical client's `TYPICAL_QUANTILE` of those distances
(`typical_radius`: the median over clients of each one's quantile, so that warm-up
attackers in a learned reference, far from every row, cannot widen it), and benign traffic
from the reference's distribution is beyond it about 1% of the time. Each distance
sets aside the query's most extreme numeric feature (the largest in robust units): a user
at the edge of one feature (`tests/test_query_patterns.py`'s edge users, one feature five
times wider) has real rows otherwise, and with it counted such users stood off the rows on
17% of their queries where benign keys stood on 0.2%, widening the tail that hid the
extractor among them; set aside, 6-7%, against the extractor's 54-70%. A synthetic input is
off the rows in many features at once. Cost: one product (queries x anchors) and one gather
per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from streams.batch import knows_clients

ANCHORS = 256  # reference rows a query is measured against, at most (its cost: one product)
TYPICAL_QUANTILE = 0.99  # of the reference rows' distances: the radius
SAME_ROW = 1e-12  # squared distance within which an anchor is the row itself
CHUNK = 128  # rows whose distances to the anchors are taken at once (128 x 256 in cache)


@dataclass(frozen=True)
class TypicalRows:
    """The anchors, how many leading encoded dimensions are numeric features, and the
    squared radius (inf: nothing is atypical)."""

    anchors: np.ndarray  # anchors x encoded dimensions
    numerics: int
    radius: float

    @classmethod
    def fit(
        cls, encoded: np.ndarray, numerics: int, owners: np.ndarray, rng: np.random.Generator
    ) -> tuple[TypicalRows, np.ndarray]:
        """The rule learned from the reference's encoded rows (`numerics` leading numeric
        dimensions) and their clients; with it, each row's own flag (beyond the radius from
        every other anchor), from which the prior's benign rate comes."""
        x = np.asarray(encoded, dtype=np.float64)
        anchors = np.unique(x, axis=0)
        if len(anchors) > ANCHORS:
            anchors = anchors[rng.choice(len(anchors), ANCHORS, replace=False)]
        nearest = cls(anchors, numerics, math.inf).nearest(x, exclude_same=True)
        radius = typical_radius(nearest, owners)
        return cls(anchors, numerics, radius), nearest > radius

    def nearest(self, x: np.ndarray, exclude_same: bool = False) -> np.ndarray:
        """Each row's squared distance to its nearest anchor, its most extreme numeric
        feature set aside (inf without anchors); `exclude_same`: an anchor identical to the
        row does not count (the reference's own rows, measured as fresh queries).

        With feature e set aside, |x - a|^2 over the others is |x'|^2 + (|a|^2 - a_e^2) -
        2 x'.a, x' being x with e zeroed: one product and one gather of the anchors' norms
        without e (`_norms_without`, a row per numeric feature), in blocks of `CHUNK` rows
        that stay in cache. The full distances less (x_e - a_e)^2, a batch at once, took
        six times as long (the hot path)."""
        if not len(self.anchors):
            return np.full(len(x), math.inf)
        x = np.array(x, dtype=np.float64)  # a copy: the set-aside feature is zeroed in it
        anchors = self.anchors
        if exclude_same:  # an identical anchor, judged on every feature
            same = _squared_distances(x, anchors) <= SAME_ROW
        if self.numerics >= 2:
            # Robust-scaled, a numeric coordinate's size is how extreme it is.
            extreme = np.abs(x[:, : self.numerics]).argmax(axis=1)
            x[np.arange(len(x)), extreme] = 0.0
        else:
            extreme = np.zeros(len(x), dtype=np.int64)  # the one row of full norms
        nearest = np.empty(len(x))
        for top in range(0, len(x), CHUNK):
            rows = slice(top, top + CHUNK)
            d2 = x[rows] @ anchors.T
            d2 *= -2
            d2 += self._norms_without[extreme[rows]]
            if exclude_same:
                d2[same[rows]] = math.inf
            d2.min(axis=1, out=nearest[rows])
        nearest += np.einsum("ij,ij->i", x, x)
        return np.maximum(nearest, 0.0)

    @cached_property
    def _norms_without(self) -> np.ndarray:
        """Per numeric feature e (one row each; one row of full norms without numerics),
        each anchor's squared norm without coordinate e."""
        norms = (self.anchors**2).sum(axis=1)
        if self.numerics < 2:
            return norms[None, :]
        return norms[None, :] - (self.anchors[:, : self.numerics] ** 2).T

    def atypical(self, x: np.ndarray) -> np.ndarray:
        """Whether each query lies beyond the radius from every anchor."""
        return self.nearest(x) > self.radius

    def to_data(self) -> dict[str, Any]:
        return {
            "anchors": self.anchors,
            "numerics": self.numerics,
            "radius": self.radius,
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> TypicalRows:
        return cls(
            np.asarray(data["anchors"], dtype=np.float64),
            int(data["numerics"]),
            float(data["radius"]),
        )


def typical_radius(nearest: np.ndarray, owners: np.ndarray) -> float:
    """The squared distance (to the nearest anchor, or input cell: both rules of
    `atypical_share`) within which the typical client of the reference keeps
    `TYPICAL_QUANTILE` of its rows (`nearest`: each row's): the median over clients of each
    one's quantile, so a few warm-up attackers far from everything, up to half the clients,
    cannot widen it (inf without finite distances: nothing is atypical)."""
    finite = np.isfinite(nearest)
    if not finite.any():
        return math.inf
    if not knows_clients(owners):  # a reference without clients (none, or all NO_CLIENT)
        return float(np.quantile(nearest[finite], TYPICAL_QUANTILE))
    nearest, owners = nearest[finite], owners[finite]
    # Rows without a client are one voice here: each alone would stand at its own value.
    _, voice, sizes = np.unique(owners, return_inverse=True, return_counts=True)
    order = np.lexsort((nearest, voice))  # by client, then distance
    starts = np.cumsum(sizes) - sizes
    at = starts + np.floor(TYPICAL_QUANTILE * (sizes - 1)).astype(np.int64)
    return float(np.median(nearest[order][at]))


def _squared_distances(x: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Rows x anchors: every squared distance, all features counted."""
    return (
        (anchors**2).sum(axis=1)[None, :]
        - 2 * (x @ anchors.T)
        + np.einsum("ij,ij->i", x, x)[:, None]
    )
