"""The batched nearest-neighbour search of the suspicious-client detector: its queries are
compared with their clients' earlier queries in padded blocks of clients (`segments`),
and each row's smallest distances are found by partitioning float bit patterns (`smallest`)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# A padded distance block's fixed cost (its numpy calls), in distance entries: a client group
# joins a block unless that adds more padding than this (`segments`).
SEGMENT_OVERHEAD = 20_000


def segments(filled: np.ndarray, sizes: np.ndarray) -> list[tuple[int, int]]:
    """Runs [start, end) of consecutive client groups (sorted by size class, then width) that
    `_nearest` computes as one padded block. A group joins the current run unless the padding
    it adds (every client of the run padded to the longest queries and fullest ring) costs
    more than starting a block of its own, whose numpy calls have a fixed cost."""
    runs = []
    start, rows_q, rows_f, padded = 0, 0, 0, 0
    # Run once per client per batch: conditional expressions rather than max() calls (~2x
    # faster with ~130 groups).
    for group, (f, q) in enumerate(zip(filled.tolist(), sizes.tolist(), strict=True)):
        own = q * (f + q)
        grown_q = q if q > rows_q else rows_q
        grown_f = f if f > rows_f else rows_f
        grown = (group - start + 1) * grown_q * (grown_f + grown_q)
        if group > start and grown - padded - own > SEGMENT_OVERHEAD:
            runs.append((start, group))
            start, grown_q, grown_f, grown = group, q, f, own
        rows_q, rows_f, padded = grown_q, grown_f, grown
    runs.append((start, len(sizes)))
    return runs


def candidates(
    flat: np.ndarray,
    stored: np.ndarray,
    size: int,
    filled: int,
    ring_base: np.ndarray,
    batch_base: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    """The vectors of candidate columns `cols` of a padded distance block: column c < `filled`
    is entry c of the ring whose first row in `flat` is `ring_base`, a later one is row
    `batch_base + c` of this batch's `stored` queries. A fresh array (callers overwrite it)."""
    vectors = np.take(flat, ring_base + np.minimum(cols, size - 1), axis=0)
    in_batch = cols >= filled
    if in_batch.any():
        rows = np.minimum(batch_base + cols, len(stored) - 1)
        vectors[in_batch] = stored[rows[in_batch]]
    return vectors


@lru_cache(maxsize=64)
def not_earlier_cached(m: int) -> np.ndarray:
    return np.triu(np.full((m, m), np.inf, dtype=np.float32))


def not_earlier(m: int) -> np.ndarray:
    """+inf where query j of a batch is not earlier than query i (j >= i), else 0."""
    return not_earlier_cached(m) if m <= 256 else np.triu(np.full((m, m), np.inf, np.float32))


def smallest(d2: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` smallest entries of each row of `d2` (float32, C-contiguous) and their
    columns, ascending (equal values: the lower column first).

    A float's bit pattern, read as int32, orders non-negative floats as their values (a
    negative value, the rounding of a zero distance, sorts first, where it belongs). So one
    partition of the int32 patterns finds each row's count-th smallest value, the entries up to
    it are the row's candidates (where values tie at it, the lower columns), and only those
    are sorted, as (value, column) packed into one int64. Partitioning the block as int32 is
    ~3x faster than as packed int64 keys, and np.argpartition is slower still: this is the
    hot path.
    """
    rows, width = d2.shape
    bits = d2.view(np.int32)
    kth = bits.copy()
    kth.partition(count - 1, axis=1)
    limit = kth[:, count - 1 : count]
    chosen = bits <= limit
    flat = np.flatnonzero(chosen)  # row by row, count in each (once ties are settled)
    if len(flat) > rows * count:  # ties at the limit: the lower columns
        tied = np.flatnonzero(np.count_nonzero(chosen, axis=1) > count)
        equal = bits[tied] == limit[tied]
        spare = count - np.count_nonzero(bits[tied] < limit[tied], axis=1)
        chosen[tied] &= ~equal | (np.cumsum(equal, axis=1) <= spare[:, None])
        flat = np.flatnonzero(chosen)
    shift = max(1, (width - 1).bit_length())
    keys = bits.ravel()[flat].astype(np.int64)
    keys <<= shift
    keys |= flat % width
    keys = keys.reshape(rows, count)
    keys.sort(axis=1)
    columns = keys & ((1 << shift) - 1)
    keys >>= shift
    return keys.astype(np.int32).view(np.float32), columns
