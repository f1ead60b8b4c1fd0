"""Numeric feature drift: calibrated Page-Hinkley tests on block normal scores.

Per feature, values are mapped to N(0,1) scores through the reference distribution
(`NormalScores.randomized`: ties broken at random, so a feature with atoms, such as a count
that is mostly 0, has N(0,1) scores too and blocks of equal values are no "narrowed
spread"), averaged over blocks of `block_size` values, and each block feeds two
Page-Hinkley tests with no forgetting (two-sided CUSUMs around the running mean of the block
statistics, `detectors.stats.cusum`, as River's `PageHinkley(alpha=1)`): one on the block mean
(location shifts) and one on the Wilson-Hilferty transform of the block's variance
(spread changes). Both block statistics are N(0,1) in control, so the thresholds come from
this detector's share of the model's false-alarm budget (`detectors.registry`), split over its
4 one-sided tests per feature (`detectors.stats.calibration`).

Raw River detectors at their defaults are noisy precisely because their inputs are neither
standardized nor aggregated; here they are both. A detection becomes a finding only when its
effect size, measured over the blocks since the estimated change point, clears a practical
significance floor, so trivial shifts on huge streams stay quiet. An alarm whose effect is under
the floor is not dropped: the test restarts on the new data at every alarm, so it would
never fire again for a change it has already seen. The monitor keeps watching instead: it
extends the alarm's since-change summary with every later block and reports the shift at the
first block where the effect since the change clears the floor (a real 0.22 std shift measured
at 0.19 over the alarm's few blocks), and stays quiet while it does not.

Values that come in clients' clusters (API keys, each with its own segment and sessions) are
not independent draws: each block statistic is divided by the square root of the design
effect of the window of events a CUSUM alarm spans (`horizon_events`, the blocks it needs to
find `min_detectable_shift`), with the intraclass correlation learned from the pairs of values
one client sent within one block (`detectors.stats.clustering`): of the scores for the
location test, of their squares for the spread test (keys that differ in spread make a
window of a few keys narrow or wide, as keys with their own means make it shift).
Without clients, or with each value from its own, the statistic is as before.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from detectors.base import Finding, Kind, Severity, Verdict
from detectors.reference import (
    ReferenceDetector,
    is_continuous,
    present_numbers,
    watch,
)
from detectors.settings import NumericDriftSettings
from detectors.stats.calibration import cusum_threshold, steps_budget
from detectors.stats.clustering import ClientContext, ClientWindows, IntraclassCorrelation
from detectors.stats.cusum import Cusum, drifts
from detectors.stats.scores import NormalScores
from streams.batch import ModelBatch

RECENT_BLOCKS = 64  # how far back the change point and effect size are estimated
REFERENCE_INDEX = 2**62  # stream index of the reference's first value (its ties' draws)
# What a `NumericMonitor` holds. A checkpoint of another layout is not resumed: the detector
# is rebuilt from the reference (2: alarms under the floor are watched; 3: the tests' state
# is the shared CUSUM's, no longer River's attributes; 4: the location test's design effect).
MONITOR_LAYOUT = 4


@dataclass(slots=True)
class _Block:
    mean_score: float  # mean of normal scores
    variance: float  # within-block variance of normal scores (location-invariant)
    raw_mean: float
    count: int


@dataclass(slots=True)
class NumericAlarm:
    index: int  # index, among the values fed, of the last value of the alarming block
    test: str  # "location" or "spread"
    value: float  # the Page-Hinkley statistic that crossed the threshold
    window: _Block  # summary of the blocks since the estimated change point
    blocks_since_change: int
    blocks_watched: int = 0  # blocks added after an alarm under the floor, until this one
    design_effect: float = 1.0  # of the alarming block's window, for its test's quantity
    intraclass_correlation: float = 0.0  # the rho it was computed with


@dataclass(slots=True)
class _Watch:
    """An alarm whose effect was under the floor, extended block by block since its change."""

    window: _Block  # summary of every block since the alarm's estimated change point
    blocks_since_change: int
    value: float  # the Page-Hinkley statistic of the alarm
    blocks_watched: int


@dataclass(frozen=True, slots=True)
class Floors:
    """Practical-significance floors and the critical level of one monitored quantity."""

    mean_shift: float  # |mean normal-score shift|, std units
    log_scale: float  # |log ratio of standard deviations|
    critical: float  # |effect| from which an incident is critical

    def of(self, test: str) -> float:
        """The floor of a test ("location" or "spread")."""
        return self.mean_shift if test == "location" else self.log_scale


TESTS = ("location", "spread")


def effect_of(test: str, window: _Block) -> float:
    """A window's effect in the test's terms: mean normal-score shift (std units) for
    location, log ratio of standard deviations for spread."""
    if test == "location":
        return window.mean_score
    return 0.5 * math.log(max(window.variance, 1e-12))


class NumericMonitor:
    """One numeric quantity's reference, block accumulator and two Page-Hinkley tests.

    Shared by feature drift (one per continuous feature) and prediction drift (scores,
    regression outputs): the calibration is the same wherever the values come from.
    """

    def __init__(
        self, reference: np.ndarray, block_size: int, shift: float, arl0: float, floors: Floors
    ) -> None:
        k = math.sqrt(block_size) * shift / 2
        h = cusum_threshold(k, arl0)
        self.scores = NormalScores(reference)
        self.ref_mean = float(np.mean(reference))
        self.ref_std = float(np.std(reference)) or 1.0
        self.ref_quantiles = [float(q) for q in np.quantile(reference, [0.05, 0.5, 0.95])]
        self.block_size = block_size
        self.k, self.h = k, h
        self.location = _page_hinkley(k, h)
        self.spread = _page_hinkley(k, h)
        self.pending_scores = np.empty(0)
        self.pending_raw = np.empty(0)
        self.pending_ids = np.zeros(0, dtype=np.int64)
        self.icc = IntraclassCorrelation()  # of the scores (location)
        self.icc_spread = IntraclassCorrelation()  # of their squares (spread)
        self.recent: deque[_Block] = deque(maxlen=RECENT_BLOCKS)
        self.seen = 0
        self.floors = floors  # what an alarm's effect must reach, else it is watched
        self.watching: dict[str, _Watch] = {}  # per test, an alarm under the floor
        # Warm both tests up on the reference's own blocks, so that their running means start
        # at the reference level: a stream drifted from its very first block is still caught.
        ref_scores = self.scores.randomized(reference, REFERENCE_INDEX)
        location, spread = [], []
        for start in range(0, len(reference) - block_size + 1, block_size):
            block = ref_scores[start : start + block_size]
            location.append(float(block.sum() / math.sqrt(len(block))))
            spread.append(float(_wilson_hilferty(np.var(block, ddof=1), len(block) - 1)))
        drifts(self.location, location)
        drifts(self.spread, spread)

    def state(self) -> dict[str, Any]:
        """Plain data: the sorted reference (the normal scores are rebuilt from it), the
        reference summary, both tests' running sums, the partial block and recent blocks."""
        return {
            "reference": self.scores.sorted,
            "ref_mean": self.ref_mean,
            "ref_std": self.ref_std,
            "ref_quantiles": self.ref_quantiles,
            "block_size": self.block_size,
            "k": self.k,
            "h": self.h,
            "location": self.location.state(),
            "spread": self.spread.state(),
            "pending_scores": self.pending_scores,
            "pending_raw": self.pending_raw,
            "pending_ids": self.pending_ids,  # the partial block's clients (stable ids)
            "icc": self.icc.state(),
            "icc_spread": self.icc_spread.state(),
            # One row per block: mean score, variance, raw mean, count.
            "recent": np.array(
                [[b.mean_score, b.variance, b.raw_mean, b.count] for b in self.recent],
                dtype=np.float64,
            ).reshape(-1, 4),
            "seen": self.seen,
            "floors": [self.floors.mean_shift, self.floors.log_scale, self.floors.critical],
            # Per test, an alarm under the floor still watched: its since-change block, the
            # blocks since the change, the alarm's statistic and the blocks watched.
            "watching": {
                test: [
                    [w.window.mean_score, w.window.variance, w.window.raw_mean, w.window.count],
                    w.blocks_since_change,
                    w.value,
                    w.blocks_watched,
                ]
                for test, w in self.watching.items()
            },
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> NumericMonitor:
        """The monitor `state()` described, without the reference warm-up (its effect is in
        the tests' sums)."""
        monitor = cls.__new__(cls)
        monitor.scores = NormalScores(state["reference"])
        monitor.ref_mean, monitor.ref_std = state["ref_mean"], state["ref_std"]
        monitor.ref_quantiles = state["ref_quantiles"]
        monitor.block_size = state["block_size"]
        monitor.k, monitor.h = state["k"], state["h"]
        monitor.location = _page_hinkley(monitor.k, monitor.h).load_state(state["location"])
        monitor.spread = _page_hinkley(monitor.k, monitor.h).load_state(state["spread"])
        monitor.pending_scores = state["pending_scores"]
        monitor.pending_raw = state["pending_raw"]
        monitor.pending_ids = np.asarray(state["pending_ids"], dtype=np.int64)
        monitor.icc = IntraclassCorrelation(*state["icc"])
        # A checkpoint from before the spread test was corrected learns it afresh.
        monitor.icc_spread = IntraclassCorrelation(*state.get("icc_spread", (0.0, 0.0)))
        monitor.recent = deque(
            (_Block(m, v, r, int(c)) for m, v, r, c in state["recent"].tolist()),
            maxlen=RECENT_BLOCKS,
        )
        monitor.seen = state["seen"]
        monitor.floors = Floors(*state["floors"])
        monitor.watching = {
            test: _Watch(_Block(m, v, r, int(c)), int(since), float(value), int(watched))
            for test, ((m, v, r, c), since, value, watched) in state["watching"].items()
        }
        return monitor

    @property
    def horizon_events(self) -> int:
        """The values a location alarm for `min_detectable_shift` takes to build up (h / k
        blocks): the window whose clients' design effect scales each block."""
        return math.ceil(self.h / self.k) * self.block_size

    def feed(self, raw: np.ndarray, clients: ClientContext | None = None) -> list[NumericAlarm]:
        """Adds values (in arrival order) and returns the alarms of the blocks they complete.
        `clients` gives the values' clients and their windows' excess (none: independent)."""
        carried = len(self.pending_scores)
        first = self.seen + carried  # the stream index of raw[0]
        scores = np.concatenate([self.pending_scores, self.scores.randomized(raw, first)])
        raws = np.concatenate([self.pending_raw, raw])
        ids = np.concatenate(
            [self.pending_ids, clients.ids if clients else np.zeros(len(raw), dtype=np.int64)]
        )
        full = len(scores) // self.block_size
        cut = full * self.block_size
        self.pending_scores, self.pending_raw = scores[cut:], raws[cut:]
        self.pending_ids = ids[cut:]
        if full == 0:
            return []
        blocks = scores[:cut].reshape(full, self.block_size)
        mean_scores = blocks.mean(axis=1)
        centred = blocks - mean_scores[:, None]
        variances = np.einsum("ij,ij->i", centred, centred) / (self.block_size - 1)
        raw_means = raws[:cut].reshape(full, self.block_size).mean(axis=1)
        location_stats = mean_scores * math.sqrt(self.block_size)
        spread_stats = _wilson_hilferty(variances, self.block_size - 1)
        rho = {test: np.zeros(full) for test in TESTS}
        deff = {test: np.ones(full) for test in TESTS}
        if clients is not None and ids[:cut].any():
            groups = clients.groups(ids[:carried], self.block_size)
            # The spread statistic is, to first order, the block mean of the squared
            # centred scores (variance 2 in control): its clustering is theirs. Keys with
            # their own spreads (a segment of near-identical inputs, one of varied ones)
            # make a window of a few keys narrow or wide, as own means make it shift.
            squares = centred * centred
            rho["location"] = self.icc.through_each(groups, centred)
            rho["spread"] = self.icc_spread.through_each(
                groups, (squares - squares.mean(axis=1, keepdims=True)) / math.sqrt(2.0)
            )
            # Each block's last value is in this batch (fewer than a block were carried).
            last = np.arange(1, full + 1) * self.block_size - 1 - carried
            for test in TESTS:
                deff[test] = 1.0 + rho[test] * clients.excess[last]
            location_stats = location_stats / np.sqrt(deff["location"])
            spread_stats = spread_stats / np.sqrt(deff["spread"])
        new = [
            _Block(m, v, r, self.block_size)
            for m, v, r in zip(
                mean_scores.tolist(), variances.tolist(), raw_means.tolist(), strict=True
            )
        ]
        fired = {
            "location": dict(drifts(self.location, location_stats)),
            "spread": dict(drifts(self.spread, spread_stats)),
        }
        alarms: list[NumericAlarm] = []
        if fired["location"] or fired["spread"] or self.watching:
            before = list(self.recent)
            for test in TESTS:
                alarms += self._follow(test, fired[test], before, new, carried)
            for alarm in alarms:
                b = (alarm.index + 1 + carried) // self.block_size - 1
                alarm.design_effect = float(deff[alarm.test][b])
                alarm.intraclass_correlation = float(rho[alarm.test][b])
            # Per block, the location test before the spread test.
            alarms.sort(key=lambda a: (a.index, TESTS.index(a.test)))
        self.recent.extend(new)
        self.seen += full * self.block_size
        return alarms

    def _follow(
        self,
        test: str,
        fired: dict[int, float],
        before: list[_Block],
        new: list[_Block],
        carried: int,
    ) -> list[NumericAlarm]:
        """One test's alarms over the new blocks: those of its Page-Hinkley test, and those of
        a watched alarm (one under the floor) whose effect since its change clears the floor."""
        watch = self.watching.pop(test, None)
        if watch is None and not fired:
            return []
        floor = self.floors.of(test)
        alarms = []
        for b, block in enumerate(new):
            last_index = (b + 1) * self.block_size - 1 - carried
            if b in fired:
                # The change point is estimated on the blocks up to the alarming one.
                recent = (before + new[: b + 1])[-RECENT_BLOCKS:]
                window, blocks_since = self._since_change(recent, test)
                alarms.append(NumericAlarm(last_index, test, fired[b], window, blocks_since))
                under = abs(effect_of(test, window)) < floor
                watch = _Watch(window, blocks_since, fired[b], 0) if under else None
            elif watch is not None:
                watch.window = _merged([watch.window, block])
                watch.blocks_since_change += 1
                watch.blocks_watched += 1
                if abs(effect_of(test, watch.window)) >= floor:
                    alarms.append(
                        NumericAlarm(
                            last_index,
                            test,
                            watch.value,
                            watch.window,
                            watch.blocks_since_change,
                            watch.blocks_watched,
                        )
                    )
                    watch = None
        if watch is not None:
            self.watching[test] = watch
        return alarms

    def _since_change(self, blocks: list[_Block], test: str) -> tuple[_Block, int]:
        """Summary of the blocks since the most likely change point (the CUSUM's argmax)."""
        if test == "location":
            stats = np.array([b.mean_score * math.sqrt(b.count) for b in blocks])
        else:
            stats = np.array([_wilson_hilferty(b.variance, b.count - 1) for b in blocks])
        best_m, best = 1, -math.inf
        for sign in (1.0, -1.0):
            tail = np.cumsum((sign * stats - self.k)[::-1])
            m = int(np.argmax(tail)) + 1
            if tail[m - 1] > best:
                best_m, best = m, float(tail[m - 1])
        return _merged(blocks[-best_m:]), best_m

    def judge(self, name: str, alarm: NumericAlarm, floors: Floors) -> Verdict | None:
        """The alarm as evidence, or None when its effect is below the practical floor."""
        window = alarm.window
        effect, floor = effect_of(alarm.test, window), floors.of(alarm.test)
        statistic = "cusum_mean_shift" if alarm.test == "location" else "cusum_scale_change"
        if abs(effect) < floor:
            return None
        if alarm.test == "location":
            direction = "up" if effect > 0 else "down"
            title = f"{name}: mean shifted {direction} by {abs(effect):.2f} std"
        else:
            direction = "widened" if effect > 0 else "narrowed"
            title = f"{name}: spread {direction} (std x{math.exp(effect):.2f})"
        return Verdict(
            statistic=statistic,
            value=round(alarm.value, 4),
            threshold=round(self.h, 4),
            effect_size=round(effect, 4),
            severity=Severity.CRITICAL if abs(effect) >= floors.critical else Severity.WARNING,
            support=window.count,
            title=title,
            details={
                "test": "page_hinkley_on_block_normal_scores",
                "effect_measure": (
                    "mean normal-score shift (std units)"
                    if alarm.test == "location"
                    else "log ratio of standard deviations"
                ),
                "effect_floor": floor,
                "k": round(self.k, 4),
                "block_size": self.block_size,
                "blocks_since_change": alarm.blocks_since_change,
                "blocks_watched_after_alarm": alarm.blocks_watched,
                # Clients' clustering: the block statistics were divided by its square
                # root (1: independent values), rho that of the test's quantity.
                "design_effect": round(alarm.design_effect, 4),
                "intraclass_correlation": round(alarm.intraclass_correlation, 4),
                "reference": {
                    "mean": self.ref_mean,
                    "std": self.ref_std,
                    "p05_p50_p95": self.ref_quantiles,
                    "size": len(self.scores.sorted),
                },
                "current": {
                    "mean": window.raw_mean,
                    "std_ratio": round(math.sqrt(max(window.variance, 0.0)), 4),
                    # The reference std times that ratio of normal-score stds: the blocks
                    # keep no raw variance, and through the reference's quantiles this is
                    # the current spread in the feature's own units.
                    "std": self.ref_std * math.sqrt(max(window.variance, 0.0)),
                    "count": window.count,
                },
                "standardized_mean_shift": round(
                    (window.raw_mean - self.ref_mean) / self.ref_std, 4
                ),
                "events_seen": self.seen,
            },
        )


def numeric_arl0(block_size: int, monitors: int, per_million: float) -> float:
    """The in-control ARL (in blocks) each of `monitors` x 2 statistics x 2 sides needs so
    that together they spend at most `per_million` false alarms per million values."""
    return steps_budget(block_size, max(1, 4 * monitors), per_million)


class NumericDriftDetector(ReferenceDetector):
    """`feature_drift` on continuous numeric features; see the module docstring."""

    name = "numeric_drift"

    settings_type = NumericDriftSettings
    settings: NumericDriftSettings
    monitors: dict[str, NumericMonitor]
    windows: ClientWindows
    configuration = (*ReferenceDetector.configuration, "monitor_layout")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.monitor_layout = MONITOR_LAYOUT

    def build(self, reference: ModelBatch) -> None:
        s = self.settings
        samples = {n: c[~np.isnan(c)] for n, c in reference.numeric.items()}
        continuous = {
            n: v for n, v in samples.items() if len(v) >= s.block_size * 4 and is_continuous(v)
        }
        arl0 = numeric_arl0(s.block_size, len(continuous), self.budget)
        self.monitors = {
            name: NumericMonitor(
                values, s.block_size, s.of(name, "min_detectable_shift"), arl0, self._floors(name)
            )
            for name, values in continuous.items()
        }
        self.windows = client_windows(self.monitors.values())

    def built_state(self) -> dict[str, Any]:
        return {
            "monitors": {name: m.state() for name, m in self.monitors.items()},
            "windows": self.windows.state(),
        }

    def load_built(self, state: dict[str, Any]) -> None:
        self.monitors = {n: NumericMonitor.of_state(m) for n, m in state["monitors"].items()}
        self.windows = ClientWindows.of_state(state["windows"])

    def monitor(self, batch: ModelBatch) -> list[Finding]:
        findings: list[Finding] = []
        clients = ClientContext.of(batch, self.windows)
        for name, monitor in self.monitors.items():
            values, valid = present_numbers(batch, name)
            if len(valid) == 0:
                continue
            floors = self._floors(name)
            findings += watch(
                self.name,
                Kind.FEATURE_DRIFT,
                name,
                monitor,
                floors,
                batch,
                values,
                valid,
                clients.take(valid),
            )
        return findings

    def _floors(self, name: str) -> Floors:
        s = self.settings
        return Floors(
            s.of(name, "min_effect_size"),
            s.of(name, "min_log_scale_change"),
            s.of(name, "critical_effect_size"),
        )


def client_windows(monitors: Iterable[NumericMonitor]) -> ClientWindows:
    """The clients' windows a detector's numeric monitors share: the longest horizon of them
    (monitors whose `min_detectable_shift` is overridden have their own)."""
    return ClientWindows(max((m.horizon_events for m in monitors), default=1))


def _merged(blocks: list[_Block]) -> _Block:
    """One summary of consecutive blocks (count-weighted means)."""
    count = sum(b.count for b in blocks)
    return _Block(
        mean_score=sum(b.mean_score * b.count for b in blocks) / count,
        variance=sum(b.variance * b.count for b in blocks) / count,
        raw_mean=sum(b.raw_mean * b.count for b in blocks) / count,
        count=count,
    )


def _wilson_hilferty(variance: float | np.ndarray, n: int) -> float | np.ndarray:
    """N(0,1) in control: the cube root of a chi-square(n)/n is close to normal."""
    return (np.cbrt(variance) - (1 - 2 / (9 * n))) / math.sqrt(2 / (9 * n))


def _page_hinkley(k: float, h: float) -> Cusum:
    """River's Page-Hinkley test with no forgetting, as this monitor runs it: a two-sided
    CUSUM around the running mean of the block statistics since its last alarm."""
    return Cusum(k, h, two_sided=True, running_mean=True)
