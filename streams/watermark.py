"""Each stream's clock: a record far ahead of what its stream has shown is a dead letter.

A record's own checks (`streams.decode.Limits`) cannot tell that `ts` two years ahead is a
producer's broken clock; its stream can. A stream is the events of one model from one
(source, partition). Its watermark is the latest event time accepted from it; a record more
than `max_future_skew` ahead of it is rejected, so one bad record can never move a model's
clock (and so never open or resolve incidents). A stream that really jumps ahead (it was
quiet, or a newer file is replayed) is followed once `confirmations` records in a row, each
within `max_future_skew` of the first, agree: the ones before are dead letters that say so.
A new stream's watermark starts at the median of its first few records, so a wild record
among them cannot set it. The daemon also passes the wall clock: a record more than
`max_clock_skew` ahead of it is rejected outright. Records behind the watermark (late ones)
are always fine. The state is per process: a restarted process starts each stream afresh.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

StreamKey = tuple[str, int, str]  # (source, partition, model)

# How many first records of a new stream its starting watermark is the median of.
_FIRST_RECORDS = 5


class StreamClocks:
    def __init__(
        self, max_future_skew: float, max_clock_skew: float, confirmations: int = 3
    ) -> None:
        """A skew of 0 switches its check off."""
        self.max_future_skew = max_future_skew
        self.max_clock_skew = max_clock_skew
        self.confirmations = confirmations
        self.watermarks: dict[StreamKey, float] = {}
        # A stream's records in a row that were ahead of it: (how many, the first one's ts).
        self.runs: dict[StreamKey, tuple[int, float]] = {}

    def judge(self, key: StreamKey, ts: list[float], wall_now: float | None) -> dict[int, str]:
        """Index -> reason of each event (of the stream, in arrival order) to reject; the
        watermark moves with the others. One comparison per batch unless something is ahead."""
        if not ts:
            return {}
        watermark = self.watermarks.get(key)
        if watermark is None:
            first = sorted(ts[:_FIRST_RECORDS])
            watermark = first[(len(first) - 1) // 2]
        skew = self.max_future_skew if self.max_future_skew > 0 else math.inf
        wall_limit = math.inf
        if wall_now is not None and self.max_clock_skew > 0:
            wall_limit = wall_now + self.max_clock_skew
        high = max(ts)
        if high <= watermark + skew and high <= wall_limit:
            self.watermarks[key] = max(watermark, high)
            self.runs.pop(key, None)  # an accepted record in time breaks any run
            return {}
        rejected: dict[int, str] = {}
        count, start = self.runs.get(key, (0, 0.0))
        for index, t in enumerate(ts):
            if t > wall_limit:
                rejected[index] = (
                    f"field 'ts' {_show(t)} is {duration(t - wall_limit + self.max_clock_skew)} "
                    f"ahead of the wall clock (ingest.max_clock_skew is "
                    f"{duration(self.max_clock_skew)})"
                )
                continue
            if t > watermark + skew:
                count, start = (count + 1, start) if count and abs(t - start) <= skew else (1, t)
                if count < self.confirmations:
                    rejected[index] = (
                        f"field 'ts' {_show(t)} is {duration(t - watermark)} ahead of its "
                        f"stream's latest event time {iso(watermark)} (ingest.max_future_skew "
                        f"is {duration(skew)}); a jump is followed once "
                        f"{self.confirmations} records in a row agree"
                    )
                    continue
            count = 0
            watermark = max(watermark, t)
        self.watermarks[key] = watermark
        if count:
            self.runs[key] = (count, start)
        else:
            self.runs.pop(key, None)
        return rejected

    def forget(self, source: str, partition: int) -> None:
        """Drops the clocks of the streams of (source, partition) (it moved elsewhere)."""
        for key in [k for k in self.watermarks if k[:2] == (source, partition)]:
            del self.watermarks[key]
            self.runs.pop(key, None)


def iso(ts: float) -> str:
    """Epoch seconds as an ISO-8601 UTC time, or the number if no calendar date fits."""
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return _show(ts)


def duration(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{seconds:.3g}s"


def _show(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e18 else repr(value)
