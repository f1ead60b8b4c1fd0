"""Checkpoint state is data only: what goes in comes back, nothing else gets in or out."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detectors import state_codec
from detectors.state_codec import StateError, decode, encode

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
)
plain = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(), st.integers(-1000, 1000)), inner, max_size=5),
    ),
    max_leaves=30,
)


@given(plain)
def test_plain_data_round_trips(value: object) -> None:
    assert decode(encode(value)) == value


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([np.nan, np.inf, -0.0]),
        np.array([True, False]),
        np.array([], dtype=np.int64),
        np.array(["fraud", "ok"]),
        np.arange(6, dtype=np.uint8)[::2],  # not contiguous
    ],
)
def test_arrays_round_trip_with_dtype_and_shape(array: np.ndarray) -> None:
    restored = decode(encode({"a": array}))["a"]
    assert restored.dtype == array.dtype
    assert restored.shape == array.shape
    np.testing.assert_array_equal(restored, array)
    assert restored.flags.writeable  # a detector goes on updating it in place


def test_numpy_scalars_become_python_values_and_tuple_keys_stay_tuples() -> None:
    state = decode(encode({("m", 1): (np.float64(0.5), np.int32(3))}))
    assert state == {("m", 1): [0.5, 3]}
    assert type(state[("m", 1)][1]) is int


@pytest.mark.parametrize(
    "value", [object(), np.array([object()], dtype=object), {"f": lambda: 0}, {"c": 1j}]
)
def test_anything_but_data_is_refused_at_encode(value: object) -> None:
    with pytest.raises(StateError):
        encode(value)


def test_a_pickle_is_never_loaded() -> None:
    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (exec, ("raise SystemExit('code ran')",))

    data = pickle.dumps({"state": Boom()})
    assert not state_codec.is_encoded(data)
    with pytest.raises(StateError, match="not a data-only checkpoint"):
        decode(data)


def test_corrupted_bytes_and_object_arrays_in_the_stream_are_refused() -> None:
    with pytest.raises(StateError):
        decode(state_codec.MAGIC + b"\xc1")  # a byte msgpack never uses
    object_array = state_codec._ENCODER.encode(("|O", [1], b"x" * 8))
    forged = state_codec.MAGIC + state_codec._ENCODER.encode(
        {"a": state_codec.msgspec.msgpack.Ext(1, object_array)}
    )
    with pytest.raises(StateError, match="dtype"):
        decode(forged)
