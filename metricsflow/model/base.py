"""The contract of ``metricsflow.model``: what the gateway writes and the worker reads.

* :class:`~metricsflow.model.point.Point` and its field types.
* Series key and partition function (:mod:`metricsflow.model.partition`).
* Topic message format ``lp1`` (:mod:`metricsflow.model.message`): canonical line protocol
  per record, headers ``mf-format``, ``mf-db``, ``mf-rp``, ``mf-received-ns``.
* Columnar decoding for the worker (:mod:`metricsflow.model.columnar`).

See ``docs/message-format.md``; this module re-exports the public names.
"""

from __future__ import annotations

from metricsflow.model.columnar import ColumnarChunk, decode_columnar
from metricsflow.model.lineprotocol import (
    PRECISION_V1,
    PRECISION_V2,
    Limits,
    canonicalize,
    format_point,
    parse,
    parse_line,
    series_key,
)
from metricsflow.model.message import (
    FORMAT_LP1,
    DecodedChunk,
    EncodedRecord,
    RecordFormatError,
    decode_record,
    encode_chunk,
    encode_lines,
)
from metricsflow.model.partition import partition_for, series_hash
from metricsflow.model.point import FieldValue, Point, Unsigned, field_type

__all__ = [
    "FORMAT_LP1",
    "PRECISION_V1",
    "PRECISION_V2",
    "ColumnarChunk",
    "DecodedChunk",
    "EncodedRecord",
    "FieldValue",
    "Limits",
    "Point",
    "RecordFormatError",
    "Unsigned",
    "canonicalize",
    "decode_columnar",
    "decode_record",
    "encode_chunk",
    "encode_lines",
    "field_type",
    "format_point",
    "parse",
    "parse_line",
    "partition_for",
    "series_hash",
    "series_key",
]
