"""The accuracy detector's sequential test: a one-sided CUSUM on blocks of labelled events.

Each block of `block_size` values becomes a statistic that is N(0,1) while nothing has
changed, so the threshold comes from the false-alarm budget (`detectors.stats.calibration`);
the CUSUM itself is the one `detectors.stats.cusum.Cusum`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from detectors.stats.calibration import cusum_threshold_exact, steps_budget
from detectors.stats.cusum import Cusum
from detectors.stats.scores import NormalScores

RECENT_BLOCKS = 64  # how far back the change point and the "after" value are estimated


@dataclass(slots=True)
class Alarm:
    index: int  # index, in the values fed, of the last value of the alarming block
    value: float  # the CUSUM statistic that crossed the threshold
    mean: float  # raw mean since the estimated change point
    mean_square: float
    count: int
    blocks: int


class BlockCusum:
    """Blocks of values made N(0,1) in control (larger = worse), fed to a one-sided `Cusum`.

    `kind` says how a block becomes that statistic: "proportion" (0/1 losses, arcsine
    transform against the reference rate `p0`), "mean" (bounded values, z-score against the
    reference mean and std) or "scores" (any values, reference-normal scores times `sign`).
    """

    def __init__(
        self,
        kind: Literal["proportion", "mean", "scores"],
        block_size: int,
        k: float,
        h: float,
        *,
        p0: float = 0.0,
        mean: float = 0.0,
        std: float = 1.0,
        reference: np.ndarray | None = None,
        sign: float = 1.0,
        skew: float = 0.0,
    ) -> None:
        self.kind = kind
        self.skew = skew  # of the block mean ("mean"): its tail is made normal by `_unskew`
        self.block_size = block_size
        self.cusum = Cusum(k, h)
        self.g0 = math.asin(math.sqrt(min(max(p0, 0.0), 1.0)))
        self.mean, self.std = mean, std
        self.scores = NormalScores(reference) if reference is not None else None
        self.sign = sign
        self.pending = np.empty(0)
        self.recent: deque[tuple[float, float, float]] = deque(maxlen=RECENT_BLOCKS)
        self.seen = 0

    @property
    def k(self) -> float:
        return self.cusum.k

    @property
    def h(self) -> float:
        return self.cusum.h

    def state(self) -> dict[str, Any]:
        """Plain data: the test's constants, its sum, partial block and recent blocks (a
        "scores" test keeps its sorted reference; the normal scores are rebuilt from it)."""
        return {
            "kind": self.kind,
            "skew": self.skew,
            "block_size": self.block_size,
            "k": self.k,
            "h": self.h,
            "g0": self.g0,
            "mean": self.mean,
            "std": self.std,
            "reference": None if self.scores is None else self.scores.sorted,
            "sign": self.sign,
            "s": self.cusum.state()["up"],
            "pending": self.pending,
            "recent": np.array(list(self.recent), dtype=np.float64).reshape(-1, 3),
            "seen": self.seen,
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> BlockCusum:
        test = cls(
            state["kind"],
            state["block_size"],
            state["k"],
            state["h"],
            mean=state["mean"],
            std=state["std"],
            reference=state["reference"],
            sign=state["sign"],
            skew=state["skew"],
        )
        test.g0, test.pending, test.seen = state["g0"], state["pending"], state["seen"]
        test.cusum.load_state({"up": state["s"]})
        test.recent.extend(tuple(r) for r in state["recent"].tolist())
        return test

    def _z(self, blocks: np.ndarray) -> np.ndarray:
        b = self.block_size
        if self.kind == "proportion":
            g = np.arcsin(np.sqrt((blocks.sum(axis=1) + 0.375) / (b + 0.75)))
            return 2 * math.sqrt(b) * (g - self.g0)
        if self.kind == "mean":
            return _unskew((blocks.mean(axis=1) - self.mean) * math.sqrt(b) / self.std, self.skew)
        assert self.scores is not None
        normal = self.scores(blocks.ravel()).reshape(blocks.shape)
        return self.sign * normal.mean(axis=1) * math.sqrt(b)

    def feed(self, values: np.ndarray) -> list[Alarm]:
        """Adds values in arrival order; returns the alarms of the blocks they complete."""
        b = self.block_size
        data = np.concatenate([self.pending, values])
        carried = len(self.pending)
        full = len(data) // b
        self.pending = data[full * b :]
        if full == 0:
            return []
        blocks = data[: full * b].reshape(full, b)
        z = self._z(blocks)
        sums = blocks.sum(axis=1)
        squares = np.einsum("ij,ij->i", blocks, blocks)
        alarms = []
        for i in range(full):
            self.recent.append((float(z[i]), float(sums[i]), float(squares[i])))
            self.seen += b
            if self.cusum.update(float(z[i])).drift_detected:
                alarms.append(self._alarm((i + 1) * b - 1 - carried))
                self.recent.clear()  # later evidence stands on blocks after this alarm
        return alarms

    def _alarm(self, index: int) -> Alarm:
        """The blocks since the most likely change point (the CUSUM's argmax)."""
        recent = list(self.recent)
        tail = np.cumsum((np.array([r[0] for r in recent]) - self.k)[::-1])
        m = int(np.argmax(tail)) + 1
        window = recent[-m:]
        count = m * self.block_size
        return Alarm(
            index=index,
            value=self.cusum.statistic,
            mean=sum(r[1] for r in window) / count,
            mean_square=sum(r[2] for r in window) / count,
            count=count,
            blocks=m,
        )


def _unskew(z: np.ndarray, skew: float) -> np.ndarray:
    """Standardized block means with skewness `skew` -> N(0,1), via Wilson-Hilferty.

    A mean of skewed values (expected errors are mostly near 0, sometimes large) has a heavier
    upper tail than the normal, and a CUSUM's false alarms live in that tail. Matching a gamma
    of the same skewness (shape 4/skew^2) and taking its cube root makes it normal again.
    """
    if abs(skew) < 1e-3:
        return z
    shape = 4 / (skew * skew)
    sign = 1.0 if skew > 0 else -1.0
    x = np.maximum(shape + math.sqrt(shape) * sign * z, 0.0) / shape
    return sign * (np.cbrt(x) - (1 - 1 / (9 * shape))) / math.sqrt(1 / (9 * shape))


def budget_threshold(
    k: float, block_size: int, reference_size: int, tests: int, per_million: float
) -> float:
    """The budget's threshold, for a reference level that is one standard error off.

    The reference level is estimated, and an error of e in it shifts every block statistic
    by e*sqrt(B)/sigma, which acts on the CUSUM like a smaller k. With B/N = block/reference
    size, one reference standard error is sqrt(B/N) in block units: the threshold is the one
    the budget asks for at k - sqrt(B/N), so it holds unless the reference is unusually off.
    """
    allowance = math.sqrt(block_size / reference_size)
    budget = steps_budget(block_size, tests, per_million)
    return cusum_threshold_exact(max(k - allowance, 0.0), budget)
