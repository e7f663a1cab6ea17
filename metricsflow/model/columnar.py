"""Fast decoding of a canonical line protocol record into columns, for the worker.

One *sample* is one numeric field value of one point. :func:`decode_columnar` returns, per
sample, the index of its series key, the index of its field key, its timestamp and its value
as float64 (float, integer and unsigned fields; booleans and strings are counted in
``non_numeric`` and live only in the raw tier, i.e. in :attr:`ColumnarChunk.raw`).

Fast path: one C-level ``re.findall`` over the whole record validates every line against a
strict subset of the grammar (plain names, numeric/boolean values, bounded digits,
timestamp present) and splits it into ``(series key, fields, timestamp)``; Python then only
maps keys to indexes and converts numbers. Records the subset does not cover (escapes,
string fields, unsorted tags) take the exact parser line by line, and every error is
reported by the exact parser with its line and column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from metricsflow.errors import ParseError, SerializationError
from metricsflow.model.escaping import series_key
from metricsflow.model.lineprotocol import (
    FIELDS_PATTERN,
    MAX_TIME_NS,
    MEASUREMENT_PATTERN,
    MIN_TIME_NS,
    NAME_PATTERN,
    parse_line,
)
from metricsflow.model.lpscan import Limits, split_lines
from metricsflow.model.point import Unsigned

KIND_FLOAT: Final = 0
KIND_INTEGER: Final = 1
KIND_UNSIGNED: Final = 2

_LINE = (
    rf"({MEASUREMENT_PATTERN}(?:,{NAME_PATTERN}={NAME_PATTERN})*+) ({FIELDS_PATTERN})"
    r" (-?[0-9]{1,19}+)"
)
_RECORD_RE: Final = re.compile(rf"^{_LINE}$", re.MULTILINE)
RECORD_LIMITS: Final = Limits(
    max_line_length=2**62,
    max_tags=2**62,
    max_fields=2**62,
    max_tag_value_length=2**62,
    allow_unsigned=True,
    min_time_ns=MIN_TIME_NS,
    max_time_ns=MAX_TIME_NS + 1,
)
"""Records are read with InfluxDB's rules only: the gateway's limits applied at the door
(the pipeline's time range is checked where records enter the worker)."""


def record_lines(value: bytes) -> list[bytes]:
    """The lines of a record value, split as InfluxDB splits a body (a newline inside a
    quoted string field value does not end a line); blank and comment lines dropped."""
    if b'"' not in value and b"\\" not in value:
        parts = value.split(b"\n")
    else:
        parts = [
            ln.encode("utf-8", "surrogateescape")
            for _n, ln in split_lines(value.decode("utf-8", "surrogateescape"))
        ]
    return [ln for ln in parts if ln.strip() and not ln.lstrip().startswith(b"#")]


class RecordFormatError(SerializationError):
    """A record value is not valid canonical line protocol; names line, column and text."""

    def __init__(self, message: str, *, line: int, column: int, text: str) -> None:
        super().__init__(f"record line {line}, column {column}: {message} ({text!r})")
        self.reason = message
        self.line = line
        self.column = column
        self.text = text


@dataclass(frozen=True, slots=True)
class ColumnarChunk:
    """The numeric samples of one record, column by column.

    For sample ``j``: series ``series_keys[series_idx[j]]``, field ``field_keys[field_idx[j]]``,
    timestamp ``time_ns[j]``, value ``values[j]`` whose InfluxDB type is ``kinds[j]``
    (0 float, 1 integer, 2 unsigned). Samples keep record order (line order, then field key
    order within a line). ``raw`` is the record value itself: canonical line protocol with
    ns timestamps, which can be written unchanged to ``/write?precision=n`` for the raw tier.
    """

    series_keys: list[str]
    field_keys: list[str]
    series_idx: npt.NDArray[np.int32]
    field_idx: npt.NDArray[np.int32]
    time_ns: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    kinds: npt.NDArray[np.uint8]
    point_count: int
    non_numeric: int
    raw: bytes = field(repr=False)

    def __len__(self) -> int:
        return len(self.values)

    def lines(self) -> list[bytes]:
        """The record's lines (canonical line protocol, one point each)."""
        return record_lines(self.raw)


def _canonical_series(sk: str, lineno: int) -> str:
    """The canonical form of a fast-path series key (no escapes): tags sorted, no dups."""
    if "," not in sk:
        return sk
    meas, *tags = sk.split(",")
    keys = [t[: t.index("=")] for t in tags]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        first = sk.index("," + dup + "=")
        column = sk.index("," + dup + "=", first + 1) + 2
        raise RecordFormatError(f"duplicate tag key '{dup}'", line=lineno, column=column, text=dup)
    if keys == sorted(keys):
        return sk
    return ",".join([meas, *sorted(tags, key=lambda t: t[: t.index("=")])])


@dataclass(slots=True)
class KeyInterner:
    """Series and field key dictionaries shared by the records of one partition.

    Pass the same interner to :func:`decode_columnar` for every record of a partition: the
    ``series_idx``/``field_idx`` of every chunk are then *stable* ids (the chunks'
    ``series_keys``/``field_keys`` are the interner's own, append-only lists), so a consumer
    can map them to its keys with array operations instead of per-record string lookups. The
    decoder does one dictionary lookup per line and per field either way; interning adds no
    work. Append-only: keys stay until the interner is dropped (e.g. the partition is revoked).
    """

    series_index: dict[str, int] = field(default_factory=dict)
    """series key text as it appears in a line -> id (several texts may share an id)"""
    canon_index: dict[str, int] = field(default_factory=dict)
    """canonical series key -> id"""
    series_keys: list[str] = field(default_factory=list)
    field_index: dict[str, int] = field(default_factory=dict)
    field_keys: list[str] = field(default_factory=list)


def decode_columnar(value: bytes, interner: KeyInterner | None = None) -> ColumnarChunk:
    """Decode a record value (canonical LP) into :class:`ColumnarChunk`.

    Without ``interner`` the chunk's ``series_keys``/``field_keys`` are the keys of this record
    in order of first appearance; with one (see :class:`KeyInterner`) they are the interner's
    lists and the indexes are stable across records (keys no sample uses may be present).

    Raises :class:`RecordFormatError` (a ``SerializationError``) naming the 1-based line and
    column of the first malformed line; never anything else for any input bytes.
    """
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = value[: exc.start]
        raise RecordFormatError(
            "invalid UTF-8",
            line=before.count(b"\n") + 1,
            column=exc.start - (before.rfind(b"\n") + 1) + 1,
            text=repr(value[exc.start : exc.start + 4]),
        ) from None
    if interner is None:
        interner = KeyInterner()
    rows = _RECORD_RE.findall(text)
    if "\r" not in text and len(rows) == text.count("\n") + 1:
        return _from_rows(rows, value, interner)
    return _slow(text, value, interner)


def _from_rows(
    rows: list[tuple[str, str, str]], raw: bytes, interner: KeyInterner
) -> ColumnarChunk:
    sk_index = interner.series_index
    canon_index = interner.canon_index
    series_keys = interner.series_keys
    fk_index = interner.field_index
    field_keys = interner.field_keys
    s_col: list[int] = []
    f_col: list[int] = []
    t_col: list[int] = []
    v_col: list[float] = []
    k_col: list[int] = []
    non_numeric = 0
    for lineno, (sk, fs, ts) in enumerate(rows, 1):
        s = sk_index.get(sk)
        if s is None:
            canon = _canonical_series(sk, lineno)
            s = canon_index.get(canon)
            if s is None:
                s = canon_index[canon] = len(series_keys)
                series_keys.append(canon)
            sk_index[sk] = s
        t = int(ts)
        for pair in fs.split(",") if "," in fs else (fs,):
            k, v = pair.split("=")
            c = v[-1]
            if c in "eEtTfF":
                non_numeric += 1
                continue
            f = fk_index.get(k)
            if f is None:
                f = fk_index[k] = len(field_keys)
                field_keys.append(k)
            if c == "i":
                v_col.append(float(int(v[:-1])))
                k_col.append(KIND_INTEGER)
            elif c == "u":
                v_col.append(float(int(v[:-1])))
                k_col.append(KIND_UNSIGNED)
            else:
                v_col.append(float(v))
                k_col.append(KIND_FLOAT)
            s_col.append(s)
            f_col.append(f)
            t_col.append(t)
    if t_col and (max(t_col) > MAX_TIME_NS or min(t_col) < MIN_TIME_NS):
        return _slow(raw.decode("utf-8"), raw, interner)  # the exact parser names the bad ts
    return ColumnarChunk(
        series_keys,
        field_keys,
        np.array(s_col, dtype=np.int32),
        np.array(f_col, dtype=np.int32),
        np.array(t_col, dtype=np.int64),
        np.array(v_col, dtype=np.float64),
        np.array(k_col, dtype=np.uint8),
        len(rows),
        non_numeric,
        raw,
    )


def _slow(text: str, raw: bytes, interner: KeyInterner) -> ColumnarChunk:
    """Line by line with the exact parser."""
    canon_index = interner.canon_index
    series_keys = interner.series_keys
    fk_index = interner.field_index
    field_keys = interner.field_keys
    s_col: list[int] = []
    f_col: list[int] = []
    t_col: list[int] = []
    v_col: list[float] = []
    k_col: list[int] = []
    non_numeric = 0
    points = 0
    for lineno, line in split_lines(text):
        try:
            p = parse_line(line, lineno=lineno, limits=RECORD_LIMITS)
        except ParseError as exc:
            raise RecordFormatError(
                exc.reason, line=exc.line, column=exc.column, text=exc.text
            ) from None
        if p is None:
            continue
        points += 1
        canon = series_key(p.measurement, p.tags)
        s = canon_index.get(canon)
        if s is None:
            s = canon_index[canon] = len(series_keys)
            series_keys.append(canon)
        for k, v in p.fields:
            if isinstance(v, bool | str):
                non_numeric += 1
                continue
            f = fk_index.get(k)
            if f is None:
                f = fk_index[k] = len(field_keys)
                field_keys.append(k)
            kind = (
                KIND_UNSIGNED
                if isinstance(v, Unsigned)
                else KIND_INTEGER
                if isinstance(v, int)
                else KIND_FLOAT
            )
            s_col.append(s)
            f_col.append(f)
            t_col.append(p.time_ns)
            v_col.append(float(v))
            k_col.append(kind)
    return ColumnarChunk(
        series_keys,
        field_keys,
        np.array(s_col, dtype=np.int32),
        np.array(f_col, dtype=np.int32),
        np.array(t_col, dtype=np.int64),
        np.array(v_col, dtype=np.float64),
        np.array(k_col, dtype=np.uint8),
        points,
        non_numeric,
        raw,
    )
