"""Explicit, versioned state serializers (never pickle) and their registry.

Every serializer has a stable ``type_id`` (written into every snapshot, never a class name) and
the ``version`` of the format it writes; ``deserialize(data, version)`` reads every version
that was ever written, or raises ``SerializationError``. The registry maps ``type_id`` to a
serializer so that a snapshot file can be decoded by tools that do not run the job.

Formats (all little-endian):

- ``bytes`` v1: the bytes themselves.
- ``str`` v1: UTF-8.
- ``int64`` v1: 8 bytes, signed two's complement.
- ``float64`` v1: 8 bytes, IEEE 754 binary64.
- ``msgpack`` v1: MessagePack of small structured values (``None``, bool, int, float, str,
  bytes, lists, dicts of these; tuples come back as lists), ``use_bin_type``.
- ``numpy-columns`` v1: a :class:`ColumnarChunk`, see :class:`NumpyColumnsSerializer`.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from metricsflow.errors import SerializationError
from metricsflow.state.base import StateSerializer

_INT64 = struct.Struct("<q")
_FLOAT64 = struct.Struct("<d")


def _check_version(type_id: str, version: int, supported: tuple[int, ...]) -> None:
    if version not in supported:
        raise SerializationError(
            f"serializer {type_id!r} cannot read format version {version!r}; "
            f"this code reads versions {supported!r}"
        )


class BytesSerializer:
    """Raw bytes, stored as they are."""

    type_id = "bytes"
    version = 1

    def serialize(self, value: bytes) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise SerializationError(f"bytes serializer needs bytes, got {value!r}")
        return bytes(value)

    def deserialize(self, data: bytes, version: int) -> bytes:
        _check_version(self.type_id, version, (1,))
        return bytes(data)


class StrSerializer:
    """A text value as UTF-8."""

    type_id = "str"
    version = 1

    def serialize(self, value: str) -> bytes:
        if not isinstance(value, str):
            raise SerializationError(f"str serializer needs a str, got {value!r}")
        return value.encode("utf-8")

    def deserialize(self, data: bytes, version: int) -> str:
        _check_version(self.type_id, version, (1,))
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SerializationError(f"str value is not valid UTF-8: {bytes(data)[:32]!r}") from exc


class Int64Serializer:
    """A signed 64-bit integer, 8 bytes little-endian."""

    type_id = "int64"
    version = 1

    def serialize(self, value: int) -> bytes:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise SerializationError(f"int64 serializer needs an int, got {value!r}")
        try:
            return _INT64.pack(int(value))
        except struct.error as exc:
            raise SerializationError(f"int64 value out of range: {value!r}") from exc

    def deserialize(self, data: bytes, version: int) -> int:
        _check_version(self.type_id, version, (1,))
        if len(data) != _INT64.size:
            raise SerializationError(f"int64 value must be 8 bytes, got {bytes(data)!r}")
        return int(_INT64.unpack(data)[0])


class Float64Serializer:
    """An IEEE 754 double, 8 bytes little-endian."""

    type_id = "float64"
    version = 1

    def serialize(self, value: float) -> bytes:
        if isinstance(value, bool) or not isinstance(value, float | int | np.floating):
            raise SerializationError(f"float64 serializer needs a float, got {value!r}")
        return _FLOAT64.pack(float(value))

    def deserialize(self, data: bytes, version: int) -> float:
        _check_version(self.type_id, version, (1,))
        if len(data) != _FLOAT64.size:
            raise SerializationError(f"float64 value must be 8 bytes, got {bytes(data)!r}")
        return float(_FLOAT64.unpack(data)[0])


class MsgpackSerializer:
    """Small structured values (dicts/lists of primitives) as MessagePack.

    Tuples are written as arrays and read back as lists; map keys may be any primitive.
    """

    type_id = "msgpack"
    version = 1

    def serialize(self, value: Any) -> bytes:
        try:
            return bytes(msgpack.packb(value, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"msgpack cannot encode {value!r}: {exc}") from exc

    def deserialize(self, data: bytes, version: int) -> Any:
        _check_version(self.type_id, version, (1,))
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
        except (ValueError, msgpack.UnpackException) as exc:
            raise SerializationError(
                f"msgpack value is corrupt ({exc}): {bytes(data)[:32]!r}"
            ) from exc


@dataclass(frozen=True, slots=True, eq=False)
class ColumnarChunk:
    """A chunk of buffered points: named 1-D columns of equal or differing lengths, plus a
    tuple of key strings the columns may index into (e.g. ``key_idx`` -> series key).

    Immutable by contract, like every state value; arrays decoded from a snapshot are
    read-only views over the snapshot bytes.
    """

    columns: Mapping[str, npt.NDArray[Any]]
    keys: tuple[str, ...] = field(default=())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ColumnarChunk):
            return NotImplemented
        if self.keys != other.keys or list(self.columns) != list(other.columns):
            return False
        return all(
            a.dtype.newbyteorder("<") == b.dtype.newbyteorder("<")
            and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
            for a, b in zip(self.columns.values(), other.columns.values(), strict=True)
        )

    def __hash__(self) -> int:
        return hash((self.keys, tuple(self.columns)))


# numpy-columns v1 layout, little-endian:
#   u16 column count | u32 key count
#   per column: u16 name length, name (UTF-8), u8 dtype length, dtype str (e.g. "<f8"),
#               u64 element count
#   u32 lengths of the keys (key count of them), then the keys' UTF-8 bytes concatenated
#   padding to 8 bytes, then each column's raw buffer, each padded to 8 bytes
_COLS_HEAD = struct.Struct("<HI")
_NAME_LEN = struct.Struct("<H")
_ELEMS = struct.Struct("<Q")
_ALLOWED_KINDS = frozenset("biuf")


def _pad8(n: int) -> int:
    return (8 - n % 8) % 8


class NumpyColumnsSerializer:
    """A :class:`ColumnarChunk` as raw little-endian column buffers behind a small header.

    Only numeric and boolean dtypes (no object arrays: that would need pickle). Decoding is
    zero-copy: the arrays are read-only views over ``data``.
    """

    type_id = "numpy-columns"
    version = 1

    def serialize(self, value: ColumnarChunk) -> bytes:
        if not isinstance(value, ColumnarChunk):
            raise SerializationError(
                f"numpy-columns serializer needs a ColumnarChunk, got {value!r}"
            )
        head: list[bytes] = [_COLS_HEAD.pack(len(value.columns), len(value.keys))]
        buffers: list[bytes] = []
        for name, array in value.columns.items():
            arr = np.asarray(array)
            if arr.ndim != 1 or arr.dtype.kind not in _ALLOWED_KINDS:
                raise SerializationError(
                    f"column {name!r} must be a 1-D numeric or bool array, "
                    f"got dtype={arr.dtype!r} shape={arr.shape!r}"
                )
            arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
            dtype = arr.dtype.str.encode("ascii")
            encoded = name.encode("utf-8")
            head += [_NAME_LEN.pack(len(encoded)), encoded, bytes([len(dtype)]), dtype]
            head.append(_ELEMS.pack(arr.shape[0]))
            raw = np.ascontiguousarray(arr).tobytes()
            buffers += [raw, b"\0" * _pad8(len(raw))]
        encoded_keys = [k.encode("utf-8") for k in value.keys]
        head.append(np.asarray([len(k) for k in encoded_keys], dtype="<u4").tobytes())
        head += encoded_keys
        header = b"".join(head)
        return b"".join([header, b"\0" * _pad8(len(header)), *buffers])

    def deserialize(self, data: bytes, version: int) -> ColumnarChunk:
        _check_version(self.type_id, version, (1,))
        try:
            return self._decode(data)
        except (struct.error, ValueError, TypeError, UnicodeDecodeError, IndexError) as exc:
            raise SerializationError(
                f"numpy-columns value is corrupt ({exc}); first bytes {bytes(data)[:32]!r}"
            ) from exc

    @staticmethod
    def _decode(data: bytes) -> ColumnarChunk:
        n_cols, n_keys = _COLS_HEAD.unpack_from(data, 0)
        pos = _COLS_HEAD.size
        specs: list[tuple[str, np.dtype[Any], int]] = []
        for _ in range(n_cols):
            (name_len,) = _NAME_LEN.unpack_from(data, pos)
            pos += _NAME_LEN.size
            name = bytes(data[pos : pos + name_len]).decode("utf-8")
            pos += name_len
            dtype_len = data[pos]
            pos += 1
            dtype = np.dtype(bytes(data[pos : pos + dtype_len]).decode("ascii"))
            if dtype.kind not in _ALLOWED_KINDS:
                raise ValueError(f"column {name!r} has a forbidden dtype {dtype!r}")
            pos += dtype_len
            (count,) = _ELEMS.unpack_from(data, pos)
            pos += _ELEMS.size
            specs.append((name, dtype, count))
        lengths = np.frombuffer(data, dtype="<u4", count=n_keys, offset=pos)
        pos += 4 * n_keys
        keys: list[str] = []
        for length in lengths.tolist():
            keys.append(bytes(data[pos : pos + length]).decode("utf-8"))
            pos += length
        if pos > len(data):
            raise ValueError("key strings run past the end of the value")
        pos += _pad8(pos)
        columns: dict[str, npt.NDArray[Any]] = {}
        for name, dtype, count in specs:
            columns[name] = np.frombuffer(data, dtype=dtype, count=count, offset=pos)
            nbytes = dtype.itemsize * count
            pos += nbytes + _pad8(nbytes)
        return ColumnarChunk(columns=columns, keys=tuple(keys))


class SerializerRegistry:
    """Serializers by ``type_id``: how a snapshot names the serializer that wrote a state."""

    def __init__(self) -> None:
        self._by_id: dict[str, StateSerializer[Any]] = {}
        self._lock = threading.Lock()

    def register(self, serializer: StateSerializer[Any]) -> None:
        with self._lock:
            existing = self._by_id.get(serializer.type_id)
            if existing is not None and type(existing) is not type(serializer):
                raise SerializationError(
                    f"serializer type_id {serializer.type_id!r} is already registered "
                    f"to {type(existing).__name__!r}"
                )
            self._by_id[serializer.type_id] = serializer

    def get(self, type_id: str) -> StateSerializer[Any]:
        try:
            return self._by_id[type_id]
        except KeyError:
            raise SerializationError(
                f"no serializer registered for type_id {type_id!r}; known: {sorted(self._by_id)!r}"
            ) from None

    def __contains__(self, type_id: object) -> bool:
        return type_id in self._by_id

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._by_id))


BYTES = BytesSerializer()
STR = StrSerializer()
INT64 = Int64Serializer()
FLOAT64 = Float64Serializer()
MSGPACK = MsgpackSerializer()
NUMPY_COLUMNS = NumpyColumnsSerializer()

#: The process-wide registry, preloaded with the built-in serializers.
SERIALIZERS = SerializerRegistry()
for _serializer in (BYTES, STR, INT64, FLOAT64, MSGPACK, NUMPY_COLUMNS):
    SERIALIZERS.register(_serializer)
