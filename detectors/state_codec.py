"""Checkpoint state as data only: msgpack with numpy arrays, never pickle.

Detector state is read back from the database, which is not trusted with code: whoever can
write a checkpoint row must not be able to run anything inside the agent. So a checkpoint
holds plain data only and each detector rebuilds its objects from it explicitly.

What `encode` takes, recursively: None, bool, int, float, str, bytes, list, tuple, dict (keys
of those scalar types or tuples of them), numpy scalars (stored as Python values) and numpy
arrays of booleans, integers, floats or fixed-width strings (never object arrays). Tuples and
sets come back as lists, except tuples as dict keys, which come back as tuples; what msgpack
knows natively (dataclasses, enums) comes back in its plain form. Anything else is refused with
`StateError` at encode time, so a detector that grows an attribute of another type fails its
snapshot test rather than a restart.

>>> import numpy as np
>>> state = decode(encode({"n": 3, "mean": np.arange(3.0), ("a", 1): [1, None]}))
>>> state["n"], state["mean"].tolist(), state[("a", 1)]
(3, [0.0, 1.0, 2.0], [1, None])
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

# Every checkpoint starts with this: a stored value without it (an old pickle, a corrupted
# row) is refused before anything parses it. The digit is the envelope's format version.
MAGIC = b"BWK1"

_ARRAY_EXT = 1
_ARRAY_KINDS = frozenset("biufUS")  # bool, int, uint, float, unicode, bytes: no objects


class StateError(ValueError):
    """A state that cannot be encoded, or bytes that are not an encoded state."""


def _encode_other(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _ARRAY_KINDS:
            raise StateError(f"cannot checkpoint a numpy array of dtype {value.dtype}")
        array = np.ascontiguousarray(value)
        header = (array.dtype.str, list(array.shape), array.tobytes())
        return msgspec.msgpack.Ext(_ARRAY_EXT, _ENCODER.encode(header))
    if isinstance(value, np.generic):
        return value.item()
    raise StateError(f"cannot checkpoint a value of type {type(value).__qualname__}")


def _decode_ext(code: int, data: memoryview) -> Any:
    if code != _ARRAY_EXT:
        raise StateError(f"unknown checkpoint extension type {code}")
    dtype_str, shape, raw = _DECODER.decode(data)
    dtype = np.dtype(dtype_str)
    if dtype.kind not in _ARRAY_KINDS:
        raise StateError(f"checkpoint holds an array of dtype {dtype}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_encode_other)
_DECODER = msgspec.msgpack.Decoder(ext_hook=_decode_ext)


def encode(state: Any) -> bytes:
    """The state as bytes: `MAGIC` then msgpack. Raises `StateError` on a non-data value."""
    try:
        return MAGIC + _ENCODER.encode(state)
    except StateError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise StateError(f"cannot checkpoint this state: {exc}") from exc


def decode(data: bytes) -> Any:
    """The state `encode` was given (tuples as lists). Raises `StateError` on anything else."""
    if not data.startswith(MAGIC):
        raise StateError("not a data-only checkpoint (an older, pickled one, or corrupted)")
    try:
        return _DECODER.decode(memoryview(data)[len(MAGIC) :])
    except StateError:
        raise
    except (msgspec.DecodeError, TypeError, ValueError) as exc:
        raise StateError(f"corrupted checkpoint: {exc}") from exc


def set_items(values: set[Any] | frozenset[Any]) -> list[Any]:
    """A set's items as a list in a fixed order (by type name, then value), so that equal
    sets give equal checkpoint bytes whatever order they were built in."""
    return sorted(values, key=lambda v: (type(v).__name__, v))


def is_encoded(data: bytes) -> bool:
    """Whether `data` is in this format (an older checkpoint was pickled)."""
    return data.startswith(MAGIC)
