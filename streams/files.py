"""File source: a JSONL file or standard input, read in batches of raw records.

An over-long line is not read into memory whole: its first bytes are kept (for the dead
letter) and the rest is skipped, so a 10 MB line costs a bounded buffer.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from streams.decode import DEFAULT_MAX_RECORD_BYTES
from streams.events import Position, RawRecord

STDIN = "-"


class FileSource:
    """Reads `path` (or standard input for "-") as one partition whose offsets are line numbers."""

    def __init__(
        self,
        path: str,
        batch_size: int = 2000,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        if path != STDIN and not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
        self.path = path
        self.name = "stdin" if path == STDIN else str(Path(path).resolve())
        self.batch_size = batch_size
        self.max_record_bytes = max_record_bytes

    def size_bytes(self) -> int | None:
        return None if self.path == STDIN else Path(self.path).stat().st_size

    def batches(self) -> Iterator[tuple[list[RawRecord], int]]:
        """Yields (records, bytes consumed so far) so callers can show progress."""
        if self.path == STDIN:
            yield from self._read(sys.stdin.buffer)
        else:
            with open(self.path, "rb") as handle:
                yield from self._read(handle)

    def _read(self, handle: BinaryIO) -> Iterator[tuple[list[RawRecord], int]]:
        batch: list[RawRecord] = []
        consumed = 0
        for line_number, line, size in _lines(handle, self.max_record_bytes):
            consumed += size + 1
            if not line.strip():
                continue
            batch.append(RawRecord(line, Position(self.name, 0, line_number), size))
            if len(batch) >= self.batch_size:
                yield batch, consumed
                batch = []
        if batch:
            yield batch, consumed


def _lines(handle: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes, int]]:
    """Yields (line number, line without its newline, the line's full size in bytes).

    A line longer than max_bytes is returned cut to max_bytes+1 bytes (the full size tells the
    decoder it is over the limit); the remainder is drained without being kept.
    """
    line_number = 0
    while True:
        line = handle.readline(max_bytes + 1)
        if not line:
            return
        size, last = len(line), line
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while last and not last.endswith(b"\n"):
                last = handle.readline(1 << 20)
                size += len(last)
        newline = len(last) - len(last.rstrip(b"\r\n"))
        yield line_number, line.rstrip(b"\r\n"), size - newline
        line_number += 1
