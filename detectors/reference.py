"""Judging against a reference: the base of the drift and data-quality detectors.

A reference is a `ModelBatch` of predictions deemed normal, handed over by `set_reference` or
learned from the first events (`detectors.baseline` says which). Either way the detector
builds its monitors once, from the whole reference, in `set_reference`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Protocol

import numpy as np

from detectors.base import Detector, Finding, Kind, Verdict
from detectors.baseline import Baseline, FirstEvents
from detectors.settings import ReferenceDetectorSettings
from detectors.stats.clustering import ClientContext
from streams.batch import ModelBatch

MIN_DISTINCT_VALUES = 10  # fewer distinct reference values: a code, not a measurement
# A feature mostly one value (a count that is usually 0) needs this many reference values
# besides that one to be ranked: they pin the rest's mass to about +-10% (1 / sqrt(100)).
MIN_BESIDES_MODE = 100


def is_continuous(values: np.ndarray) -> bool:
    """A numeric reference sample worth ranking (NormalScores) rather than counting: at least
    `MIN_DISTINCT_VALUES` distinct values and, when one value holds most of it, at least
    `MIN_BESIDES_MODE` others. With fewer, the few other values decide every block's spread,
    and their mass is known from the reference too roughly for a test that takes the
    reference as exact (on 3,000 reference values, 99% of them 0, the spread test alarmed
    on every stationary stream); the two-sample frequency test of categorical drift counts
    the reference's own sampling error."""
    _, counts = np.unique(values, return_counts=True)
    if len(counts) < MIN_DISTINCT_VALUES:
        return False
    mode = int(counts.max())
    return not (2 * mode > len(values) and len(values) - mode < MIN_BESIDES_MODE)


class ReferenceDetector(Detector):
    """A detector that learns its reference from the first events unless one is set.

    `false_alarms_per_million` is this detector's part of the model's budget (see
    `detectors.registry`); it splits it over its own tests when it builds its monitors."""

    baseline = Baseline.REFERENCE
    settings_type: ClassVar[type[ReferenceDetectorSettings]]
    configuration: ClassVar[tuple[str, ...]] = ("settings", "budget", "reference_size")

    def __init__(
        self,
        model: str,
        settings: ReferenceDetectorSettings | None = None,
        reference_size: int = 3000,
        false_alarms_per_million: float = 0.1,
    ) -> None:
        self.model = model
        self.settings = settings or self.settings_type()
        self.budget = false_alarms_per_million
        self.reference_size = reference_size
        self.first = FirstEvents(reference_size)  # learning, until a reference is set
        self.ready = False

    def update(self, batch: ModelBatch) -> list[Finding]:
        if not self.ready:
            take = self.first.add(batch)
            if not self.first.full:
                return []
            self.set_reference(self.first.reference())
            if take == len(batch):
                return []
            batch = batch.slice(take, len(batch))
        return self.monitor(batch)

    def set_reference(self, reference: ModelBatch, learned: bool = False) -> None:
        self.first.clear()
        self.build(reference)
        self.ready = True

    def state(self) -> dict[str, Any]:
        """The reference still being learned (its events so far, as one batch), or the
        monitors built from it (`built_state`)."""
        return {
            "ready": self.ready,
            **self.first.state(),
            "built": self.built_state() if self.ready else None,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.first.load_state(state)
        self.ready = state["ready"]
        if self.ready:
            self.load_built(state["built"])

    @abstractmethod
    def built_state(self) -> dict[str, Any]:
        """What `build` made and `monitor` updated since, as plain data."""

    @abstractmethod
    def load_built(self, state: dict[str, Any]) -> None:
        """Rebuilds the monitors `built_state` described."""

    @abstractmethod
    def build(self, reference: ModelBatch) -> None:
        """(Re)builds the monitors from a complete reference."""

    @abstractmethod
    def monitor(self, batch: ModelBatch) -> list[Finding]:
        """Judges a batch that comes after the reference."""


class Monitor(Protocol):
    """A test on one quantity (numeric or categorical monitor): values in, alarms out."""

    def feed(self, values: np.ndarray, clients: ClientContext | None = None) -> list[Any]: ...

    def judge(self, name: str, alarm: Any, floors: Any) -> Verdict | None: ...


def watch(
    detector: str,
    kind: Kind,
    subject: str,
    monitor: Monitor,
    floors: object,
    batch: ModelBatch,
    values: np.ndarray,
    index: np.ndarray,
    clients: ClientContext | None = None,
) -> list[Finding]:
    """Feeds a subject's values (those of the batch's events `index`, with their `clients`)
    to its monitor and returns its alarms that clear their floors, as findings at the
    alarming events."""
    findings = []
    for alarm in monitor.feed(values, clients):
        verdict = monitor.judge(subject, alarm, floors)
        if verdict is not None:
            at = int(index[alarm.index])
            findings.append(verdict.finding(detector, kind, subject, batch, at))
    return findings


def present_numbers(batch: ModelBatch, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A feature's non-missing numbers in the batch and the indices of their events (both
    empty when it has none): what a monitor is fed, and where its findings point."""
    column = batch.numeric.get(name)
    if column is None:
        return np.empty(0), np.empty(0, dtype=np.int64)
    valid = np.flatnonzero(~np.isnan(column))
    return column[valid], valid


# numpy's stubs refuse None as an operand; the ufunc compares each object with it, in C.
_NONE: Any = None


def is_none(column: np.ndarray) -> np.ndarray:
    """Per entry of an object column, whether it is missing (None)."""
    return np.equal(column, _NONE)


def numeric_values(batch: ModelBatch, name: str) -> np.ndarray:
    """A feature's non-missing numbers (empty when the batch has none)."""
    column = batch.numeric.get(name)
    return np.empty(0) if column is None else column[~np.isnan(column)]


def category_values(batch: ModelBatch, name: str) -> np.ndarray:
    """A feature's non-missing strings and booleans (empty when the batch has none)."""
    column = batch.categorical.get(name)
    return np.empty(0, dtype=object) if column is None else column[~is_none(column)]


def reference_type(reference: ModelBatch, name: str) -> str | None:
    """ "numeric" or "categorical": what most of a feature's reference values are; None when
    it has no value at all. Mixed features are judged by their majority type."""
    numbers, categories = (
        len(numeric_values(reference, name)),
        len(category_values(reference, name)),
    )
    if numbers == categories == 0:
        return None
    return "numeric" if numbers >= categories else "categorical"
