"""Explicit, versioned serializers: round trips, refusals, and the registry."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import metricsflow.state
from metricsflow.errors import SerializationError
from metricsflow.state import (
    BYTES,
    FLOAT64,
    INT64,
    MSGPACK,
    NUMPY_COLUMNS,
    SERIALIZERS,
    STR,
    ColumnarChunk,
    SerializerRegistry,
)


@pytest.mark.parametrize(
    ("serializer", "value"),
    [
        (BYTES, b"\x00\xff"),
        (STR, "héllo ✓"),
        (INT64, -(2**63)),
        (INT64, 2**63 - 1),
        (FLOAT64, -0.5),
        (MSGPACK, {"count": 3, "sum": 1.5, "tags": ["a", None, True], 7: b"raw"}),
    ],
)
def test_value_round_trips_through_its_serializer(serializer: Any, value: Any) -> None:
    assert serializer.deserialize(serializer.serialize(value), serializer.version) == value


@given(st.integers(-(2**63), 2**63 - 1))
def test_every_int64_round_trips(value: int) -> None:
    assert INT64.deserialize(INT64.serialize(value), 1) == value


@given(st.floats(allow_nan=False))
def test_every_float64_round_trips(value: float) -> None:
    assert FLOAT64.deserialize(FLOAT64.serialize(value), 1) == value


@pytest.mark.parametrize(
    ("serializer", "value", "message"),
    [
        (INT64, 2**63, "out of range"),
        (INT64, "1", "needs an int"),
        (FLOAT64, "1.0", "needs a float"),
        (STR, b"x", "needs a str"),
        (MSGPACK, {1, 2}, "cannot encode"),
        (NUMPY_COLUMNS, {"a": np.arange(3)}, "needs a ColumnarChunk"),
    ],
)
def test_values_of_the_wrong_type_are_refused_with_the_value_named(
    serializer: Any, value: Any, message: str
) -> None:
    with pytest.raises(SerializationError, match=message):
        serializer.serialize(value)


def test_unknown_format_version_is_refused() -> None:
    with pytest.raises(SerializationError, match="cannot read format version 9"):
        INT64.deserialize(INT64.serialize(1), 9)


def test_corrupt_msgpack_is_refused() -> None:
    with pytest.raises(SerializationError, match="corrupt"):
        MSGPACK.deserialize(b"\xc1", 1)


def test_numpy_columns_round_trip_keeps_dtypes_lengths_and_keys() -> None:
    chunk = ColumnarChunk(
        {
            "key_idx": np.array([2, 0, 1], dtype=np.int32),
            "ts_ns": np.array([3, 1, 2], dtype=np.int64),
            "values": np.array([1.5, np.nan, np.inf]),
            "valid": np.array([True, False, True, True, False]),
            "big_endian": np.array([1, 2], dtype=">u2"),
            "empty": np.array([], dtype=np.float32),
        },
        keys=("cpu,host=a", "", "mem,host=ü"),
    )

    decoded = NUMPY_COLUMNS.deserialize(NUMPY_COLUMNS.serialize(chunk), 1)

    assert decoded == chunk
    assert decoded.columns["big_endian"].dtype == np.dtype("<u2")
    assert decoded.columns["ts_ns"].ctypes.data % 8 == 0
    assert not decoded.columns["values"].flags.writeable


def test_numpy_columns_refuses_object_and_2d_arrays() -> None:
    with pytest.raises(SerializationError, match="1-D numeric or bool"):
        NUMPY_COLUMNS.serialize(ColumnarChunk({"o": np.array(["a"], dtype=object)}))
    with pytest.raises(SerializationError, match="1-D numeric or bool"):
        NUMPY_COLUMNS.serialize(ColumnarChunk({"m": np.zeros((2, 2))}))


def test_truncated_numpy_columns_value_is_refused() -> None:
    data = NUMPY_COLUMNS.serialize(ColumnarChunk({"v": np.arange(100.0)}))

    with pytest.raises(SerializationError, match="corrupt"):
        NUMPY_COLUMNS.deserialize(data[:-16], 1)


def test_registry_finds_every_built_in_serializer_by_type_id() -> None:
    assert list(SERIALIZERS) == ["bytes", "float64", "int64", "msgpack", "numpy-columns", "str"]
    assert SERIALIZERS.get("numpy-columns") is NUMPY_COLUMNS
    with pytest.raises(SerializationError, match="no serializer registered for type_id 'x'"):
        SERIALIZERS.get("x")


def test_registry_refuses_a_second_serializer_class_for_one_type_id() -> None:
    registry = SerializerRegistry()
    registry.register(INT64)

    class Impostor:
        type_id = "int64"
        version = 1

        def serialize(self, value: int) -> bytes:
            return b""

        def deserialize(self, data: bytes, version: int) -> int:
            return 0

    with pytest.raises(SerializationError, match="already registered"):
        registry.register(Impostor())


def test_no_state_or_checkpointing_module_imports_pickle() -> None:
    package = pathlib.Path(metricsflow.state.__file__).parent
    sources = [*package.glob("*.py"), *(package.parent / "checkpointing").glob("*.py")]
    offenders = [
        p.name
        for p in sources
        if "import pickle" in p.read_text() or "cloudpickle" in p.read_text()
    ]
    assert offenders == []
