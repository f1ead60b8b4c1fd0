"""Bulwark's agent: pipeline, daemon, CLI, incidents, alerts and HTTP API."""

import os

# One BLAS thread per process. The detectors' matrix products are small (per-client
# micro-batches): OpenBLAS's worker threads cost more CPU than they save there (twice the
# query-pattern detector's CPU time, measured) and take the core of the process next door.
# Bulwark scales out by processes in a consumer group, not by threads. This must be set
# before numpy loads; a value the user exported wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
