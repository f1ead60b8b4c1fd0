"""Detectors: a columnar `ModelBatch` in, findings out, state saved as data (`base`).

Which detectors watch a model, with which settings, is decided in `registry`; the shared
statistics live in `stats`, the accuracy detector in `accuracy`, the suspicious-client detector
in `clients`. No I/O, no agent, no storage.
"""
