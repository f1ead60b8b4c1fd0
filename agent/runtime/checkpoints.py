"""Monitor checkpoints: a monitor's state as data (through detectors/state_codec, never a
pickle), saved with the positions it is valid for, and restored on another process.

The layout (`snapshot`): a data-only map of each detector's own snapshot, the reference its
state is built on, the model version of the events it first saw (which chose that reference)
and, while the reference is still being learned, the collection so far: resumed, not skipped,
so a restarted process judges exactly the events the first one would have.

A partition can move between processes: `Checkpoints.save` saves its state together with the
next offset of every (source, partition) that state covers, and `Checkpoints.restore` picks
it up elsewhere.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from agent.runtime.monitors import ModelMonitor, Monitors
from agent.runtime.references import References
from agent.samples import ReferenceCollector, Sample
from detectors import state_codec
from detectors.state_codec import StateError
from storage.db import Database
from storage.queries import Repository
from storage.unit_of_work import UnitOfWork, run
from streams.batch import PartitionKey, StateKeyFn

log = logging.getLogger(__name__)

MONITOR_STATE_VERSION = 1
_MONITOR_KEYS = frozenset({"version", "detectors", "reference_id", "model_version", "collector"})


def snapshot(monitor: ModelMonitor, collector: ReferenceCollector | None = None) -> bytes:
    """The monitor's state; `collector`: the model's reference collection, if still running."""
    collecting = collector if monitor.reference is None else None
    return state_codec.encode(
        {
            "version": MONITOR_STATE_VERSION,
            "detectors": {d.name: d.snapshot() for d in monitor.detectors},
            "reference_id": monitor.reference.id if monitor.reference else None,
            "model_version": monitor.model_version,
            "collector": None if collecting is None else collecting.state(),
        }
    )


def decode(data: bytes) -> dict[str, Any]:
    """A checkpoint's contents; `StateError` for anything but this data-only layout (an
    older, pickled checkpoint is refused unread)."""
    state = state_codec.decode(data)
    if not isinstance(state, dict) or state.get("version") != MONITOR_STATE_VERSION:
        raise StateError("not a monitor checkpoint of this layout")
    if not state.keys() >= _MONITOR_KEYS:
        raise StateError(f"a monitor checkpoint lacks {sorted(_MONITOR_KEYS - state.keys())}")
    return state


def restore(monitor: ModelMonitor, state: dict[str, Any]) -> ReferenceCollector | None:
    """Restores the detectors from a decoded checkpoint (`decode`); returns the reference
    collection to resume, if the state was checkpointed while the reference was still
    being learned. Raises `StateError` when the checkpoint does not fit the schema (the
    monitor must then be built afresh)."""
    try:
        snapshots: dict[str, bytes] = state["detectors"]
        collected = state["collector"]
        reference_id = state["reference_id"]
        collector = None if collected is None else ReferenceCollector.of_state(collected)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"monitor state does not fit its schema: {exc!r}") from exc
    reconfigured = [
        detector
        for detector in monitor.detectors
        if detector.name in snapshots and not detector.restore(snapshots[detector.name])
    ]
    for detector in reconfigured:
        log.warning(
            "model %s: the %s detector's settings (or state layout) changed since its "
            "checkpoint; it starts again with the new ones (what it had learned from the "
            "stream is dropped)",
            detector.model,
            detector.name,
        )
    if collector is not None:
        monitor.reference = None  # judged from where the resumed collection ends, as before
        return collector
    if monitor.reference is not None and reference_id != monitor.reference.id:
        # The state was built on another (older, or no) reference: the stored one wins.
        monitor.set_reference(monitor.reference)
    elif monitor.reference is not None:
        for detector in monitor.referenced:
            if detector in reconfigured:  # rebuilt at once from the (cached) reference batch
                monitor.hand_reference(detector)
    return None


class Checkpoints:
    """Saves and restores the monitors of whole state keys, with their source positions."""

    def __init__(
        self,
        db: Database,
        consumer: str,
        state_key: StateKeyFn,
        monitors: Monitors,
        references: References,
    ) -> None:
        self.db = db
        self.repository = Repository(db)
        self.consumer = consumer
        self.state_key = state_key
        self.monitors = monitors
        self.references = references

    def save(
        self, next_offsets: dict[PartitionKey, int], also: Callable[[UnitOfWork], None]
    ) -> None:
        """Saves, in one transaction, the detector state behind the given (source, partition)s
        and the next offset of each (a state and the positions it is valid for land together),
        the recent predictions of each model that changed since the last checkpoint, and
        whatever `also` writes."""
        covered: dict[PartitionKey, list[int]] = defaultdict(list)
        for (source, partition), offset in next_offsets.items():
            covered[self.state_key(source, partition)].append(offset)
        recent = [
            ((source, partition, model), monitor)
            for source, partition in covered
            for model, monitor in self.monitors.of_key((source, partition)).items()
            if monitor.recent.dirty
        ]
        samples = [(key, monitor.recent.sample()) for key, monitor in recent]
        collectors = self.references.collectors

        def write(uow: UnitOfWork) -> None:
            store = uow.checkpoints
            for key, offsets in covered.items():
                states = {
                    model: snapshot(monitor, collectors.get(model))
                    for model, monitor in self.monitors.of_key(key).items()
                }
                # A state shared by several topics is valid for a vector of offsets, stored
                # as positions below; the checkpoint keeps the smallest of them.
                store.save(self.consumer, *key, min(offsets), states)
            for (source, partition), offset in next_offsets.items():
                store.save_position(self.consumer, source, partition, offset)
            for (source, partition, model), sample in samples:
                if len(sample):
                    window = (min(sample.ts), max(sample.ts))
                    blob = sample.encode()
                    store.save_recent_sample(model, source, partition, len(sample), window, blob)
            also(uow)

        run(self.db, write)
        for _, monitor in recent:
            monitor.recent.dirty = False

    def restore(self, source: str, partition: int) -> int | None:
        """Loads the detector state and recent predictions (source, partition) feeds; returns
        the stored next offset of (source, partition), if any."""
        key = self.state_key(source, partition)
        rows = self.db.retrying(lambda: self.repository.load_checkpoints(self.consumer, *key))
        recent = self.db.retrying(lambda: self.repository.load_recent_samples(*key))
        models = self.monitors.reset(key)
        offsets = set()
        for model, row in rows.items():
            try:
                state = decode(row.state)
                monitor = self.monitors.get(key, model, state["model_version"])
                collector = restore(monitor, state)
            except StateError as exc:
                # Never unpickled, never half-restored: whoever can write the database must
                # not be able to run code here, nor to stop the agent.
                log.warning(
                    "model %s: checkpoint of %s partition %d not loaded (%s); its detectors "
                    "start again from the stored reference (or learn one)",
                    model,
                    *key,
                    exc,
                )
                models.pop(model, None)
                monitor, collector = self.monitors.get(key, model), None
            if collector is not None:
                # Checkpointed while the reference was being learned. If the process that
                # stopped learned it meanwhile, that reference is used: its `learned_until`
                # skips exactly the events it took. Otherwise the collection resumes.
                version = monitor.model_version
                stored = (
                    self.references.stored(model, version)
                    if model not in self.references.collectors
                    else None
                )
                if stored is not None:
                    monitor.set_reference(stored)
                else:
                    self.references.resume(model, collector)
            if model in recent:
                monitor.recent.seed(Sample.decode(recent[model].sample))
            offsets.add(row.next_offset)
        position = self.db.retrying(
            lambda: self.repository.load_position(self.consumer, source, partition)
        )
        if position is not None or key != (source, partition):
            return position
        return min(offsets) if offsets else None
