"""Judging against a reference: the one way a detector gets it, learned or given.

A reference is a `ModelBatch` of predictions deemed normal. By default it is the model's first
`reference_size` events on the partition; a stored reference (training data, a chosen day)
replaces it through `set_reference`. Either way the detector builds its monitors once, from
the whole reference, in `set_reference`.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from detectors.base import Detector, Finding
from streams.batch import ModelBatch, concat_batches

MIN_DISTINCT_VALUES = 10  # fewer distinct reference values: a code, not a measurement


def is_continuous(values: np.ndarray) -> bool:
    """A numeric reference sample worth ranking (NormalScores) rather than counting."""
    return len(np.unique(values)) >= MIN_DISTINCT_VALUES


class ReferenceDetector(Detector):
    """A detector that learns its reference from the first events unless one is set."""

    def __init__(self, reference_size: int) -> None:
        self.reference_size = reference_size
        self.pending: list[ModelBatch] = []
        self.pending_count = 0
        self.ready = False

    def update(self, batch: ModelBatch) -> list[Finding]:
        if not self.ready:
            take = min(len(batch), self.reference_size - self.pending_count)
            if take > 0:
                self.pending.append(batch.slice(0, take))
                self.pending_count += take
            if self.pending_count < self.reference_size:
                return []
            self.set_reference(concat_batches(self.pending))
            if take == len(batch):
                return []
            batch = batch.slice(take, len(batch))
        return self.monitor(batch)

    def set_reference(self, reference: ModelBatch) -> None:
        self.pending, self.pending_count = [], 0
        self.build(reference)
        self.ready = True

    @abstractmethod
    def build(self, reference: ModelBatch) -> None:
        """(Re)builds the monitors from a complete reference."""

    @abstractmethod
    def monitor(self, batch: ModelBatch) -> list[Finding]:
        """Judges a batch that comes after the reference."""


def numeric_values(batch: ModelBatch, name: str) -> np.ndarray:
    """A feature's non-missing numbers (empty when the batch has none)."""
    column = batch.numeric.get(name)
    return np.empty(0) if column is None else column[~np.isnan(column)]


def category_values(batch: ModelBatch, name: str) -> np.ndarray:
    """A feature's non-missing strings and booleans (empty when the batch has none)."""
    column = batch.categorical.get(name)
    return np.empty(0, dtype=object) if column is None else column[~np.equal(column, None)]


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
