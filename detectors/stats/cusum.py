"""Page's CUSUM: the one sequential test of Bulwark's detectors, with River's `update` protocol.

Fed one value at a time, it sums how far the values run above their in-control level by more
than the allowance `k`, never going below 0, and reports a drift when the sum exceeds the
threshold `h` (`detectors.stats.calibration` derives h from a false-alarm budget when the
values are N(0, 1) in control). Two-sided, it does the same for the values running below.
After a drift the next value starts afresh, as River's detectors do: `drift_detected` and
`statistic` still describe the alarm until then.

The in-control level is 0 (values standardized against a reference), or, with
`running_mean=True`, the mean of the values since the last restart: River's Page-Hinkley
test with no forgetting (`alpha=1`), which then needs no reference level of its own.

>>> cusum = Cusum(k=0.5, h=4.0)
>>> for i, x in enumerate([0.2, -0.4, 0.1, 2.0, 2.0, 2.0]):
...     if cusum.update(x).drift_detected:
...         print(f"drift at {i}: {cusum.statistic:.1f} > {cusum.h}")
drift at 5: 4.5 > 4.0

After the drift it starts afresh, from the state it reports (plain data, for checkpoints):

>>> cusum.state()
{'up': 0.0}
>>> cusum.update(2.0).statistic
1.5

Two-sided, around the running mean, a fall is found as well as a rise, whatever the level
the values had before:

>>> ph = Cusum(k=0.1, h=3.0, two_sided=True, running_mean=True)
>>> values = [5.0, 6.0] * 10 + [3.5] * 5
>>> [i for i, x in enumerate(values) if ph.update(x).drift_detected]
[21]
"""

from __future__ import annotations

from typing import Any


class Cusum:
    """One- or two-sided CUSUM with allowance `k` and threshold `h` (see the module)."""

    def __init__(
        self, k: float, h: float, *, two_sided: bool = False, running_mean: bool = False
    ) -> None:
        self.k = k
        self.h = h
        self.two_sided = two_sided
        self.running_mean = running_mean
        self.up = 0.0  # the sum of excesses above the level (+k), floored at 0
        self.down = 0.0  # below it (two-sided only)
        self.n = 0  # values since the last restart (counted for the running mean)
        self.mean = 0.0
        self.drift_detected = False

    @property
    def statistic(self) -> float:
        """The larger of the sums: what is compared with `h`."""
        return max(self.up, self.down)

    def update(self, x: float) -> Cusum:
        if self.drift_detected:
            self._restart()
        if self.running_mean:
            self.n += 1
            self.mean += (1 / self.n) * (x - self.mean)
            x -= self.mean
        self.up = max(0.0, self.up + x - self.k)
        if self.two_sided:
            self.down = max(0.0, self.down - x - self.k)
        self.drift_detected = self.up > self.h or self.down > self.h
        return self

    def _restart(self) -> None:
        self.up = self.down = 0.0
        self.n, self.mean = 0, 0.0
        self.drift_detected = False

    def state(self) -> dict[str, Any]:
        """What the next `update` continues from (a drift's restart done), as plain data:
        the sums, and the running mean's count and value when it has one."""
        restart = self.drift_detected
        state = {"up": 0.0 if restart else self.up}
        if self.two_sided:
            state["down"] = 0.0 if restart else self.down
        if self.running_mean:
            state["n"], state["mean"] = (0, 0.0) if restart else (self.n, self.mean)
        return state

    def load_state(self, state: dict[str, Any]) -> Cusum:
        """Continues from what `state()` described, on a test built with the same k and h."""
        self.up = float(state["up"])
        if self.two_sided:
            self.down = float(state["down"])
        if self.running_mean:
            self.n, self.mean = int(state["n"]), float(state["mean"])
        self.drift_detected = False
        return self


def drifts(test: Cusum, values: Any) -> list[tuple[int, float]]:
    """Feeds `values` in order; returns the index and statistic of each drift among them."""
    found = []
    for i, x in enumerate(values.tolist() if hasattr(values, "tolist") else values):
        if test.update(x).drift_detected:
            found.append((i, test.statistic))
    return found
