"""Bulwark's agent: pipeline, daemon, CLI, incidents, alerts and HTTP API."""

import gc
import os

# One BLAS thread per process. The detectors' matrix products are small (per-client
# micro-batches): OpenBLAS's worker threads cost more CPU than they save there (twice the
# query-pattern detector's CPU time, measured) and take the core of the process next door.
# Bulwark scales out by processes in a consumer group, not by threads. This must be set
# before numpy loads; a value the user exported wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the hot path. A batch allocates many short-lived
    containers (decoded records, columns) while the process holds much long-lived state
    (libraries, pending label joins, client buffers); with CPython's defaults the collector's
    full passes over that heap cost about 10 us per record, more than any detector (measured
    on bench/throughput.py's stream). Freezing what start-up loaded and collecting the young
    generation every 50,000 net allocations instead of 700 brings that to about 0.4 us (at
    10,000 it was 1 us: a 2,000-record batch allocates some 10,000 containers that live
    until the batch ends, so every young collection walked a whole batch); cycles are still
    collected."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
