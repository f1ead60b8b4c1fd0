"""`stream_stalled`: a model's stream went silent for far longer than it usually does.

What is "usual" is learned from the stream's own gaps between events (in event time), not
from a fixed number: a histogram of the gaps on a log scale (four bins per doubling, 1 ms to
35 years), so a daily cycle's quiet night hours are part of what the stream usually does. A
gap is a stall when it exceeds all of: `factor` times the `quantile` of the gaps seen so far;
the quantile plus `tail_margin` times the mean excess over it of the gaps beyond it;
`recurring_margin` times the longest gap the stream has shown at least twice (a traffic that
stops every night: its quiet hours are rarer than any quantile of the gaps, yet usual); and
`min_stall`; once the stream has shown `min_gaps` gaps over at least `min_span` of event time
(two days by default: a daily cycle seen twice). Only gaps between distinct times count: a
burst's events say nothing of the quiet between bursts. A stall seen once does not raise the
bar: only a gap that recurs does, and the longest gap is left out of the mean excess.

Why these three. The quantile times a factor: for gaps that are exponential at the slowest
hour's rate r, when that hour holds a good share of the gaps beyond the quantile, the 0.999
quantile is a few times 1/r and 5 times it has a probability of about e^-16 per gap. When the
quiet hours are a small share of the day's gaps (API keys' sessions, a few an hour at night
and a hundred at the afternoon peak), the quantile falls below the night's gaps and 5 times
it is no bar; the longest gaps seen so far, being maxima of random gaps, are no bar either (a
night's longest gap was 13.4 minutes after four nights of at most 9.6, bench/client_attacks.py
seed 32). The gaps beyond the quantile are the quiet hours' own: exponential there (sessions
start at random), their excess over the quantile is memoryless, and its mean is their scale b;
a gap beyond the quantile exceeds it by `tail_margin` = 16 b with probability e^-16, as the
factor's rule meant. Slowdowns are caught, outright stops all the more.

Replay sees a gap only when the events return: the stall finding (at the event time the gap
became a stall) and the `resumed` finding that resolves the incident come together. The
daemon also asks, on the wall clock, how long each stream has been silent (`silent_for`),
which opens the incident while the stream is still quiet; the first event back resolves it.
Event times only, as every detector: the caller passes the silence it measured.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np

from detectors.base import Detector, Finding, Kind, Severity
from detectors.baseline import Baseline
from detectors.settings import StreamStallSettings
from streams.batch import ModelBatch
from streams.events import Position

_SMALLEST = 0.001  # seconds: gaps up to this are one bin (bursts, equal timestamps)
_PER_DOUBLING = 4
_BINS = 1 + 40 * _PER_DOUBLING
_DECAY_AT = 1 << 20  # gaps counted: beyond it the histogram is halved (slow drift is followed)


class _Bar(NamedTuple):
    long_gap: float  # the `quantile` of the gaps (seconds)
    threshold: float  # the silence that counts as a stall (seconds)


def _bin(gaps: np.ndarray) -> np.ndarray:
    scaled = np.log2(np.maximum(gaps, _SMALLEST) / _SMALLEST) * _PER_DOUBLING
    return np.minimum(np.ceil(scaled).astype(np.int64), _BINS - 1)


def _upper_edge(index: int) -> float:
    return _SMALLEST * 2.0 ** (index / _PER_DOUBLING)


class StreamStallDetector(Detector):
    name = "stream_stall"
    baseline = Baseline.NONE  # each stream's own gaps

    def __init__(self, model: str, settings: StreamStallSettings) -> None:
        self.model = model
        self.settings = settings
        self.counts = np.zeros(_BINS, dtype=np.float64)
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.last_position: Position | None = None
        self.stalled = False  # a stall was reported and the stream has not come back yet

    # -- what is usual -------------------------------------------------------------------

    def threshold(self) -> float | None:
        """The silence that counts as a stall, or None while still calibrating."""
        bar = self._bar()
        return None if bar is None else bar.threshold

    def _bar(self) -> _Bar | None:
        """The stream's long gap and stall threshold, or None while calibrating."""
        s = self.settings
        # Gaps between distinct times only: a burst's events (one time, or within 1 ms) say
        # nothing of how long the stream is quiet between bursts.
        spaced = self.counts[1:]
        total = float(spaced.sum())
        if self.first_ts is None or self.last_ts is None:
            return None
        if total < s.min_gaps or self.last_ts - self.first_ts < s.min_span:
            return None
        index = 1 + int(np.searchsorted(np.cumsum(spaced), s.quantile * total))
        long_gap = _upper_edge(index)
        # The gaps beyond the quantile, each at its bin's geometric middle: their mean excess
        # is the scale of the quiet hours' gaps (exponential beyond it for arrivals at random).
        # Without the longest: a stall seen once does not raise the bar.
        beyond = self.counts[index + 1 :].copy()
        if (seen := np.flatnonzero(beyond)).size:
            beyond[seen[-1]] -= min(1.0, beyond[seen[-1]])
        middles = _SMALLEST * 2.0 ** ((np.arange(index + 1, _BINS) - 0.5) / _PER_DOUBLING)
        excess = float(beyond @ (middles - long_gap)) / max(float(beyond.sum()), 1.0)
        # The longest gap seen at least twice: the highest bin with two gaps at or above it.
        from_top = np.cumsum(spaced[::-1])
        recurring = 1 + len(spaced) - 1 - int(np.searchsorted(from_top, 2.0))
        threshold = max(
            s.min_stall,
            s.factor * long_gap,
            long_gap + s.tail_margin * excess,
            s.recurring_margin * _upper_edge(max(recurring, 1)),
        )
        return _Bar(long_gap, threshold)

    # -- event time ----------------------------------------------------------------------

    def update(self, batch: ModelBatch) -> list[Finding]:
        if not self.settings.enabled or len(batch) == 0:
            return []
        ts = np.asarray(batch.ts, dtype=np.float64)
        start = ts[0] if self.last_ts is None else self.last_ts
        if self.first_ts is None:
            self.first_ts = float(ts[0])
        latest = np.maximum.accumulate(np.concatenate(([start], ts)))
        gaps = np.maximum(ts - latest[:-1], 0.0)  # a late event opens no gap
        bar = self._bar()
        findings: list[Finding] = []
        if self.stalled:  # reported on the wall clock: the first event back resolves it
            findings.append(self._resumed(batch, 0, float(gaps[0])))
            self.stalled = False
            gaps[0] = 0.0  # already reported
        if bar is not None:
            for index in np.flatnonzero(gaps > bar.threshold).tolist():
                gap = float(gaps[index])
                findings.append(
                    self._stalled(
                        float(latest[index]) + bar.threshold, batch.position(index), gap, bar
                    )
                )
                findings.append(self._resumed(batch, index, gap))
        self._count(gaps if self.last_ts is not None else gaps[1:])
        self.last_ts = float(latest[-1])
        self.last_position = batch.position(int(np.argmax(ts)))
        return findings

    def _count(self, gaps: np.ndarray) -> None:
        self.counts += np.bincount(_bin(gaps), minlength=_BINS)
        if self.counts.sum() > _DECAY_AT:
            self.counts *= 0.5

    # -- the wall clock (the daemon) -------------------------------------------------------

    def silent_for(self, seconds: float) -> Finding | None:
        """A stall finding if the stream has been silent `seconds` (measured by the caller on
        the wall clock since its last event arrived) beyond its threshold, once."""
        bar = self._bar()
        if (
            not self.settings.enabled
            or self.stalled
            or bar is None
            or self.last_ts is None
            or self.last_position is None
            or seconds <= bar.threshold
        ):
            return None
        self.stalled = True
        return self._stalled(
            self.last_ts + bar.threshold, self.last_position, seconds, bar, ongoing=True
        )

    # -- findings ----------------------------------------------------------------------------

    def _stalled(
        self,
        ts: float,
        position: Position,
        gap: float,
        bar: _Bar,
        ongoing: bool = False,
    ) -> Finding:
        long_gap, threshold = bar
        what = "no events for" if ongoing else "a gap of"
        return Finding(
            model=self.model,
            kind=Kind.STREAM_STALLED,
            subject=self.model,
            severity=Severity.WARNING,
            ts=ts,
            position=position,
            detector=self.name,
            statistic="silence_seconds" if ongoing else "gap_seconds",
            value=gap,
            threshold=threshold,
            effect_size=gap / long_gap,
            support=int(self.counts.sum()),
            title=f"{self.model}: stream stalled, {what} {_human(gap)} "
            f"(its long gaps are {_human(long_gap)}, the threshold {_human(threshold)})",
            details={
                "gap_seconds": gap,
                "usual_long_gap_seconds": long_gap,
                "threshold_seconds": threshold,
                "ongoing": ongoing,
            },
        )

    def _resumed(self, batch: ModelBatch, index: int, gap: float) -> Finding:
        ts = float(batch.ts[index])
        return Finding(
            model=self.model,
            kind=Kind.STREAM_STALLED,
            subject=self.model,
            severity=Severity.INFO,
            ts=ts,
            position=batch.position(index),
            detector=self.name,
            statistic="resumed",
            value=gap,
            threshold=0.0,
            effect_size=None,
            support=int(self.counts.sum()),
            title=f"{self.model}: events returned after {_human(gap)}",
            details={"gap_seconds": gap},
            resolves=True,
        )

    # -- checkpoints: plain data only --------------------------------------------------------

    state_version: ClassVar[int] = 1

    def state(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "last_position": None if self.last_position is None else list(self.last_position),
            "stalled": self.stalled,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.counts = np.asarray(state["counts"], dtype=np.float64)
        self.first_ts = state["first_ts"]
        self.last_ts = state["last_ts"]
        position = state["last_position"]
        self.last_position = None if position is None else Position(*position)
        self.stalled = bool(state["stalled"])


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{seconds:.3g}s"
