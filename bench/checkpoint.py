"""Checkpoint size and time after a replay of the throughput stream (bench/throughput.py).

    .venv/bin/python bench/checkpoint.py [--events 100000] [--rounds 3]

Replays the stream through a `Pipeline` on a fresh SQLite database with the default
detectors, then measures, `--rounds` times each: encoding every monitor's snapshot, a whole
`Pipeline.checkpoint` (snapshot + transaction), and `restore_partition` in a new pipeline.
Prints the bytes stored per model and the medians as JSON. Run it with another checkout on
PYTHONPATH (e.g. `git archive` of an older commit) to compare layouts on the same stream.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from throughput import generate  # noqa: E402

from agent.config import load_settings  # noqa: E402
from agent.runtime.checkpoints import snapshot as snapshot_of  # noqa: E402
from agent.runtime.pipeline import Pipeline  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.queries import Repository  # noqa: E402
from streams.events import Position, RawRecord  # noqa: E402

BATCH = 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stream = Path(tmp) / "stream.jsonl"
        generate(stream, args.events, args.clients)
        lines = stream.read_bytes().splitlines()
        db = Database(f"sqlite:///{tmp}/bench.db")
        db.upgrade()
        settings = load_settings(None)
        pipeline = Pipeline(settings, db, consumer="bench")
        source = str(stream)
        for start in range(0, len(lines), BATCH):
            chunk = lines[start : start + BATCH]
            pipeline.process(
                [RawRecord(line, Position(source, 0, start + i)) for i, line in enumerate(chunk)]
            )
        monitors = pipeline.monitors[(source, 0)]
        snapshot, checkpoint, restore = [], [], []
        for _ in range(args.rounds):
            started = time.perf_counter()
            blobs = [snapshot_of(m, pipeline.collectors.get(name)) for name, m in monitors.items()]
            snapshot.append(time.perf_counter() - started)
            started = time.perf_counter()
            pipeline.checkpoint({(source, 0): len(lines)})
            checkpoint.append(time.perf_counter() - started)
            fresh = Pipeline(settings, db, consumer="bench")
            started = time.perf_counter()
            fresh.restore_partition(source, 0)
            restore.append(time.perf_counter() - started)
        rows = Repository(db).load_checkpoints("bench", source, 0)
        print(
            json.dumps(
                {
                    "events": args.events,
                    "lines": len(lines),
                    "bytes": {model: len(row.state) for model, row in rows.items()},
                    "snapshot_bytes": sum(map(len, blobs)),
                    "snapshot_s": round(statistics.median(snapshot), 4),
                    "checkpoint_s": round(statistics.median(checkpoint), 4),
                    "restore_s": round(statistics.median(restore), 4),
                }
            )
        )


if __name__ == "__main__":
    main()
