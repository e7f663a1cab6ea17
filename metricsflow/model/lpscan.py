"""The exact line-protocol scanner: InfluxDB 1.x's ``models/points.go`` rules, step by step.

Each function here follows one step of InfluxDB's parser (split the body into lines, scan
measurement, tags, fields, numbers, booleans, timestamp; then read the fields back), with
InfluxDB's reasons for refusing a line, so that a line is accepted here exactly when InfluxDB
accepts it, and read as the same point. Written from InfluxDB's documented behaviour and
checked against a real InfluxDB 1.6 by ``tests/model/test_lineprotocol_influxdb.py``.

Positions are 0-based indexes into the line; :class:`~metricsflow.errors.ParseError` carries
1-based columns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from metricsflow.errors import ParseError, SerializationError
from metricsflow.model.escaping import (
    escape_field_key,
    series_key,
    unescape_name,
    unescape_string,
    unescape_tag,
)
from metricsflow.model.limits import ENGINE_MAX_TIME_NS, ENGINE_MIN_TIME_NS, time_limit_message
from metricsflow.model.point import INT64_MAX, INT64_MIN, UINT64_MAX, FieldValue, Unsigned

MIN_TIME_NS: Final = INT64_MIN + 2
"""Smallest timestamp InfluxDB accepts (``models.MinNanoTime``)."""
MAX_TIME_NS: Final = INT64_MAX - 1
"""Largest timestamp InfluxDB accepts (``models.MaxNanoTime``)."""
MAX_KEY_BYTES: Final = 65_535
"""InfluxDB's ``MaxKeyLength``: bytes of the series key (and of key + 4 + field key)."""
_TIME_RANGE: Final = f"time outside range {MIN_TIME_NS} - {MAX_TIME_NS}"

_MEAS_STOP: Final = re.compile(r"(?<!\\)[, ]")
_TAG_STOP: Final = re.compile(r"(?<!\\)[, =]")
_BLANK: Final = " \t\x00"
_NUMBER_START: Final = frozenset("0123456789.-Nn")
_DIGITS: Final = frozenset("0123456789")
_NUMERIC: Final = frozenset("0123456789.")
_TRUE: Final = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE: Final = frozenset({"f", "F", "false", "False", "FALSE"})
_FLOAT_START: Final = frozenset("0123456789-.nNiIu")
_GO_INT: Final = re.compile(r"[+-]?[0-9]+")
_GO_UINT: Final = re.compile(r"[0-9]+")
_GO_FLOAT: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-line limits and dialect. The defaults never refuse a line InfluxDB 1.x accepts,
    except ``max_line_length`` (a line must fit in one Kafka record; docs/ingestion.md)."""

    max_line_length: int = 200_000
    """Longest line in characters (at most 800 kB of UTF-8: one Kafka record)."""
    max_tags: int = 16_384
    """Most tags per line (65,535 bytes of series key hold at most 16,383)."""
    max_fields: int = 50_000
    """Most fields per line (a 200,000-character line holds at most 50,000)."""
    max_key_length: int = MAX_KEY_BYTES
    """Most bytes of series key, also with 4 + the field key's bytes (InfluxDB's limit)."""
    max_tag_value_length: int = MAX_KEY_BYTES
    """Longest tag value in characters."""
    allow_unsigned: bool = False
    """Accept ``5u`` unsigned integers (InfluxDB 2.x); InfluxDB 1.x refuses them."""
    min_time_ns: int = ENGINE_MIN_TIME_NS
    """Smallest timestamp accepted (the pipeline's range, :mod:`metricsflow.model.limits`)."""
    max_time_ns: int = ENGINE_MAX_TIME_NS
    """First timestamp refused (exclusive bound)."""


@dataclass(frozen=True, slots=True)
class ScannedLine:
    """One line as InfluxDB reads it, before its field values are converted."""

    text: str
    """The line from its first non-blank character."""
    measurement: str
    tags: tuple[tuple[str, str], ...]
    """Unescaped ``(key, value)`` pairs, in the order written."""
    fields: str
    """The field section exactly as written."""
    fields_at: int
    """Index of the field section in :attr:`text`."""
    separator: str
    """The blanks between the key and the fields as written (a tab there lets the first
    field key be empty, so they are kept)."""
    time_ns: int

    @property
    def series_key(self) -> str:
        return series_key(self.measurement, self.tags)


def split_lines(body: str) -> list[tuple[int, str]]:
    """``(line number, line)`` per line of ``body``, InfluxDB's way: a newline inside a quoted
    field value, or right after a backslash, does not end the line."""
    if '"' not in body and "\\" not in body:
        return list(enumerate(body.split("\n"), 1))
    out: list[tuple[int, str]] = []
    pos = 0
    n = len(body)
    lineno = 1
    while pos < n:
        end = _line_end(body, pos)
        block = body[pos:end]
        out.append((lineno, block))
        lineno += block.count("\n") + 1
        pos = end + 1
    return out


def line_end_after(body: bytes, start: int, at_least: int) -> int:
    """The index of the newline that ends, InfluxDB's way, the line holding byte ``at_least``
    (``start`` must be a line start), or -1 when that line runs to the end of ``body``.

    For cutting a body into slices that each hold whole lines: a newline inside a quoted field
    value, or right after a backslash, is not a line end. Linear in the bytes scanned."""
    nl = body.find(b"\n", at_least)
    if nl < 0:
        return -1
    head = body[start:nl]
    if b'"' not in head and b"\\" not in head:
        return nl
    window = nl + 1
    while True:
        text = body[start:window].decode("latin-1")  # one character per byte
        full = window >= len(body)
        i = 0
        while i < len(text):
            end = _line_end(text, i)
            if end + 2 >= len(text) and not full:
                break  # too near the window's end to be sure: widen it
            if end >= len(text):
                return -1
            if start + end >= at_least:
                return start + end
            i = end + 1
        else:
            if full:
                return -1
        if full:
            return -1
        window = min(len(body), start + 2 * (window - start))


def _line_end(buf: str, i: int) -> int:
    n = len(buf)
    quoted = False
    fields = False
    equals = 0
    commas = 0
    while i < n:
        c = buf[i]
        if c == "\\" and i + 2 < n:
            i += 2
            continue
        if c == " ":
            fields = True
        if fields:
            if not quoted and c == "=":
                i += 1
                equals += 1
                continue
            if not quoted and c == ",":
                i += 1
                commas += 1
                continue
            if c == '"' and equals > commas:
                i += 1
                quoted = not quoted
                continue
        if c == "\n" and not quoted:
            break
        i += 1
    return i


class _Line:
    """Error helper for one line: ``fail(reason, index)`` -> ParseError."""

    __slots__ = ("lineno", "offset", "text")

    def __init__(self, lineno: int, offset: int, text: str) -> None:
        self.lineno = lineno
        self.offset = offset
        self.text = text

    def fail(self, reason: str, index: int) -> ParseError:
        return ParseError(reason, line=self.lineno, column=self.offset + index + 1, text=self.text)


def _skip_blank(buf: str, i: int) -> int:
    n = len(buf)
    while i < n and buf[i] in _BLANK:
        i += 1
    return i


def _utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogateescape"))


def scan_point(
    line: str,
    *,
    lineno: int = 1,
    precision_factor: int = 1,
    default_time_ns: int | None = None,
    limits: Limits,
) -> ScannedLine | None:
    """Scan one line as InfluxDB does; ``None`` for a blank or comment line.

    ``default_time_ns`` (truncated to the precision) is the time of a line without one; when
    it is ``None`` such a line is an error (records always carry their timestamp).
    """
    start = _skip_blank(line, 0)
    if start >= len(line) or line[start] == "#":
        return None
    buf = line[start:]
    at = _Line(lineno, start, buf)
    if len(line) > limits.max_line_length:
        raise at.fail(f"line longer than {limits.max_line_length} characters", 0)
    if max(buf) >= "\udc80" and any("\udc80" <= c <= "\udcff" for c in buf):
        bad = next(i for i, c in enumerate(buf) if "\udc80" <= c <= "\udcff")
        raise at.fail("invalid UTF-8", bad)
    n = len(buf)
    # measurement
    if buf[0] == ",":
        raise at.fail("missing measurement", 0)
    m = _MEAS_STOP.search(buf, 1)
    if m is None:
        raise at.fail("missing fields", n)
    meas_end = m.start()
    raw_tags: list[tuple[str, str, int]] = []
    key_end = meas_end
    if buf[meas_end] == ",":
        key_end = _scan_tags(buf, meas_end + 1, raw_tags, at, limits)
    max_key = limits.max_key_length
    key_bytes = _utf8_len(buf[:key_end]) if key_end * 4 > max_key else 0
    if key_bytes > max_key:
        raise at.fail(f"max key length exceeded: {key_bytes} > {max_key}", 0)
    fields_end, fields = _scan_fields(buf, key_end, at, limits)
    fields_at = fields_end - len(fields)
    if (key_end + len(fields)) * 4 > max_key and not key_bytes:
        key_bytes = _utf8_len(buf[:key_end])
    for raw_key, _value, _pos in walk_fields(fields, at, fields_at):
        if key_bytes and key_bytes + 4 + _utf8_len(raw_key) > max_key:
            size = key_bytes + 4 + _utf8_len(raw_key)
            raise at.fail(f"max key length exceeded: {size} > {max_key}", 0)
    time_ns = _scan_time(buf, fields_end, at, precision_factor, default_time_ns)
    if not limits.min_time_ns <= time_ns < limits.max_time_ns:
        ts_at = _skip_blank(buf, fields_end)
        raise at.fail(time_limit_message(time_ns, limits.min_time_ns, limits.max_time_ns), ts_at)
    measurement = unescape_name(buf[:meas_end])
    tags = tuple((unescape_tag(k), unescape_tag(v)) for k, v, _ in raw_tags)
    for (key, _v), (_rk, _rv, pos) in zip(tags, raw_tags, strict=True):
        if key == "time":
            raise at.fail(
                f'invalid tag key: input tag "time" on measurement "{measurement}" is invalid',
                pos,
            )
    return ScannedLine(buf, measurement, tags, fields, fields_at, buf[key_end:fields_at], time_ns)


def _scan_tags(buf: str, i: int, out: list[tuple[str, str, int]], at: _Line, limits: Limits) -> int:
    """Scan ``k=v,...`` from ``i`` (after the measurement's comma); the index of the space
    that ends the key. Appends ``(raw key, raw value, key index)`` to ``out``."""
    n = len(buf)
    while True:
        kstart = i
        if i >= n or buf[i] in " ,=":
            raise at.fail("missing tag key", i)
        mk = _TAG_STOP.search(buf, i + 1)
        if mk is None:
            raise at.fail("missing tag value", n)
        j = mk.start()
        if buf[j] != "=":
            raise at.fail("missing tag value", j)
        i = j + 1
        if i >= n or buf[i] in ", ":
            raise at.fail("missing tag value", i)
        mv = _TAG_STOP.search(buf, i + 1)
        if mv is None:
            raise at.fail("missing fields", n)
        end = mv.start()
        c = buf[end]
        if c == "=":
            raise at.fail("invalid tag format", end)
        value = buf[i:end]
        if len(value) > limits.max_tag_value_length:
            raise at.fail(f"tag value longer than {limits.max_tag_value_length}", i)
        out.append((buf[kstart:j], value, kstart))
        if len(out) > limits.max_tags:
            raise at.fail(f"more than {limits.max_tags} tags", kstart)
        if c == " ":
            break
        i = end + 1
    seen: set[str] = set()
    for key, _value, pos in out:
        if key in seen:
            raise at.fail("duplicate tags", pos)
        seen.add(key)
    return end


def _scan_fields(buf: str, i: int, at: _Line, limits: Limits) -> tuple[int, str]:
    """InfluxDB's ``scanFields`` from ``i`` (the space after the key): ``(end, fields)``."""
    n = len(buf)
    start = _skip_blank(buf, i)
    i = start
    quoted = False
    equals = 0
    commas = 0
    while i < n:
        c = buf[i]
        if c == "\\" and i + 1 < n:
            i += 2
            continue
        if c == '"' and equals > commas:
            quoted = not quoted
            i += 1
            continue
        if c == "=" and not quoted:
            equals += 1
            before = buf[i - 1]
            if before in " ," and buf[i - 2] != "\\":
                raise at.fail("missing field key", i)
            if i + 1 >= n or buf[i + 1] in ", ":
                raise at.fail("missing field value", i)
            d = buf[i + 1]
            if d in _NUMBER_START:
                i = _scan_number(buf, i + 1, at, limits)
                continue
            if d != '"':
                i = _scan_boolean(buf, i + 1, at)
                continue
        if not quoted:
            if c == ",":
                commas += 1
            elif c == " ":
                break
        i += 1
    if quoted:
        raise at.fail("unbalanced quotes", i)
    if equals == 0 or commas != equals - 1:
        raise at.fail("invalid field format", i)
    if i == start:
        raise at.fail("missing fields", i)
    if equals > limits.max_fields:
        raise at.fail(f"more than {limits.max_fields} fields", start)
    return i, buf[start:i]


def _scan_number(buf: str, i: int, at: _Line, limits: Limits) -> int:
    n = len(buf)
    start = i
    is_int = is_unsigned = decimal = scientific = False
    if buf[i] == "-":
        i += 1
        if i == n:
            raise at.fail("invalid number", i)
    while i < n:
        c = buf[i]
        if c == "," or c == " ":
            break
        if c == "i" and i > start and not (is_int or is_unsigned):
            is_int = True
            i += 1
            continue
        if c == "u" and i > start and not (is_int or is_unsigned):
            is_unsigned = True
            i += 1
            continue
        if c == ".":
            if decimal:
                raise at.fail("invalid number", i)
            decimal = True
        if i > start and c in "eE":
            scientific = True
            i += 1
            continue
        if c in "+-" and buf[i - 1] in "eE":
            i += 1
            continue
        if i + 2 < n and c in "Nn":
            raise at.fail("invalid number", i)
        if c not in _NUMERIC:
            raise at.fail("invalid number", i)
        i += 1
    if (is_int or is_unsigned) and (decimal or scientific):
        raise at.fail("invalid number", start)
    digits = i - start - is_int - decimal - (buf[start] == "-")
    if digits == 0:
        raise at.fail("invalid number", start)
    if is_int:
        if buf[i - 1] != "i":
            raise at.fail("invalid number", start)
        text = buf[start : i - 1]
        if len(text) >= 19 and not INT64_MIN <= _int(text) <= INT64_MAX:
            raise at.fail(
                f"unable to parse integer {text}: strconv.ParseInt: parsing "
                f'"{text}": value out of range',
                start,
            )
    elif is_unsigned:
        if not limits.allow_unsigned:
            raise at.fail(
                "invalid number (unsigned integers like 5u are refused by InfluxDB 1.x)", start
            )
        if buf[i - 1] != "u" or buf[start] == "-":
            raise at.fail("invalid number", start)
        text = buf[start : i - 1]
        if len(text) >= 20 and _int(text) > UINT64_MAX:
            raise at.fail(
                f"unable to parse unsigned {text}: strconv.ParseUint: parsing "
                f'"{text}": value out of range',
                start,
            )
    elif (scientific or i - start >= 25) and _go_float(buf[start:i]) is None:
        raise at.fail("invalid float", start)
    return i


def _int(text: str) -> int:
    """``int(text)`` of ``[+-]?[0-9]+`` of any length, as Go reads it (leading zeros are free;
    Python's ``int`` refuses 4,300+ digits); beyond 20 significant digits: +-10**20."""
    if len(text) < 20:
        return int(text)
    digits = text.lstrip("+-").lstrip("0")
    value = int(digits or "0") if len(digits) <= 20 else 10**20
    return -value if text[0] == "-" else value


def _go_float(text: str) -> float | None:
    """Go's ``strconv.ParseFloat`` on the characters a number scan lets through."""
    try:
        value = float(text)
    except ValueError:
        return None
    if value in (float("inf"), float("-inf")):
        return None  # Go: ErrRange
    return value


def _scan_boolean(buf: str, i: int, at: _Line) -> int:
    n = len(buf)
    start = i
    if buf[i] not in "tfTF":
        raise at.fail("invalid boolean", i)
    i += 1
    while i < n and buf[i] != "," and buf[i] != " ":
        i += 1
    if i - start == 1:
        return i
    if buf[start:i] not in _TRUE and buf[start:i] not in _FALSE:
        raise at.fail("invalid boolean", start)
    return i


def _scan_time(
    buf: str, i: int, at: _Line, precision_factor: int, default_time_ns: int | None
) -> int:
    n = len(buf)
    start = _skip_blank(buf, i)
    i = start
    while i < n:
        c = buf[i]
        if c == "\n" or c == " ":
            break
        if i == start and c == "-":
            i += 1
            continue
        if c not in _DIGITS:
            raise at.fail("bad timestamp", i)
        i += 1
    raw = buf[start:i]
    if not raw:
        if default_time_ns is None:
            raise at.fail("missing timestamp", i)
        return default_time_ns - default_time_ns % precision_factor
    if raw == "-":
        raise at.fail('strconv.ParseInt: parsing "-": invalid syntax', start)
    value = _int(raw)
    if not INT64_MIN <= value <= INT64_MAX:
        raise at.fail(f'strconv.ParseInt: parsing "{raw}": value out of range', start)
    time_ns = value * precision_factor
    if not MIN_TIME_NS <= time_ns <= MAX_TIME_NS:
        raise at.fail(_TIME_RANGE, start)
    for k in range(i, n):
        if buf[k] != " ":
            raise at.fail("point is invalid", k)
    return time_ns


def walk_fields(fields: str, at: _Line, offset: int) -> list[tuple[str, str, int]]:
    """InfluxDB's ``walkFields``: ``(raw key, raw value, key index)`` per field, read the way
    InfluxDB reads them back (a key ends at the first ``=`` not right after a backslash)."""
    out: list[tuple[str, str, int]] = []
    n = len(fields)
    pos = 0
    while pos < n:
        j = pos
        while j < n and not (fields[j] == "=" and (j == pos or fields[j - 1] != "\\")):
            j += 1
        key = fields[pos:j]
        if j - pos > n - pos - 2:
            raise at.fail(f"invalid value: field-key={key}", offset + pos)
        k = j + 1
        quoted = False
        while k < n:
            c = fields[k]
            if c == "\\" and k + 1 < n and fields[k + 1] in '"\\':
                k += 2
                continue
            if c == '"':
                quoted = not quoted
            elif c == "," and not quoted:
                break
            k += 1
        out.append((key, fields[j + 1 : k], offset + pos))
        pos = k + 1
    return out


_TYPE_NAMES: Final = {
    float: "float",
    int: "integer",
    Unsigned: "unsigned",
    bool: "boolean",
    str: "string",
}


def field_values(scanned: ScannedLine, lineno: int, limits: Limits) -> dict[str, FieldValue]:
    """The fields of a scanned line as InfluxDB stores them (a later duplicate key wins).

    Refused beyond InfluxDB: a field key ``time`` (InfluxDB 1.x drops it, or the point when
    it is the only field), one key with two types (InfluxDB drops the point), and fields that
    InfluxDB's two field readers split differently (an empty key or value)."""
    at = _Line(lineno, 0, scanned.text)
    out: dict[str, FieldValue] = {}
    for raw_key, raw, pos in walk_fields(scanned.fields, at, scanned.fields_at):
        key = unescape_name(raw_key)
        if not raw:
            raise at.fail("invalid field format (an empty field value)", pos)
        if key == "time":
            raise at.fail(
                'invalid field name: input field "time" on measurement '
                f'"{scanned.measurement}" is invalid',
                pos,
            )
        if "\\" in key and not field_key_writes_back(key):
            raise at.fail(
                f"field key {key!r} cannot be written to the downsampled tiers: InfluxDB's "
                "two field readers split its escaped form differently",
                pos,
            )
        value = _field_value(raw, limits)
        if value is None:
            raise at.fail(f"invalid field value {raw!r} for field {key!r}", pos)
        if key in out:
            before = type(out[key])
            if before is not type(value):
                raise at.fail(
                    f'field type conflict: input field "{key}" on measurement '
                    f'"{scanned.measurement}" is type {_TYPE_NAMES[type(value)]}, '
                    f"already exists as type {_TYPE_NAMES[before]}",
                    pos,
                )
        out[key] = value
    return out


def field_key_writes_back(key: str) -> bool:
    """Whether ``key`` escaped (as the tiers write it, e.g. ``mean_<key>``) reads back."""
    try:
        probe = "m x_" + escape_field_key(key) + "=1"
    except SerializationError:
        return False
    at = _Line(1, 0, probe)
    try:
        end, fields = _scan_fields(probe, 1, at, Limits())
        pairs = walk_fields(fields, at, 2)
    except ParseError:
        return False
    return end == len(probe) and [unescape_name(k) for k, _v, _p in pairs] == ["x_" + key]


def _field_value(raw: str, limits: Limits) -> FieldValue | None:
    """InfluxDB's field iterator: the type from the first and last character, then the value."""
    c = raw[0]
    if c == '"':
        if len(raw) < 2:
            return None
        return unescape_string(raw[1:-1])
    if c in _FLOAT_START:
        last = raw[-1]
        if last == "i":
            if not _GO_INT.fullmatch(raw, 0, len(raw) - 1):
                return None
            ivalue = _int(raw[:-1])
            return ivalue if INT64_MIN <= ivalue <= INT64_MAX else None
        if last == "u":
            if not _GO_UINT.fullmatch(raw, 0, len(raw) - 1):
                return None
            uvalue = _int(raw[:-1])
            return Unsigned(uvalue) if uvalue <= UINT64_MAX else None
        return _go_float(raw) if _GO_FLOAT.fullmatch(raw) else None
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    return None
