"""Streams: records in (`files`, `kafka`), validated events out (`decode`, `events`,
`watermark`), as columnar batches per model (`batch`). Imports no detectors, agent or storage.
"""
