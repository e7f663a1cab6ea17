"""Metric type declarations: what Prometheus remote-write metadata says a measurement is.

Prometheus sends ``MetricMetadata`` (family name, type) in its own remote-write requests, at
most once per ``metadata_config.send_interval`` (1 minute), usually *after* the first samples of
the family. For the tiers to decide the same thing on every replay, the type must be in the log,
in order with the samples: the gateway turns metadata into **declaration records** (format
``kinds1``) produced to *every* partition of the topic (a family's series are spread over all of
them), and the worker applies a declaration at its position in each partition's log
(docs/counters-and-percentiles.md, "Types from remote-write metadata").

Record format ``kinds1``:

* headers: ``mf-format: kinds1``, ``mf-db``, ``mf-rp`` (optional), ``mf-received-ns``
  (optional), as for ``lp1`` (docs/message-format.md);
* value: UTF-8 JSON ``{"kinds": {"<measurement>": "counter" | "gauge", ...}}``;
* key: none.

A declaration names *measurements* (Prometheus remote write maps a metric to measurement =
metric name, field ``value``), never line-protocol fields. :func:`expand_family` maps one
metadata entry to the measurements of its series.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from metricsflow.errors import SerializationError

FORMAT_KINDS1: Final = "kinds1"
MAX_DECLARATION_BYTES: Final = 900_000


class DeclaredKind(enum.Enum):
    """What a measurement is, as declared by its sender's metadata."""

    COUNTER = "counter"
    GAUGE = "gauge"


class PromMetricType(enum.IntEnum):
    """``prometheus.MetricMetadata.MetricType`` (remote write 1.0 protobuf)."""

    UNKNOWN = 0
    COUNTER = 1
    GAUGE = 2
    HISTOGRAM = 3
    GAUGEHISTOGRAM = 4
    SUMMARY = 5
    INFO = 6
    STATESET = 7


def expand_family(family: str, metric_type: int) -> dict[str, DeclaredKind]:
    """The measurements of one metadata entry and what each is.

    * counter ``f``: ``f`` and ``f_total`` (OpenMetrics families omit ``_total``) are counters;
    * gauge ``f``: ``f`` is a gauge (it overrides a counter-like name such as ``*_total``);
    * histogram ``f``: ``f_bucket``, ``f_count``, ``f_sum`` are counters;
    * gauge histogram ``f``: ``f_bucket``, ``f_gcount``, ``f_gsum`` are gauges;
    * summary ``f``: ``f_count``, ``f_sum`` are counters, ``f`` (the quantiles) a gauge;
    * unknown, info, stateset (and any type this version does not know): nothing is declared,
      the naming conventions and patterns decide.
    """
    if not family:
        return {}
    c, g = DeclaredKind.COUNTER, DeclaredKind.GAUGE
    if metric_type == PromMetricType.COUNTER:
        if family.endswith("_total"):
            return {family: c}
        return {family: c, f"{family}_total": c}
    if metric_type == PromMetricType.GAUGE:
        return {family: g}
    if metric_type == PromMetricType.HISTOGRAM:
        return {f"{family}_bucket": c, f"{family}_count": c, f"{family}_sum": c}
    if metric_type == PromMetricType.GAUGEHISTOGRAM:
        return {f"{family}_bucket": g, f"{family}_gcount": g, f"{family}_gsum": g}
    if metric_type == PromMetricType.SUMMARY:
        return {family: g, f"{family}_count": c, f"{family}_sum": c}
    return {}


@dataclass(frozen=True)
class KindDeclarations:
    """Declared kinds of measurements of one database (one ``kinds1`` record)."""

    db: str
    kinds: Mapping[str, DeclaredKind] = field(default_factory=dict)
    rp: str | None = None
    received_ns: int | None = None


def encode_declarations(decl: KindDeclarations) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    """``(value, headers)`` of the records holding ``decl`` (split when it is very large)."""
    headers: list[tuple[str, bytes]] = [
        ("mf-format", FORMAT_KINDS1.encode("ascii")),
        ("mf-db", decl.db.encode("utf-8")),
    ]
    if decl.rp:
        headers.append(("mf-rp", decl.rp.encode("utf-8")))
    if decl.received_ns is not None:
        headers.append(("mf-received-ns", str(decl.received_ns).encode("ascii")))
    items = sorted((m, k.value) for m, k in decl.kinds.items())
    # the bytes each item takes in the JSON value (escapes make a name up to 6x its UTF-8)
    sizes = [len(json.dumps(m)) + len(k) + 6 for m, k in items]
    out: list[tuple[bytes, list[tuple[str, bytes]]]] = []
    start = 0
    while start < len(items):
        end, size = start, 16
        while end < len(items) and (end == start or size + sizes[end] <= MAX_DECLARATION_BYTES):
            size += sizes[end]
            end += 1
        value = json.dumps({"kinds": dict(items[start:end])}, sort_keys=True).encode("utf-8")
        out.append((value, headers))
        start = end
    return out


def record_format(headers: Sequence[tuple[str, bytes]] | None) -> bytes | None:
    """The ``mf-format`` header of a record (``None`` when it has none)."""
    for name, raw in headers or ():
        if name == "mf-format":
            return raw
    return None


def decode_declarations(
    value: bytes | None, headers: Sequence[tuple[str, bytes]] | None
) -> KindDeclarations:
    """Read one ``kinds1`` record; :class:`SerializationError` names what does not fit."""
    found = dict(headers or ())
    if found.get("mf-format") != FORMAT_KINDS1.encode("ascii"):
        raise SerializationError(f"not a {FORMAT_KINDS1} record: format {found.get('mf-format')!r}")
    db_raw = found.get("mf-db")
    if not db_raw:
        raise SerializationError("kinds1 record has no 'mf-db' header")
    if value is None:
        raise SerializationError("kinds1 record has no value (tombstone)")
    try:
        db = db_raw.decode("utf-8")
        rp_raw = found.get("mf-rp")
        rp = rp_raw.decode("utf-8") if rp_raw else None
        rec_raw = found.get("mf-received-ns")
        received = int(rec_raw) if rec_raw else None
        body = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SerializationError(f"bad kinds1 record: {exc}") from None
    raw_kinds = body.get("kinds") if isinstance(body, dict) else None
    if not isinstance(raw_kinds, dict):
        raise SerializationError('kinds1 record: expected {"kinds": {measurement: kind}}')
    kinds: dict[str, DeclaredKind] = {}
    for measurement, kind in raw_kinds.items():
        try:
            kinds[str(measurement)] = DeclaredKind(kind)
        except ValueError:
            raise SerializationError(
                f"kinds1 record: measurement {measurement!r} has unknown kind {kind!r}"
            ) from None
    return KindDeclarations(db, kinds, rp, received)
