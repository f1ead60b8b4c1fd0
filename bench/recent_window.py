"""Hot-path cost of keeping each model's recent predictions (agent.samples.RecentWindow).

Prints the amortised cost per event of `RecentWindow.add` on realistic batches, and of
storing the window at a checkpoint (decoding its records again, then encoding the sample).
Run: PYTHONPATH=. python bench/recent_window.py
"""

from __future__ import annotations

import time

from agent.samples import RecentWindow
from streams.batch import split_batch
from streams.decode import decode_batch
from streams.events import Position, RawRecord
from tests.refdata import events


def main() -> None:
    lines = events(20_000, seed=1)
    batches = []
    for start in range(0, len(lines), 2000):
        records = [
            RawRecord(line, Position("bench", 0, start + i))
            for i, line in enumerate(lines[start : start + 2000])
        ]
        batches.extend(split_batch(decode_batch(records)).values())
    window = RecentWindow(capacity=5000)
    rounds = 50
    started = time.perf_counter()
    for _ in range(rounds):
        for batch in batches:
            window.add(batch)
    per_event = (time.perf_counter() - started) / (rounds * len(lines))
    started = time.perf_counter()
    blob = window.sample().encode()
    encode = time.perf_counter() - started
    print(f"RecentWindow.add: {per_event * 1e9:.0f} ns per event (batches of 2000)")
    print(f"checkpoint decode + encode of 5000 events: {encode * 1e3:.1f} ms, {len(blob):,} bytes")


if __name__ == "__main__":
    main()
