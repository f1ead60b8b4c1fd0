"""Feeding a finite source (file, standard input, the demo) through the pipeline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from agent.pipeline import Pipeline
from streams.events import Position, RawRecord

REPLAY_CONSUMER = "replay"


@dataclass(frozen=True, slots=True)
class ReplayResult:
    events: int
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


def memory_batches(
    lines: list[bytes], name: str, batch_size: int
) -> Iterator[tuple[list[RawRecord], int]]:
    """Batches of in-memory lines; progress is counted in lines."""
    for start in range(0, len(lines), batch_size):
        chunk = lines[start : start + batch_size]
        records = [RawRecord(line, Position(name, 0, start + i)) for i, line in enumerate(chunk)]
        yield records, start + len(chunk)
