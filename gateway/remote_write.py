"""Prometheus remote write 1.0: snappy-block-compressed protobuf ``prometheus.WriteRequest``.

Decoding uses the ``protobuf`` runtime (its C/upb parser) with the message classes built at
import time from a descriptor declared below: no generated ``_pb2`` file, no ``protoc`` step,
and unknown fields (metadata, exemplars, native histograms) are skipped by the parser.

Mapping (the one InfluxDB 1.8+ uses for its own remote-write endpoint):

* measurement = the ``__name__`` label; every other label becomes a tag; one field ``value``
  (float); timestamp ms -> ns.
* Staleness markers (the NaN with bits ``0x7ff0000000000002``), other NaNs and ±Inf cannot be
  stored by InfluxDB; they are dropped deliberately and counted in
  ``gateway_dropped_samples_total{reason="stale"|"nan"|"inf"}``.
* A series without ``__name__`` rejects the request (400).
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from gateway.base import BadRequestError
from metricsflow.model.lineprotocol import escape_key, escape_measurement

STALE_NAN_BITS: Final = 0x7FF0000000000002
_F = descriptor_pb2.FieldDescriptorProto


def _build_write_request_class() -> Any:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="metricsflow_remote_write.proto", package="prometheus", syntax="proto3"
    )

    def message(name: str, fields: list[tuple[str, int, int, str | None, bool]]) -> None:
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, type_name, repeated in fields:
            f = msg.field.add(name=fname, number=number, type=ftype)  # type: ignore[arg-type]
            f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            if type_name:
                f.type_name = type_name

    message(
        "Label",
        [("name", 1, _F.TYPE_STRING, None, False), ("value", 2, _F.TYPE_STRING, None, False)],
    )
    message(
        "Sample",
        [("value", 1, _F.TYPE_DOUBLE, None, False), ("timestamp", 2, _F.TYPE_INT64, None, False)],
    )
    message(
        "TimeSeries",
        [
            ("labels", 1, _F.TYPE_MESSAGE, ".prometheus.Label", True),
            ("samples", 2, _F.TYPE_MESSAGE, ".prometheus.Sample", True),
        ],
    )
    message("WriteRequest", [("timeseries", 1, _F.TYPE_MESSAGE, ".prometheus.TimeSeries", True)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))


WriteRequest: Final = _build_write_request_class()
"""The ``prometheus.WriteRequest`` message class (labels, samples; other fields skipped)."""


def snappy_uncompressed_length(data: bytes) -> int:
    """The uncompressed length a snappy block announces (its leading varint)."""
    result = shift = 0
    for i in range(min(len(data), 10)):
        byte = data[i]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result
        shift += 7
    raise BadRequestError("snappy: bad block header")


def decode_write_request(payload: bytes, dropped: dict[str, int]) -> tuple[list[str], list[str]]:
    """``(series_keys, canonical_lines)`` of a decompressed ``WriteRequest``.

    ``dropped`` counts deliberately dropped samples by reason.
    """
    req = WriteRequest()
    try:
        req.ParseFromString(payload)
    except DecodeError as exc:
        raise BadRequestError(f"invalid protobuf WriteRequest: {exc}") from None
    keys: list[str] = []
    lines: list[str] = []
    pack = struct.Struct("<d").pack
    unpack_bits = struct.Struct("<Q").unpack
    for n, ts in enumerate(req.timeseries, 1):
        name = None
        tags: list[tuple[str, str]] = []
        for label in ts.labels:
            if label.name == "__name__":
                name = label.value
            elif label.value:
                tags.append((label.name, label.value))
        if not name:
            raise BadRequestError(f"timeseries {n}: no __name__ label")
        for k, v in tags:
            if "\n" in k or "\n" in v or not k:
                raise BadRequestError(f"timeseries {n}: label {k!r} cannot be a tag")
        tags.sort()
        sk = escape_measurement(name) + "".join(
            f",{escape_key(k)}={escape_key(v)}" for k, v in tags
        )
        for sample in ts.samples:
            value = sample.value
            if not math.isfinite(value):
                if math.isnan(value):
                    reason = "stale" if unpack_bits(pack(value))[0] == STALE_NAN_BITS else "nan"
                else:
                    reason = "inf"
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            keys.append(sk)
            lines.append(f"{sk} value={value!r} {sample.timestamp * 1_000_000}")
    return keys, lines
