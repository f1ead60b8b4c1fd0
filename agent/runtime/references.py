"""The one owner of each model's reference in the running agent.

A model's stored reference is looked up once per process (then cached) and handed to every
monitor of the model; with none stored, the first `detectors.reference_size` predictions are
collected, stored as the reference (so restarts, other processes and reports reuse them) and
handed over. Detectors that take a reference see only the events after it.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.config import Settings
from agent.reference import ActiveReference, decode_learned_until, encode_learned_until
from agent.samples import ReferenceCollector, Sample
from storage.db import Database
from storage.models import Reference
from storage.unit_of_work import ReferenceInput, run
from streams.batch import ModelBatch

# Told when a model's reference becomes known while the stream runs (learned, or learned by
# another process meanwhile): every monitor of the model must take it.
OnReference = Callable[[str, ActiveReference], None]
# Asked, before a learned reference is stored, which callers of its events the client
# detectors flag in the learning window against it: (model, the collection as a batch, each of
# its events' caller, the batch's events of the learning window) -> callers to leave out.
Suspects = Callable[[str, ModelBatch, list[str | None], ModelBatch], set[str]]


class References:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        # Per model: the reference in force (None: none stored, being learned by a collector).
        self.in_force: dict[str, ActiveReference | None] = {}
        self.collectors: dict[str, ReferenceCollector] = {}

    def stored(self, model: str, version: str | None) -> ActiveReference | None:
        """The model's reference in force, read from the database once per process."""
        if model not in self.in_force:
            row = run(self.db, lambda uow: uow.references.find(model, version))
            self.in_force[model] = None if row is None else _active(row)
        return self.in_force[model]

    def judged_from(
        self, model: str, batch: ModelBatch, on_reference: OnReference, suspects: Suspects
    ) -> int:
        """Index of the batch's first event that reference-based detectors should judge;
        collects the reference while there is none and, once complete, stores it without
        the events of the callers `suspects` names (an attacker from the first query, found
        by the client detector in the learning window, does not widen the picture of normal
        every drift detector judges against)."""
        reference = self.in_force.get(model)
        if reference is not None:
            return reference.judged_from(batch)
        collector = self.collectors.get(model)
        if collector is None:
            collector = self.collectors[model] = ReferenceCollector(
                self.settings.detectors_for(model).reference_size
            )
        taken = collector.add(batch)
        if not collector.complete:
            return len(batch)
        candidate = collector.sample().to_batch(model, clients=collector.clients)
        reference = self._store_learned(
            model, collector, suspects(model, candidate, collector.clients, batch.slice(0, taken))
        )
        del self.collectors[model]
        self.in_force[model] = reference
        on_reference(model, reference)
        # Another process may have learned the reference in force: skip what it took too.
        return max(taken, reference.judged_from(batch))

    def resume(self, model: str, collector: ReferenceCollector) -> None:
        """Resumes a collection checkpointed while the reference was being learned."""
        self.collectors[model] = collector
        self.in_force[model] = None

    def release(self, model: str) -> None:
        """This process reads none of the model's partitions any more (they moved to other
        processes). A reference still being learned moved with their checkpoints, and their new
        owner may store it: the collection here is dropped, and whether a reference is stored
        is asked again when a partition comes back. (Kept, a stale collection would take the
        returning partition's events for learning once more, unjudged, and then reset every
        detector of the model.)"""
        if model in self.in_force and self.in_force[model] is None:
            del self.in_force[model]
            self.collectors.pop(model, None)

    def _store_learned(
        self, model: str, collector: ReferenceCollector, left_out: set[str]
    ) -> ActiveReference:
        sample = collector.sample_without(left_out)
        versions = {v for v in sample.model_versions if v is not None}
        ref = ReferenceInput(
            model=model,
            model_version=versions.pop() if len(versions) == 1 else "",
            origin="learned",
            rows=len(sample),
            source_rows=collector.count,
            summary=sample.summary(),
            sample=sample.encode(),
            learned_until=encode_learned_until(collector.taken_until),
        )
        return _active(run(self.db, lambda uow: uow.references.add_learned(ref)))


def _active(row: Reference) -> ActiveReference:
    return ActiveReference(
        id=row.id,
        model=row.model,
        model_version=row.model_version,
        sample=Sample.decode(row.sample),
        learned_until=decode_learned_until(row.learned_until),
    )
