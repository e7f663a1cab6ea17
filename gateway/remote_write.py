"""Prometheus remote write 1.0: snappy-block-compressed protobuf ``prometheus.WriteRequest``.

Decoding uses the ``protobuf`` runtime (its C/upb parser) with the message classes built at
import time from a descriptor declared below: no generated ``_pb2`` file, no ``protoc`` step,
and unknown fields (exemplars, native histograms) are skipped by the parser.

Mapping (the one InfluxDB 1.8+ uses for its own remote-write endpoint):

* measurement = the ``__name__`` label; every other label becomes a tag; one field ``value``
  (float); timestamp ms -> ns.
* Staleness markers (the NaN with bits ``0x7ff0000000000002``), other NaNs and ±Inf cannot be
  stored by InfluxDB; they are dropped deliberately and counted in
  ``gateway_dropped_samples_total{reason="stale"|"nan"|"inf"}``.
* A series without ``__name__`` rejects the request (400).
* ``metadata`` (``MetricMetadata``: family name and type; Prometheus sends it in requests of
  its own, without samples, every ``metadata_config.send_interval``) is returned as
  ``(family, type)`` pairs for the gateway to turn into ``kinds1`` declarations
  (:mod:`gateway.declarations`); ``help`` and ``unit`` are not read. An entry with an empty
  family, or a family longer than ``max_key_length`` (it cannot name a measurement), is
  skipped. A request of metadata alone is valid.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from gateway.base import BadRequestError, PayloadTooLargeError
from metricsflow.model import SerializationError
from metricsflow.model.declarations import PromMetricType
from metricsflow.model.limits import time_limit_message
from metricsflow.model.lineprotocol import DEFAULT_LIMITS, Limits, escape_key, escape_measurement

STALE_NAN_BITS: Final = 0x7FF0000000000002
_F = descriptor_pb2.FieldDescriptorProto


def _build_write_request_class() -> Any:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="metricsflow_remote_write.proto", package="prometheus", syntax="proto3"
    )
    metric_type = fdp.enum_type.add(name="MetricType")  # MetricMetadata.MetricType, top level
    for value in PromMetricType:
        metric_type.value.add(name=value.name, number=value.value)

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
    message(
        "MetricMetadata",
        [
            ("type", 1, _F.TYPE_ENUM, ".prometheus.MetricType", False),
            ("metric_family_name", 2, _F.TYPE_STRING, None, False),
            ("help", 4, _F.TYPE_STRING, None, False),
            ("unit", 5, _F.TYPE_STRING, None, False),
        ],
    )
    message(
        "WriteRequest",
        [
            ("timeseries", 1, _F.TYPE_MESSAGE, ".prometheus.TimeSeries", True),
            ("metadata", 3, _F.TYPE_MESSAGE, ".prometheus.MetricMetadata", True),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))


WriteRequest: Final = _build_write_request_class()
"""The ``prometheus.WriteRequest`` message class (labels, samples, metadata; other fields
skipped)."""


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


def decode_write_request(
    payload: bytes,
    dropped: dict[str, int],
    limits: Limits = DEFAULT_LIMITS,
    max_bytes: int | None = None,
    metadata: list[tuple[str, int]] | None = None,
) -> tuple[list[str], list[str]]:
    """``(series_keys, canonical_lines)`` of a decompressed ``WriteRequest``.

    ``dropped`` counts deliberately dropped samples by reason. The line-protocol limits apply
    to the labels (``__name__`` and label names: ``max_key_length``; values:
    ``max_tag_value_length``; ``max_tags``; the series key: ``max_line_length``) and the
    time range to every sample; the lines a request expands to (every sample repeats its
    series key) may not exceed ``max_bytes`` (413): a small request of many samples of one
    long-labelled series cannot turn into hundreds of megabytes. When ``metadata`` is a
    list, the request's ``(metric_family_name, type)`` entries are appended to it (type as
    the wire's integer: one this version does not know is kept, and declares nothing).
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
    min_time, max_time = limits.min_time_ns, limits.max_time_ns
    expanded = 0
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
        _check_labels(n, name, tags, limits)
        tags.sort()
        try:
            sk = escape_measurement(name) + "".join(
                f",{escape_key(k)}={escape_key(v)}" for k, v in tags
            )
        except SerializationError as exc:  # e.g. a label value ending in a backslash
            raise BadRequestError(f"timeseries {n}: {exc}") from None
        if len(sk) > limits.max_line_length:
            raise BadRequestError(
                f"timeseries {n} ({name[:40]!r}): labels of {len(sk)} characters, more than "
                f"the {limits.max_line_length} of GATEWAY_MAX_LINE_LENGTH"
            )
        if max_bytes is not None:
            expanded += len(ts.samples) * (len(sk) + 48)  # key, value and timestamp per line
            if expanded > max_bytes:
                raise PayloadTooLargeError(
                    f"timeseries {n}: the request expands to more than {max_bytes} bytes of "
                    "points (every sample repeats its labels); send fewer samples per request"
                )
        for i, sample in enumerate(ts.samples, 1):
            value = sample.value
            if not math.isfinite(value):
                if math.isnan(value):
                    reason = "stale" if unpack_bits(pack(value))[0] == STALE_NAN_BITS else "nan"
                else:
                    reason = "inf"
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            time_ns = sample.timestamp * 1_000_000
            if not min_time <= time_ns < max_time:
                raise BadRequestError(
                    f"timeseries {n} ({name[:40]!r}), sample {i}: "
                    + time_limit_message(time_ns, min_time, max_time)
                )
            keys.append(sk)
            lines.append(f"{sk} value={value!r} {time_ns}")
    if metadata is not None:
        for entry in req.metadata:
            family = entry.metric_family_name
            if family and len(family) <= limits.max_key_length:
                metadata.append((family, int(entry.type)))
    return keys, lines


def _check_labels(n: int, name: str, tags: list[tuple[str, str]], limits: Limits) -> None:
    where = f"timeseries {n} ({name[:40]!r})"
    if len(name) > limits.max_key_length:
        raise BadRequestError(
            f"{where}: __name__ of {len(name)} characters, more than {limits.max_key_length}"
        )
    if len(tags) > limits.max_tags:
        raise BadRequestError(f"{where}: {len(tags)} labels, more than {limits.max_tags}")
    for k, v in tags:
        if "\n" in k or "\n" in v or not k:
            raise BadRequestError(f"timeseries {n}: label {k[:40]!r} cannot be a tag")
        if len(k) > limits.max_key_length:
            raise BadRequestError(
                f"{where}: label name {k[:40]!r}... of {len(k)} characters, more than "
                f"{limits.max_key_length}"
            )
        if len(v) > limits.max_tag_value_length:
            raise BadRequestError(
                f"{where}: value of label {k[:40]!r} has {len(v)} characters, more than "
                f"{limits.max_tag_value_length}"
            )
