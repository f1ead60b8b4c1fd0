"""Feeding a finite source (file, standard input, the demo) through the pipeline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from agent.runtime.pipeline import Pipeline
from detectors.accuracy import AccuracyDetector
from streams.events import Position, RawRecord

REPLAY_CONSUMER = "replay"


@dataclass(frozen=True, slots=True)
class ReplayResult:
    events: int  # records read, dead letters included
    dead_letters: int
    findings: int
    incidents_opened: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def replay_batches(
    pipeline: Pipeline,
    batches: Iterable[tuple[list[RawRecord], int]],
    on_progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Processes every batch, then checkpoints each partition's detector state."""
    started = time.perf_counter()
    next_offsets: dict[tuple[str, int], int] = {}
    for records, consumed in batches:
        pipeline.process(records)
        for record in records:
            p = record.position
            next_offsets[p.source, p.partition] = p.offset + 1
        if on_progress is not None:
            on_progress(consumed)
    if next_offsets:
        pipeline.checkpoint(next_offsets)
    stats = pipeline.stats
    return ReplayResult(
        events=stats.records,
        dead_letters=stats.dead_letters,
        findings=stats.findings,
        incidents_opened=pipeline.incidents_opened,
        seconds=time.perf_counter() - started,
    )


DEAD_LETTER_WARNING_SHARE = 0.5  # above this share of a run's records: warn (and fail --strict)


def mostly_dead_letters(result: ReplayResult) -> bool:
    """More than half the records could not be decoded: likely not a file of events at all
    (a CSV, a binary file, another schema)."""
    return result.dead_letters > DEAD_LETTER_WARNING_SHARE * result.events  # events: records


@dataclass(frozen=True, slots=True)
class LabelWait:
    """A model whose accuracy test has not started: it learns the reference level from its
    first `needed` labelled predictions (per partition) and has `have` of them."""

    model: str
    have: int
    needed: int
    partitions: int


def waiting_for_labels(pipeline: Pipeline) -> list[LabelWait]:
    """The models whose accuracy monitoring still waits for labels, from the detectors'
    live state (summed over the partitions that wait)."""
    waits: dict[str, LabelWait] = {}
    for monitors in pipeline.monitors.values():
        for model, monitor in monitors.items():
            for detector in monitor.detectors:
                if not isinstance(detector, AccuracyDetector) or detector.reference is not None:
                    continue
                before = waits.get(model)
                waits[model] = LabelWait(
                    model,
                    detector.ref_count + (before.have if before else 0),
                    detector.settings.reference_size,
                    1 + (before.partitions if before else 0),
                )
    return [waits[m] for m in sorted(waits)]


def memory_batches(
    lines: list[bytes], name: str, batch_size: int
) -> Iterator[tuple[list[RawRecord], int]]:
    """Batches of in-memory lines; progress is counted in lines."""
    for start in range(0, len(lines), batch_size):
        chunk = lines[start : start + batch_size]
        records = [RawRecord(line, Position(name, 0, start + i)) for i, line in enumerate(chunk)]
        yield records, start + len(chunk)
