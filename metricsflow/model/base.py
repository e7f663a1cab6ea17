"""The contract of ``metricsflow.model``: what the gateway writes and the worker reads.

* :class:`~metricsflow.model.point.Point` and its field types.
* Series key and partition function (:mod:`metricsflow.model.partition`).
* Topic message format ``lp1`` (:mod:`metricsflow.model.message`): canonical line protocol
  per record, headers ``mf-format``, ``mf-db``, ``mf-rp``, ``mf-received-ns``.
* Columnar decoding for the worker (:mod:`metricsflow.model.columnar`).
* Tiers and their InfluxDB naming (:mod:`metricsflow.model.tiers`): what the worker writes
  and the gateway's ``/query`` reads; durations as written in settings
  (:mod:`metricsflow.model.durations`).
* The errors the gateway shares with the engine (from :mod:`metricsflow.errors`): the one
  root :class:`MetricsflowError`, :class:`ParseError` and :class:`SerializationError`. The
  gateway imports them from here: it meets the engine only in this package.

See ``docs/message-format.md``; this module re-exports the public names.
"""

from __future__ import annotations

from metricsflow.errors import MetricsflowError, ParseError, SerializationError
from metricsflow.model.columnar import ColumnarChunk, decode_columnar
from metricsflow.model.durations import parse_duration_ns
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
from metricsflow.model.tiers import (
    AGGREGATES,
    DEFAULT_TIERS,
    RAW_TIER,
    TierSpec,
    tier_field_name,
    validate_tiers,
)

__all__ = [
    "AGGREGATES",
    "DEFAULT_TIERS",
    "FORMAT_LP1",
    "PRECISION_V1",
    "PRECISION_V2",
    "RAW_TIER",
    "ColumnarChunk",
    "DecodedChunk",
    "EncodedRecord",
    "FieldValue",
    "Limits",
    "MetricsflowError",
    "ParseError",
    "Point",
    "RecordFormatError",
    "SerializationError",
    "TierSpec",
    "Unsigned",
    "canonicalize",
    "decode_columnar",
    "decode_record",
    "encode_chunk",
    "encode_lines",
    "field_type",
    "format_point",
    "parse",
    "parse_duration_ns",
    "parse_line",
    "partition_for",
    "series_hash",
    "series_key",
    "tier_field_name",
    "validate_tiers",
]
