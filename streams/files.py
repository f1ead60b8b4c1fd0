"""File source: a JSONL file or standard input, read in batches of raw records.

An over-long line is not read into memory whole: its first bytes are kept (for the dead
letter) and the rest is skipped, so a 10 MB line costs a bounded buffer.

The input is read in 1 MiB chunks split on newlines: per line that leaves one bytes object
and two tuples (`RawRecord`, `Position`) to make, which is most of what reading costs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from io import BufferedIOBase
from itertools import accumulate, compress, repeat
from operator import add
from pathlib import Path
from typing import cast

from streams.decode import DEFAULT_MAX_RECORD_BYTES
from streams.events import Position, RawRecord

STDIN = "-"
_CHUNK_BYTES = 1 << 20
_new = tuple.__new__


def require_file(path: Path) -> None:
    """Raises, with a one-line message, unless `path` is a file to read."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")


class FileSource:
    """Reads `path` (or standard input for "-") as one partition whose offsets are line numbers."""

    def __init__(
        self,
        path: str,
        batch_size: int = 2000,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        if path != STDIN:
            require_file(Path(path))
        self.path = path
        self.name = "stdin" if path == STDIN else str(Path(path).resolve())
        self.batch_size = batch_size
        self.max_record_bytes = max_record_bytes

    def size_bytes(self) -> int | None:
        return None if self.path == STDIN else Path(self.path).stat().st_size

    def batches(self) -> Iterator[tuple[list[RawRecord], int]]:
        """Yields (records, bytes consumed so far) so callers can show progress."""
        if self.path == STDIN:
            # A BufferedReader at run time (typed BinaryIO, which has no read1).
            yield from self._read(cast(BufferedIOBase, sys.stdin.buffer))
        else:
            with open(self.path, "rb") as handle:
                yield from self._read(handle)

    def _read(self, handle: BufferedIOBase) -> Iterator[tuple[list[RawRecord], int]]:
        pending: list[RawRecord] = []
        ends: list[int] = []  # bytes consumed through each pending record
        consumed = 0
        for first, lines, sizes in _line_blocks(handle, self.max_record_bytes):
            line_ends = list(accumulate(map(add, sizes, repeat(1)), initial=consumed))[1:]
            consumed = line_ends[-1]
            numbers: Iterable[int] = range(first, first + len(lines))
            if not all(map(bytes.strip, lines)):  # blank lines are skipped but keep a number
                keep = list(map(bool, map(bytes.strip, lines)))
                lines = list(compress(lines, keep))
                sizes = list(compress(sizes, keep))
                line_ends = list(compress(line_ends, keep))
                numbers = compress(numbers, keep)
            # tuple.__new__ makes the NamedTuples without a Python-level __new__ call per line.
            pending += [
                _new(RawRecord, (line, _new(Position, (self.name, 0, number)), size))
                for line, number, size in zip(lines, numbers, sizes, strict=True)
            ]
            ends += line_ends
            while len(pending) >= self.batch_size:
                yield pending[: self.batch_size], ends[self.batch_size - 1]
                del pending[: self.batch_size], ends[: self.batch_size]
        if pending:
            yield pending, consumed


def _line_blocks(
    handle: BufferedIOBase, max_bytes: int
) -> Iterator[tuple[int, list[bytes], list[int]]]:
    """Yields (first line's number, lines, the lines' full sizes), without line ends (\\n, \\r).

    The input is read in chunks and each chunk split on newlines at once, which costs far less
    per line than `readline`. A line longer than max_bytes is returned cut to max_bytes+1
    bytes (its full size tells the decoder it is over the limit); the part of a line carried
    from one chunk to the next is cut the same way, so a 10 MB line costs a bounded buffer.
    """
    number = 0
    head = _Head()  # the line the last chunk left unfinished
    while chunk := handle.read1(_CHUNK_BYTES):
        lines = chunk.split(b"\n")
        tail = lines.pop()  # the unfinished last line (b"" if the chunk ends with a newline)
        if not lines:
            head.extend(tail, max_bytes)
            continue
        sizes = list(map(len, lines))
        if b"\r" in chunk:
            for i, line in enumerate(lines):
                stripped = line.rstrip(b"\r")
                sizes[i] -= len(line) - len(stripped)
                lines[i] = stripped
        if head.size:
            head.extend(chunk[: chunk.index(b"\n")], max_bytes)
            lines[0], sizes[0] = head.line(), head.size - head.returns
        if max(sizes) > max_bytes:
            lines = [line[: max_bytes + 1].rstrip(b"\r") for line in lines]
        yield number, lines, sizes
        number += len(lines)
        head = _Head()
        head.extend(tail, max_bytes)
    if head.size:
        line = head.line()
        yield number, [line[: max_bytes + 1].rstrip(b"\r")], [head.size - head.returns]


class _Head:
    """The start of a line that goes on into the next chunk: at most max_bytes+1 of its bytes,
    its size so far and how many carriage returns it ends with."""

    __slots__ = ("kept", "returns", "size")

    def __init__(self) -> None:
        self.kept = b""
        self.size = 0
        self.returns = 0

    def extend(self, part: bytes, max_bytes: int) -> None:
        if len(self.kept) <= max_bytes:
            self.kept = (self.kept + part)[: max_bytes + 1]
        self.size += len(part)
        returns = len(part) - len(part.rstrip(b"\r"))
        self.returns = self.returns + returns if returns == len(part) else returns

    def line(self) -> bytes:
        return self.kept.rstrip(b"\r")
