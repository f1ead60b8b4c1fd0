"""Throughput and memory of the hot path, against baselines measured in the same run.

    .venv/bin/python bench/throughput.py [--events 200000] [--memory-events 1000000] [--rounds 3]

Generates a realistic stream (20 features: 14 numeric, 6 categorical; class scores; 200
clients; labels for half the predictions) and measures, each in its own process pinned to
one core:
  (a) the baseline: reading the file and decoding every line with orjson in a plain loop;
  (b) `bulwark replay` with all default detectors (its own events/s, start-up excluded);
  (c) with a broker (BULWARK_BENCH_KAFKA_BOOTSTRAP, or one started like the tests do, pinned
      to CPU 1), the stream produced to a fresh 4-partition topic keyed by id:
      a plain kafka-python consumer reading the topic, and the daemon consuming it;
and prints events/s, the ratios (b/a, daemon/consumer) and peak RSS; then the RSS after
`--memory-events` events with 100,000 distinct clients. Rates on a shared machine move from
run to run, so each pair (a then b, consumer then daemon) is measured back to back
`--rounds` times and the medians, ranges and the median of the rounds' ratios are printed.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
START_TS = 1_767_225_600.0


def generate(path: Path, events: int, clients: int, seed: int = 1) -> int:
    """Writes `events` predictions (and a label for every other one); returns line count."""
    rng = np.random.default_rng(seed)
    lines = 0
    with path.open("wb") as out:
        chunk = 10_000
        for start in range(0, events, chunk):
            n = min(chunk, events - start)
            numeric = rng.normal(size=(n, 14)) * [1, 2, 5, 10, 0.5, 3, 7, 1, 1, 2, 4, 8, 1, 1]
            numeric[:, 3] = rng.lognormal(3, 0.8, n)
            categorical = rng.integers(0, 8, size=(n, 6))
            p1 = rng.random(n)
            who = rng.integers(0, clients, n)
            buffer = []
            for i in range(n):
                k = start + i
                features = {f"n{j}": round(float(numeric[i, j]), 4) for j in range(14)}
                features.update({f"c{j}": f"v{categorical[i, j]}" for j in range(6)})
                buffer.append(
                    orjson.dumps(
                        {
                            "type": "prediction",
                            "model": "bench",
                            "model_version": "1",
                            "id": f"p{k}",
                            "ts": START_TS + k * 0.1,
                            "client": f"client-{who[i]}",
                            "features": features,
                            "prediction": int(p1[i] > 0.5),
                            "scores": {
                                "0": round(1 - float(p1[i]), 4),
                                "1": round(float(p1[i]), 4),
                            },
                        }
                    )
                )
                if k % 2 == 0:
                    buffer.append(
                        orjson.dumps(
                            {
                                "type": "label",
                                "model": "bench",
                                "id": f"p{k}",
                                "label": int(rng.random() < p1[i]),
                                "ts": START_TS + k * 0.1 + 60,
                            }
                        )
                    )
            out.write(b"\n".join(buffer) + b"\n")
            lines += len(buffer)
    return lines


BASELINE = """
import sys, time, orjson
start = time.perf_counter(); n = 0
with open(sys.argv[1], "rb") as f:
    for line in f:
        orjson.loads(line); n += 1
print(f"{n / (time.perf_counter() - start):.1f}")
"""


# A plain kafka-python consumer: the most a Python consumer of this topic can do.
PLAIN_CONSUMER = """
import sys, time
from kafka import KafkaConsumer
bootstrap, topic, total, batch, group = sys.argv[1:6]
total, batch = int(total), int(batch)
consumer = KafkaConsumer(topic, bootstrap_servers=[bootstrap], api_version=(0, 9),
                         group_id=group, auto_offset_reset="earliest",
                         enable_auto_commit=False, max_poll_records=batch)
seen, started = 0, None
while seen < total:
    for messages in consumer.poll(timeout_ms=500).values():
        if started is None:
            started = time.perf_counter()
        seen += len(messages)
print(f"{seen / (time.perf_counter() - started):.1f}")
consumer.close()
"""

# The daemon itself (agent.runtime.daemon.Daemon, as `bulwark run` builds it), timed from its first
# polled batch until it has processed every record; then stopped as SIGTERM would. Start-up
# is tuned as the CLI tunes it.
DAEMON = """
import sys, time
from agent import tune_garbage_collector
from agent.config import Settings
from agent.runtime.daemon import Daemon
from storage.db import Database
tune_garbage_collector()
bootstrap, topic, total, batch, group, url = sys.argv[1:7]
settings = Settings.model_validate({
    "database_url": url, "batch_size": int(batch),
    "kafka": {"bootstrap_servers": [bootstrap], "topics": [topic], "group_id": group,
              "api_version": "0.9"},
})
database = Database(url)
database.upgrade()
daemon = Daemon(settings, database)
process, started = daemon._process, []
def timed(polled):
    if not started:
        started.append(time.perf_counter())
    process(polled)
    if daemon.pipeline.stats.records >= int(total):
        started.append(time.perf_counter())
        daemon.stopping.set()
daemon._process = timed
daemon.run()
print(f"{daemon.pipeline.stats.records / (started[1] - started[0]):.1f}")
"""


def run_pinned(args: list[str], env: dict[str, str] | None = None) -> tuple[str, float]:
    """Runs a command pinned to CPU 0; returns (stdout, its peak RSS in MB)."""
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            preexec_fn=lambda: os.sched_setaffinity(0, {0}),
        )
        assert process.stdout is not None
        stdout = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            sys.exit(f"benchmark step failed: {' '.join(args)}\n{errors.read()}")
    return stdout, usage.ru_maxrss / 1024


def baseline_rate(path: Path) -> tuple[float, float]:
    out, rss = run_pinned([sys.executable, "-c", BASELINE, str(path)])
    return float(out.strip()), rss


def replay_rate(path: Path, db: Path) -> tuple[float, float]:
    out, rss = run_pinned(
        [sys.executable, "-m", "agent", "replay", str(path), "--db", f"sqlite:///{db}"]
    )
    match = re.search(r"\(([\d,]+) events/s\)", out)
    if not match:
        sys.exit(f"no throughput in replay output:\n{out}")
    return float(match[1].replace(",", "")), rss


@contextmanager
def kafka_broker() -> Iterator[str]:
    """The broker named by BULWARK_BENCH_KAFKA_BOOTSTRAP, or a throw-away one started as the
    tests start theirs (pinned to CPU 1, away from the measured process on CPU 0)."""
    external = os.environ.get("BULWARK_BENCH_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    sys.path.insert(0, str(ROOT))
    from tests.kafka_broker import KafkaBroker, kafka_home

    broker = KafkaBroker(kafka_home(), partitions=4)
    broker.start()
    try:
        for process in broker.processes:
            os.sched_setaffinity(process.pid, {1 % (os.cpu_count() or 1)})
        yield broker.bootstrap
    finally:
        broker.stop()


def kafka_rates(
    stream: Path, lines: int, batch: int, work: Path, rounds: int
) -> list[tuple[float, float, float]]:
    """Per round, (plain consumer records/s, daemon records/s, daemon peak RSS MB), the two
    back to back on one fresh topic, each round with groups (and a database) of its own."""
    sys.path.insert(0, str(ROOT))
    from kafka import KafkaProducer

    from streams.kafka import produce_lines

    results = []
    with kafka_broker() as bootstrap:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        producer = KafkaProducer(bootstrap_servers=[bootstrap], api_version=(0, 9), linger_ms=20)
        with stream.open("rb") as handle:
            # Keyed by id: a prediction and its label share a partition, spread over four.
            sent = produce_lines(producer, topic, handle, key_field="id")
        producer.close()
        assert sent == lines, (sent, lines)
        args = [bootstrap, topic, str(lines), str(batch)]
        for round_ in range(rounds):
            plain, _ = run_pinned([sys.executable, "-c", PLAIN_CONSUMER, *args, f"plain-{round_}"])
            url = f"sqlite:///{work / f'daemon-{round_}.db'}"
            daemon, rss = run_pinned([sys.executable, "-c", DAEMON, *args, f"daemon-{round_}", url])
            results.append((float(plain.strip()), float(daemon.strip().splitlines()[-1]), rss))
    return results


def spread(values: list[float]) -> str:
    """The median, and the range when there are several rounds."""
    middle = f"{statistics.median(values):>10,.0f}"
    if len(values) == 1:
        return middle
    return f"{middle} ({min(values):,.0f}-{max(values):,.0f})"


def spread_ratio(values: list[float]) -> str:
    middle = f"{statistics.median(values):.2f}"
    if len(values) == 1:
        return middle
    return f"{middle} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--memory-events", type=int, default=1_000_000)
    parser.add_argument("--no-kafka", action="store_true", help="skip the Kafka part (c)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="measurements of each pair (rates move run to run)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stream = work / "stream.jsonl"
        lines = generate(stream, args.events, clients=200)
        print(
            f"stream: {args.events:,} predictions + labels = {lines:,} lines, "
            f"{stream.stat().st_size / 1e6:.0f} MB, 20 features, 200 clients"
        )
        print(f"machine: {os.cpu_count()} cores; each measured process pinned to CPU 0")
        print(f"rounds: {args.rounds}, each measuring its pair back to back: median (range)")
        base, replay, rss = [], [], []
        for round_ in range(args.rounds):
            base.append(baseline_rate(stream)[0])
            rate, peak = replay_rate(stream, work / f"replay-{round_}.db")
            replay.append(rate)
            rss.append(peak)
        ratios = [b / a for a, b in zip(base, replay, strict=True)]
        print(f"(a) orjson decode loop    {spread(base)} lines/s")
        print(f"(b) bulwark replay        {spread(replay)} events/s  peak RSS {max(rss):.0f} MB")
        print(f"    ratio b/a = {spread_ratio(ratios)}   (target >= 0.25, and >= 50,000 events/s)")
        if not args.no_kafka:
            results = kafka_rates(stream, lines, 2000, work, args.rounds)
            plain = [r[0] for r in results]
            daemon = [r[1] for r in results]
            print(f"(c) kafka-python consumer {spread(plain)} records/s")
            print(
                f"    bulwark run (daemon)  {spread(daemon)} records/s  "
                f"peak RSS {max(r[2] for r in results):.0f} MB"
            )
            ratios = [d / p for p, d, _ in results]
            print(f"    ratio daemon/consumer = {spread_ratio(ratios)}   (target >= 0.50)")
        if args.memory_events:
            big = work / "memory.jsonl"
            generate(big, args.memory_events, clients=100_000, seed=2)
            stream.unlink()
            _, rss = replay_rate(big, work / "memory.db")
            print(
                f"memory: replay of {args.memory_events:,} predictions from 100,000 clients: "
                f"peak RSS {rss:.0f} MB (target < 500 MB)"
            )


if __name__ == "__main__":
    main()
