"""What a detector judges against, and how it comes by it: the one owner of "use the stored
reference, or learn the model's first N events".

Every detector declares its `baseline` (a class attribute; `takes_reference` reads it):

- `Baseline.REFERENCE`: it judges events against the model's reference, a batch of
  predictions deemed normal. In the pipeline that is the reference in force: the stored one,
  or else the model's first `reference_size` events, which the pipeline learns, stores and
  hands over the same way. It comes through `set_reference`, which replaces everything the
  detector built from an earlier reference, and the detector is then fed only the events
  after it. A detector never handed one (standalone: tests, benches) learns the first
  `reference_size` events it is fed, collected here: whole (`FirstEvents`) or, for the input
  profile, their feature columns (`ReferenceSample`).
- `Baseline.OWN`: it learns its own level from what a reference of predictions cannot give
  (accuracy: from the first labelled events).
- `Baseline.NONE`: it judges a stream by its own history alone (stream stall).

Nothing inspects which methods a detector overrides: the declaration is the contract, and
tests/test_detector_conformance.py checks that a detector declaring a reference uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from streams.batch import NO_CLIENT, ModelBatch, concat_batches, object_array

if TYPE_CHECKING:
    from detectors.base import Detector


class Baseline(StrEnum):
    NONE = "none"
    REFERENCE = "reference"
    OWN = "own"


def takes_reference(detector: Detector) -> bool:
    """Whether the pipeline hands `detector` the model's reference and then feeds it only the
    events after the reference."""
    return detector.baseline is Baseline.REFERENCE


# Of a reference learned from the first events, a client gives at least this share (when the
# mean client's share is smaller): a few early clients each fill a small reference normally.
CLIENT_SHARE_FLOOR = 0.01


def client_voices(owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One voice per client among a reference's events (`owners`: each event's client id,
    `NO_CLIENT` for none; an event without a client is a voice of its own): per event, the
    index of its voice, and each voice's events. What a few early clients' capped share of
    a learned reference must not decide by weight of events: its lattice, its typical rates."""
    key = np.where(owners == NO_CLIENT, -1 - np.arange(len(owners)), owners)
    _, voice, sizes = np.unique(key, return_inverse=True, return_counts=True)
    return voice, sizes


def capped_per_client(
    clients: list[str | None], have: int, size: int, taken: dict[str, int]
) -> tuple[list[int], int]:
    """Which events of a stream's first ones a reference of `size` takes, each client giving
    at most twice the mean client's share of it (and at least `CLIENT_SHARE_FLOOR`), so
    that a client flooding the first events (an attacker from the first query) cannot make
    its queries the picture of normal; events without a client are always taken.

    `clients` are the next events' callers, `have` the events taken before, `taken` the
    events taken so far per client (`""`: no client; updated in place). Returns the indices
    taken and where in `clients` the reference became full (`len(clients)` if it did not):
    the events before that point are the learning window's, taken or passed over."""
    floor = max(1, int(size * CLIENT_SHARE_FLOOR))
    chosen: list[int] = []
    for i, client in enumerate(clients):
        count = have + len(chosen)
        if count >= size:
            return chosen, i
        key = "" if client is None else client
        cap = max(floor, 2 * -(-count // max(1, len(taken))))  # twice the mean share
        if client is None or taken.get(key, 0) < cap:
            taken[key] = taken.get(key, 0) + 1
            chosen.append(i)
    return chosen, len(clients)


class FirstEvents:
    """The first `size` events of a stream, kept whole, to learn a reference from when none
    was handed over."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.parts: list[ModelBatch] = []
        self.count = 0

    def add(self, batch: ModelBatch) -> int:
        """Takes what the reference still needs from the front of `batch`; returns how many."""
        take = min(len(batch), self.size - self.count)
        if take > 0:
            self.parts.append(batch.slice(0, take))
            self.count += take
        return take

    @property
    def full(self) -> bool:
        return self.count >= self.size

    def reference(self) -> ModelBatch:
        """The events collected, as one batch (at least one must have been)."""
        return concat_batches(self.parts)

    def clear(self) -> None:
        self.parts, self.count = [], 0

    def state(self) -> dict[str, Any]:
        """Plain data: the events so far, as one batch (None before the first)."""
        return {
            "pending": self.reference().to_data() if self.parts else None,
            "pending_count": self.count,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        pending = state["pending"]
        self.parts = [] if pending is None else [ModelBatch.of_data(pending)]
        self.count = state["pending_count"]


@dataclass
class ReferenceSample:
    """Collects a model's first `size` events, column by column, to build an `InputProfile`."""

    size: int
    numeric: dict[str, list[np.ndarray]] = field(default_factory=dict)
    categorical: dict[str, list[np.ndarray]] = field(default_factory=dict)
    count: int = 0

    def add(self, batch: ModelBatch) -> int:
        """Takes what the reference still needs; returns how many events of the batch it took.
        A feature absent from some batches is padded with missing values, so columns align."""
        take = min(len(batch), self.size - self.count)
        for store, columns, missing in (
            (self.numeric, batch.numeric, np.nan),
            (self.categorical, batch.categorical, None),
        ):
            for name in store.keys() | columns.keys():
                parts = store.setdefault(name, [])
                if not parts and self.count:
                    parts.append(
                        np.full(self.count, missing, dtype=object if missing is None else float)
                    )
                column = columns.get(name)
                if column is None:
                    column = np.full(take, missing, dtype=object if missing is None else float)
                parts.append(column[:take])
        self.count += take
        return take

    def state(self) -> dict[str, Any]:
        """Plain data: each column collected so far, joined (categories as a list)."""
        numeric, categorical = self.columns()
        return {
            "size": self.size,
            "count": self.count,
            "numeric": numeric,
            "categorical": {name: column.tolist() for name, column in categorical.items()},
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> ReferenceSample:
        return cls(
            size=state["size"],
            numeric={name: [column] for name, column in state["numeric"].items()},
            categorical={name: [object_array(v)] for name, v in state["categorical"].items()},
            count=state["count"],
        )

    @property
    def full(self) -> bool:
        return self.count >= self.size

    def columns(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        numeric = {n: np.concatenate(p) for n, p in self.numeric.items()}
        categorical = {n: np.concatenate(p) for n, p in self.categorical.items()}
        return numeric, categorical
