"""Keyed state: the backend contract, the heap and RocksDB backends, serializers, config."""

from metricsflow.state.base import (
    AsyncSnapshot,
    KeyedStateBackend,
    StateDescriptor,
    StateSerializer,
)
from metricsflow.state.config import StateBackendConfig
from metricsflow.state.heap import HeapKeyedStateBackend
from metricsflow.state.rocksdb import RocksDBKeyedStateBackend
from metricsflow.state.serializers import (
    BYTES,
    FLOAT64,
    INT64,
    MSGPACK,
    NUMPY_COLUMNS,
    SERIALIZERS,
    STR,
    BytesSerializer,
    ColumnarChunk,
    Float64Serializer,
    Int64Serializer,
    MsgpackSerializer,
    NumpyColumnsSerializer,
    SerializerRegistry,
    StrSerializer,
)

__all__ = [
    "BYTES",
    "FLOAT64",
    "INT64",
    "MSGPACK",
    "NUMPY_COLUMNS",
    "SERIALIZERS",
    "STR",
    "AsyncSnapshot",
    "BytesSerializer",
    "ColumnarChunk",
    "Float64Serializer",
    "HeapKeyedStateBackend",
    "Int64Serializer",
    "KeyedStateBackend",
    "MsgpackSerializer",
    "NumpyColumnsSerializer",
    "RocksDBKeyedStateBackend",
    "SerializerRegistry",
    "StateBackendConfig",
    "StateDescriptor",
    "StateSerializer",
    "StrSerializer",
]
