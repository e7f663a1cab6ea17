"""InfluxDB line protocol: an exact parser, a fast canonicalizer, and a serializer.

Grammar (InfluxDB 1.x ``models/points.go`` and the 2.x reference)::

    line      = measurement ("," tag_key "=" tag_value)* " " field ("," field)* [" " timestamp]
    field     = field_key "=" value
    value     = float | integer "i" | unsigned "u" | boolean | '"' string '"'

* Measurement: ``,`` and space are escaped with ``\\``. Tag keys, tag values, field keys:
  ``,``, ``=`` and space are escaped. A backslash before any other character is kept
  literally (as InfluxDB does). String field values escape ``"`` and ``\\``.
* Floats: ``-?(digits[.digits]|.digits)([eE][+-]?digits)?``; no ``inf``/``nan``.
  Integers: ``-?digits i`` (int64). Unsigned: ``digits u`` (uint64).
  Booleans: ``t T true True TRUE f F false False FALSE``.
* Blank lines and lines starting with ``#`` (after leading blanks) are skipped; CRLF is LF.
* Deliberate deviation: a raw newline inside a quoted string field value is rejected
  (InfluxDB 1.x accepts it); canonical line protocol is strictly one point per line.

Two parsers share this grammar: :func:`parse_line` is the exact, character-by-character
reference used for every line the fast path does not take and for every error; the fast path
in :func:`canonicalize` is a strict *subset* regular expression (plain names, numeric and
boolean values, bounded digits), so it can only accept lines the exact parser accepts.
Errors raise :class:`~metricsflow.errors.ParseError` with 1-based line and column (in
characters) and the offending text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from metricsflow.errors import ParseError, SerializationError
from metricsflow.model.limits import ENGINE_MAX_TIME_NS, ENGINE_MIN_TIME_NS, time_limit_message
from metricsflow.model.point import (
    INT64_MAX,
    INT64_MIN,
    UINT64_MAX,
    FieldValue,
    Point,
    Tags,
    Unsigned,
)

PRECISION_V1: Final[dict[str, int]] = {
    "n": 1,
    "ns": 1,
    "u": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
"""v1 ``/write`` precision names (``ns`` is accepted too, as InfluxDB 1.x does)."""
PRECISION_V2: Final[dict[str, int]] = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
}
"""v2 ``/api/v2/write`` precision names."""

_TRUE: Final = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE: Final = frozenset({"f", "F", "false", "False", "FALSE"})
_FLOAT_RE: Final = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_RE: Final = re.compile(r"-?[0-9]+")
_UINT_RE: Final = re.compile(r"[0-9]+")

_MEAS_ESC: Final = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_ESC: Final = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STR_ESC: Final = str.maketrans({'"': '\\"', "\\": "\\\\"})


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-line limits; exceeding one is reported like a syntax error (line, column, text)."""

    max_line_length: int = 65_536
    max_tags: int = 256
    max_fields: int = 1_024
    max_key_length: int = 256
    """Longest measurement, tag key or field key (characters)."""
    max_tag_value_length: int = 4_096
    min_time_ns: int = ENGINE_MIN_TIME_NS
    """Smallest timestamp accepted (see :mod:`metricsflow.model.limits`)."""
    max_time_ns: int = ENGINE_MAX_TIME_NS
    """First timestamp refused (exclusive bound)."""


DEFAULT_LIMITS: Final = Limits()
MIN_TIME_NS: Final = INT64_MIN + 2
"""Smallest timestamp InfluxDB accepts (``models.MinNanoTime``)."""
MAX_TIME_NS: Final = INT64_MAX - 1
"""Largest timestamp InfluxDB accepts (``models.MaxNanoTime``)."""


# --------------------------------------------------------------------------- serializer
def escape_measurement(name: str) -> str:
    return name.translate(_MEAS_ESC)


def escape_key(name: str) -> str:
    """Escape a tag key, tag value or field key."""
    return name.translate(_KEY_ESC)


def series_key(measurement: str, tags: Tags) -> str:
    """``cpu,host=a,region=eu``: measurement plus tags (already sorted), LP-escaped."""
    parts = [escape_measurement(measurement)]
    parts.extend(f",{escape_key(k)}={escape_key(v)}" for k, v in tags)
    return "".join(parts)


def format_value(value: FieldValue) -> str:
    """The line protocol literal of a field value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Unsigned):
        return f"{int(value)}u"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise SerializationError(f"line protocol cannot represent the float {value!r}")
        return repr(value)
    if "\n" in value:
        raise SerializationError("line protocol cannot represent a newline in a string field")
    return f'"{value.translate(_STR_ESC)}"'


def format_point(point: Point) -> str:
    """Canonical line protocol: sorted tags, sorted fields, timestamp in ns, no newline."""
    fields = ",".join(f"{escape_key(k)}={format_value(v)}" for k, v in point.fields)
    return f"{series_key(point.measurement, point.tags)} {fields} {point.time_ns}"


def format_points(points: Iterable[Point]) -> str:
    return "\n".join(format_point(p) for p in points)


# --------------------------------------------------------------------------- exact parser
def _unescape(raw: str, specials: str) -> str:
    if "\\" not in raw:
        return raw
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == "\\" and i + 1 < n and raw[i + 1] in specials:
            out.append(raw[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _scan(line: str, i: int, stops: str) -> int:
    """Index of the first unescaped char in ``stops`` at or after ``i`` (or len)."""
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c in stops:
            return i
        i += 1
    return n


def _parse_value(raw: str, key: str, lineno: int, col: int) -> FieldValue:
    if _FLOAT_RE.fullmatch(raw):
        value = float(raw)
        if value in (float("inf"), float("-inf")):
            raise ParseError(
                f"float value out of range for field '{key}'", line=lineno, column=col, text=raw
            )
        return value
    last = raw[-1]
    if last == "i" and _INT_RE.fullmatch(raw, 0, len(raw) - 1):
        ivalue = int(raw[:-1])
        if not INT64_MIN <= ivalue <= INT64_MAX:
            raise ParseError(
                f"integer value out of range for field '{key}'", line=lineno, column=col, text=raw
            )
        return ivalue
    if last == "u" and _UINT_RE.fullmatch(raw, 0, len(raw) - 1):
        uvalue = int(raw[:-1])
        if uvalue > UINT64_MAX:
            raise ParseError(
                f"unsigned value out of range for field '{key}'", line=lineno, column=col, text=raw
            )
        return Unsigned(uvalue)
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ParseError(
        f"invalid field value '{raw}' for field '{key}'", line=lineno, column=col, text=raw
    )


def parse_line(
    line: str,
    *,
    lineno: int = 1,
    precision_factor: int = 1,
    default_time_ns: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Point | None:
    """Parse one line exactly; ``None`` for a blank or comment line.

    The timestamp is multiplied by ``precision_factor``; a missing one becomes
    ``default_time_ns`` (an error when that is ``None``).
    """

    def err(msg: str, col0: int, text: str) -> ParseError:
        return ParseError(msg, line=lineno, column=col0 + 1, text=text)

    if line.endswith("\r"):
        line = line[:-1]
    if len(line) > limits.max_line_length:
        raise err(f"line longer than {limits.max_line_length} characters", 0, line[:40])
    start = len(line) - len(line.lstrip(" \t"))
    if start == len(line) or line[start] == "#":
        return None
    # measurement
    i = _scan(line, start, ", ")
    raw_meas = line[start:i]
    if not raw_meas:
        raise err("missing measurement", start, line[start : start + 20])
    measurement = _unescape(raw_meas, ", ")
    if len(measurement) > limits.max_key_length:
        raise err(f"measurement longer than {limits.max_key_length}", start, raw_meas[:40])
    # tags
    tags: dict[str, str] = {}
    n = len(line)
    while i < n and line[i] == ",":
        kstart = i + 1
        j = _scan(line, kstart, ",= ")
        raw_key = line[kstart:j]
        if not raw_key:
            raise err("missing tag key", kstart, line[kstart : kstart + 20])
        if j >= n or line[j] != "=":
            raise err(f"missing tag value for tag '{raw_key}'", kstart, raw_key)
        vstart = j + 1
        i = _scan(line, vstart, ",= ")
        if i < n and line[i] == "=":
            raise err(f"unescaped '=' in tag value for tag '{raw_key}'", i, line[vstart : i + 1])
        raw_val = line[vstart:i]
        if not raw_val:
            raise err(f"missing tag value for tag '{raw_key}'", vstart, raw_key + "=")
        key = _unescape(raw_key, ",= ")
        if len(key) > limits.max_key_length:
            raise err(f"tag key longer than {limits.max_key_length}", kstart, raw_key[:40])
        if len(raw_val) > limits.max_tag_value_length:
            raise err(f"tag value longer than {limits.max_tag_value_length}", vstart, raw_val[:40])
        if key in tags:
            raise err(f"duplicate tag key '{key}'", kstart, raw_key)
        tags[key] = _unescape(raw_val, ",= ")
        if len(tags) > limits.max_tags:
            raise err(f"more than {limits.max_tags} tags", kstart, raw_key)
    # separator
    if i >= n:
        raise err("missing fields", i, line[start:i][-20:])
    while i < n and line[i] == " ":
        i += 1
    if i >= n:
        raise err("missing fields", i, "")
    # fields
    fields: dict[str, FieldValue] = {}
    while True:
        kstart = i
        j = _scan(line, kstart, ",= ")
        raw_key = line[kstart:j]
        if not raw_key:
            raise err("missing field key", kstart, line[kstart : kstart + 20])
        if j >= n or line[j] != "=":
            raise err(f"missing field value for field '{raw_key}'", kstart, raw_key)
        key = _unescape(raw_key, ",= ")
        if len(key) > limits.max_key_length:
            raise err(f"field key longer than {limits.max_key_length}", kstart, raw_key[:40])
        vstart = j + 1
        if vstart < n and line[vstart] == '"':
            k = vstart + 1
            while k < n and line[k] != '"':
                k += 2 if line[k] == "\\" else 1
            if k >= n:
                raise err(
                    f"unterminated string field value for field '{key}'",
                    vstart,
                    line[vstart : vstart + 40],
                )
            raw_str = line[vstart + 1 : k]
            value: FieldValue = _unescape(raw_str, '"\\')
            i = k + 1
            if i < n and line[i] not in ", ":
                raise err(f"invalid field value for field '{key}'", vstart, line[vstart : i + 1])
        else:
            i = _scan(line, vstart, ", ")
            raw_val = line[vstart:i]
            if not raw_val:
                raise err(f"missing field value for field '{key}'", vstart, raw_key + "=")
            value = _parse_value(raw_val, key, lineno, vstart + 1)
        fields[key] = value
        if len(fields) > limits.max_fields:
            raise err(f"more than {limits.max_fields} fields", kstart, raw_key)
        if i < n and line[i] == ",":
            i += 1
            continue
        break
    # timestamp
    while i < n and line[i] == " ":
        i += 1
    end = len(line.rstrip(" \t"))
    if i >= end:
        if default_time_ns is None:
            raise err("missing timestamp", i, "")
        time_ns = default_time_ns
    else:
        raw_ts = line[i:end]
        if not _INT_RE.fullmatch(raw_ts):
            raise err(f"invalid timestamp '{raw_ts}'", i, raw_ts)
        time_ns = int(raw_ts) * precision_factor
        if not limits.min_time_ns <= time_ns < limits.max_time_ns:
            raise err(
                time_limit_message(time_ns, limits.min_time_ns, limits.max_time_ns), i, raw_ts
            )
    return Point(measurement, tuple(sorted(tags.items())), tuple(sorted(fields.items())), time_ns)


def _decode_utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = body[: exc.start]
        lineno = before.count(b"\n") + 1
        line_start = before.rfind(b"\n") + 1
        col = len(before[line_start:].decode("utf-8", "replace")) + 1
        bad = body[exc.start : exc.start + 4]
        raise ParseError("invalid UTF-8", line=lineno, column=col, text=repr(bad)) from None


def split_lines(body: bytes | str) -> list[str]:
    text = _decode_utf8(body) if isinstance(body, bytes) else body
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return text.split("\n")


def parse(
    body: bytes | str,
    *,
    precision_factor: int = 1,
    default_time_ns: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Point]:
    """Parse a whole body exactly; the first bad line raises :class:`ParseError`."""
    points: list[Point] = []
    for n, line in enumerate(split_lines(body), 1):
        p = parse_line(
            line,
            lineno=n,
            precision_factor=precision_factor,
            default_time_ns=default_time_ns,
            limits=limits,
        )
        if p is not None:
            points.append(p)
    return points


# --------------------------------------------------------------------------- fast canonicalizer
# A strict subset of the grammar, written for the C regex engine: no escapes, no quotes,
# bounded digits (no overflow possible), possessive/atomic so it never backtracks far.
NAME_PATTERN: Final = r'[^ ,="\\\n]+'
NUM_PATTERN: Final = (
    r"(?>-?(?:[0-9]{1,15}+(?:\.[0-9]{0,17}+)?|\.[0-9]{1,17}+)(?:[eE][+-]?[0-9]{1,2}+)?+(?![iu0-9])"
    r"|-?[0-9]{1,18}+i|[0-9]{1,19}+u|t(?:rue)?|T(?:rue|RUE)?|f(?:alse)?|F(?:alse|ALSE)?)"
)
MEASUREMENT_PATTERN: Final = r'[^ \t,="\\#\n][^ ,"\\\n]*+'
FIELDS_PATTERN: Final = rf"{NAME_PATTERN}={NUM_PATTERN}(?:,{NAME_PATTERN}={NUM_PATTERN})*+"
_FAST_BODY: Final = (
    rf"({MEASUREMENT_PATTERN})((?:,{NAME_PATTERN}={NAME_PATTERN})*+) ({FIELDS_PATTERN})"
    r"(?: (-?[0-9]{1,19}+))?"
)
_FAST_RE: Final = re.compile(_FAST_BODY)
_FAST_ALL_RE: Final = re.compile(rf"^({_FAST_BODY})$", re.MULTILINE)


def _field_key(pair: str) -> str:
    return pair[: pair.index("=")]


_TAG_CACHE_SIZE: Final = 200_000
_TAG_CACHE: dict[str, str | None] = {}
"""Fast-path tag sections (``,k=v,...``) -> their sorted form (``None``: duplicate keys).

Series repeat, so most lines skip splitting and sorting their tags; bounded (cleared when
full). Only plain (escape-free) tag sections from the fast path are cached."""


def _sorted_tags(tagstr: str) -> str | None:
    """``tagstr`` itself when its keys are sorted, its sorted form, or ``None`` (dups)."""
    if tagstr.count(",") < 2:
        return tagstr
    keys = tagstr[1:].replace("=", ",").split(",")[::2]
    if len(set(keys)) != len(keys):
        return None
    if keys == sorted(keys):
        return tagstr
    return "," + ",".join(sorted(tagstr[1:].split(","), key=_field_key))


def canonicalize(
    body: bytes | str,
    *,
    precision_factor: int = 1,
    default_time_ns: int,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[list[str], list[str]]:
    """Validate a whole body and return ``(series_keys, canonical_lines)``, one per point.

    A canonical line has sorted tags, sorted fields and a nanosecond timestamp; it is the
    input line itself when that already is canonical (no copy). All or nothing: the first
    bad line raises :class:`ParseError`.
    """
    text = _decode_utf8(body) if isinstance(body, bytes) else body
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    text = text.rstrip("\n")
    lines = text.split("\n")
    rows: list[tuple[str, str, str, str, str]] | list[tuple[str, str, str, str, str] | None]
    rows = _FAST_ALL_RE.findall(text)
    if len(rows) != len(lines):
        fast = _FAST_RE.fullmatch
        rows = []
        for line in lines:
            m = fast(line)
            rows.append(None if m is None else (line, *m.groups()))  # type: ignore[arg-type]
    keys: list[str] = []
    out: list[str] = []
    max_len = limits.max_line_length
    max_tags = limits.max_tags
    max_fields = limits.max_fields
    max_key = limits.max_key_length
    max_tval = limits.max_tag_value_length
    short = min(max_key, max_tval, max_len)
    min_time, max_time = limits.min_time_ns, limits.max_time_ns
    tag_cache = _TAG_CACHE
    for lineno, row in enumerate(rows, 1):
        if row is not None:
            line, meas, tagstr, fieldstr, ts = row
            ok = True
            canonical = True
            sk = meas + tagstr
            if len(line) > short:  # only long lines can break a length limit
                kv = (tagstr[1:].replace("=", ",").split(",") if tagstr else []) + [meas]
                ok = (
                    len(line) <= max_len
                    and max(map(len, kv[::2])) <= max_key
                    and max(map(len, kv[1::2]), default=0) <= max_tval
                    and len(meas) <= max_key
                    and max(map(len, fieldstr.replace("=", ",").split(",")[::2])) <= max_key
                )
            if ok and tagstr:
                suffix = tag_cache.get(tagstr, "")
                if suffix == "":
                    suffix = _sorted_tags(tagstr)
                    if len(tag_cache) > _TAG_CACHE_SIZE:
                        tag_cache.clear()
                    tag_cache[tagstr] = suffix
                if suffix is None or tagstr.count(",") > max_tags:
                    ok = False
                elif suffix != tagstr:
                    canonical = False
                    sk = meas + suffix
            if ok and "," in fieldstr:
                fkeys = fieldstr.replace("=", ",").split(",")[::2]
                if len(fkeys) > max_fields or len(set(fkeys)) != len(fkeys):
                    ok = False
                elif fkeys != sorted(fkeys):
                    pairs = fieldstr.split(",")
                    pairs.sort(key=_field_key)
                    fieldstr = ",".join(pairs)
                    canonical = False
            if ok:
                if not ts:
                    time_ns = default_time_ns
                    canonical = False
                elif precision_factor == 1:
                    time_ns = int(ts)
                else:
                    time_ns = int(ts) * precision_factor
                    canonical = False
                if min_time <= time_ns < max_time:
                    keys.append(sk)
                    out.append(line if canonical else f"{sk} {fieldstr} {time_ns}")
                    continue
        # exact path: anything unusual, and every error
        line = lines[lineno - 1]
        p = parse_line(
            line,
            lineno=lineno,
            precision_factor=precision_factor,
            default_time_ns=default_time_ns,
            limits=limits,
        )
        if p is not None:
            sk = series_key(p.measurement, p.tags)
            keys.append(sk)
            try:
                out.append(format_point(p))
            except SerializationError as exc:
                raise ParseError(str(exc), line=lineno, column=1, text=line[:40]) from None
    return keys, out


def canonical_lines(points: Sequence[Point]) -> tuple[list[str], list[str]]:
    """``(series_keys, canonical_lines)`` for points built in code (the JSON endpoint)."""
    return [series_key(p.measurement, p.tags) for p in points], [format_point(p) for p in points]
