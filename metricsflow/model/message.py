"""Topic message format ``lp1``: one Kafka record = canonical line protocol for ONE partition.

* value: UTF-8, one point per line, ``\\n``-separated (no trailing newline), tags sorted by
  key, fields sorted by key, timestamp always present, in nanoseconds.
* headers: ``mf-format: lp1`` (required), ``mf-db`` (required), ``mf-rp`` (optional),
  ``mf-received-ns`` (optional, the gateway's receive time, integer ns as ASCII).
* key: the series key when the record holds one series, else no key.
* size: a value stays under :data:`MAX_RECORD_BYTES`; longer chunks are split at line ends.

See ``docs/message-format.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from metricsflow.errors import ParseError, SerializationError
from metricsflow.model.columnar import (
    RECORD_LIMITS,
    ColumnarChunk,
    RecordFormatError,
    decode_columnar,
)
from metricsflow.model.escaping import series_key
from metricsflow.model.lineprotocol import format_point, parse_line
from metricsflow.model.lpscan import split_lines
from metricsflow.model.native import native
from metricsflow.model.partition import series_hash
from metricsflow.model.point import Point

FORMAT_LP1: Final = "lp1"
MAX_RECORD_BYTES: Final = 900_000
"""Largest record value the encoder writes (Kafka's default ``max.message.bytes`` is ~1 MB)."""

H_FORMAT: Final = "mf-format"
H_DB: Final = "mf-db"
H_RP: Final = "mf-rp"
H_RECEIVED_NS: Final = "mf-received-ns"

Headers = list[tuple[str, bytes]]

__all__ = [
    "FORMAT_LP1",
    "MAX_RECORD_BYTES",
    "DecodedChunk",
    "EncodedRecord",
    "RecordFormatError",
    "decode_record",
    "encode_chunk",
    "encode_lines",
    "encode_partitioned",
    "read_headers",
]


class EncodedRecord(NamedTuple):
    """One record to produce: ``value``, ``headers`` (aiokafka's form) and ``key``."""

    value: bytes
    headers: Headers
    key: bytes | None


@dataclass(frozen=True, slots=True)
class RecordHeaders:
    db: str
    rp: str | None
    received_ns: int | None


@dataclass(frozen=True, slots=True)
class DecodedChunk:
    """A decoded record: its database, retention policy, receive time and columns."""

    db: str
    rp: str | None
    received_ns: int | None
    columns: ColumnarChunk

    def points(self) -> list[Point]:
        """The points, parsed exactly (slower than :attr:`columns`; for tests and tools)."""
        return decode_points(self.columns.raw)


def make_headers(db: str, rp: str | None, received_ns: int | None) -> Headers:
    headers: Headers = [(H_FORMAT, b"lp1"), (H_DB, db.encode("utf-8"))]
    if rp:
        headers.append((H_RP, rp.encode("utf-8")))
    if received_ns is not None:
        headers.append((H_RECEIVED_NS, str(received_ns).encode("ascii")))
    return headers


def encode_lines(
    series_keys: Sequence[str],
    lines: Sequence[str],
    db: str,
    rp: str | None = None,
    *,
    received_ns: int | None = None,
    max_bytes: int = MAX_RECORD_BYTES,
) -> list[EncodedRecord]:
    """Encode canonical lines (all of ONE partition) into records of at most ``max_bytes``.

    ``series_keys[i]`` is the series key of ``lines[i]``.
    """
    headers = make_headers(db, rp, received_ns)
    records: list[EncodedRecord] = []
    start = 0
    n = len(lines)
    while start < n:
        size = 0
        end = start
        while end < n:
            add = len(lines[end]) + 1  # characters: a lower bound of the UTF-8 size
            if end > start and size + add > max_bytes:
                break
            size += add
            end += 1
        value = "\n".join(lines[start:end]).encode("utf-8")
        while len(value) > max_bytes and end - start > 1:  # non-ASCII made it larger
            end = start + max(1, (end - start) // 2)
            value = "\n".join(lines[start:end]).encode("utf-8")
        if len(value) > max_bytes:
            raise SerializationError(f"one point is larger than {max_bytes} bytes")
        first = series_keys[start]
        single = all(k == first for k in series_keys[start + 1 : end])
        records.append(EncodedRecord(value, headers, first.encode("utf-8") if single else None))
        start = end
    return records


def encode_partitioned(
    series_keys: Sequence[str],
    lines: Sequence[str],
    partitions: int,
    db: str,
    rp: str | None = None,
    *,
    received_ns: int | None = None,
    max_bytes: int = MAX_RECORD_BYTES,
) -> list[tuple[int, list[EncodedRecord]]]:
    """Lines grouped by partition (``series_hash(key) % partitions``, partitions in order of
    their first line) and each group encoded as :func:`encode_lines` does. Compiled
    (``metricsflow_lp``) when built; :func:`encode_partitioned_python` is the reference."""
    if native is not None:
        found = native.encode_partitioned(list(series_keys), list(lines), partitions, max_bytes)
        if found is not None:
            headers = make_headers(db, rp, received_ns)
            return [
                (partition, [EncodedRecord(value, headers, key) for value, key in records])
                for partition, records in found
            ]
    return encode_partitioned_python(
        series_keys, lines, partitions, db, rp, received_ns=received_ns, max_bytes=max_bytes
    )


def encode_partitioned_python(
    series_keys: Sequence[str],
    lines: Sequence[str],
    partitions: int,
    db: str,
    rp: str | None = None,
    *,
    received_ns: int | None = None,
    max_bytes: int = MAX_RECORD_BYTES,
) -> list[tuple[int, list[EncodedRecord]]]:
    """:func:`encode_partitioned` in Python alone."""
    groups: dict[int, tuple[list[str], list[str]]] = {}
    for key, line in zip(series_keys, lines, strict=True):
        partition = series_hash(key) % partitions
        group = groups.get(partition)
        if group is None:
            group = groups[partition] = ([], [])
        group[0].append(key)
        group[1].append(line)
    return [
        (p, encode_lines(k, ln, db, rp, received_ns=received_ns, max_bytes=max_bytes))
        for p, (k, ln) in groups.items()
    ]


def encode_chunk(
    points: Sequence[Point],
    db: str,
    rp: str | None = None,
    *,
    received_ns: int | None = None,
    max_bytes: int = MAX_RECORD_BYTES,
) -> list[EncodedRecord]:
    """Encode points that all belong to ONE partition into ``lp1`` records."""
    keys = [series_key(p.measurement, p.tags) for p in points]
    lines = [format_point(p) for p in points]
    return encode_lines(keys, lines, db, rp, received_ns=received_ns, max_bytes=max_bytes)


def read_headers(headers: Sequence[tuple[str, bytes]] | None) -> RecordHeaders:
    """Check and read the ``lp1`` headers; :class:`SerializationError` if they don't fit."""
    found: dict[str, bytes] = {}
    for name, raw in headers or ():
        found[name] = raw
    fmt = found.get(H_FORMAT)
    if fmt is None:
        raise SerializationError(f"record has no '{H_FORMAT}' header")
    if fmt != b"lp1":
        raise SerializationError(f"unsupported record format {fmt!r} (this version reads 'lp1')")
    db_raw = found.get(H_DB)
    if not db_raw:
        raise SerializationError(f"record has no '{H_DB}' header")
    try:
        db = db_raw.decode("utf-8")
        rp_raw = found.get(H_RP)
        rp = rp_raw.decode("utf-8") if rp_raw else None
        rec_raw = found.get(H_RECEIVED_NS)
        received = int(rec_raw) if rec_raw else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise SerializationError(f"bad record header: {exc}") from None
    return RecordHeaders(db, rp, received)


def decode_record(value: bytes, headers: Sequence[tuple[str, bytes]] | None) -> DecodedChunk:
    """Decode one ``lp1`` record into columns; malformed input raises ``SerializationError``."""
    meta = read_headers(headers)
    return DecodedChunk(meta.db, meta.rp, meta.received_ns, decode_columnar(value))


def decode_points(value: bytes) -> list[Point]:
    """Parse a record value exactly into points (timestamps required)."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SerializationError(f"record is not UTF-8 at byte {exc.start}") from None
    points: list[Point] = []
    for n, line in split_lines(text):
        try:
            p = parse_line(line, lineno=n, limits=RECORD_LIMITS)
        except ParseError as exc:
            raise RecordFormatError(
                exc.reason, line=exc.line, column=exc.column, text=exc.text
            ) from None
        if p is not None:
            points.append(p)
    return points
