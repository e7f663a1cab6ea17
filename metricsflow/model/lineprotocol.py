"""InfluxDB line protocol, read exactly as InfluxDB 1.x reads it.

Grammar (InfluxDB 1.x ``models/points.go``)::

    line   = measurement ("," tag_key "=" tag_value)* " " field ("," field)* [" " timestamp]
    field  = field_key "=" (float | integer "i" | unsigned "u" | boolean | '"' string '"')

The rules that matter, all InfluxDB's (docs/ingestion.md lists them with examples):

* **Lines.** A body is split at newlines that are neither inside a quoted field value nor
  right after a backslash (so a string field may hold a newline). Leading spaces, tabs and
  NUL bytes are skipped; empty lines and lines starting with ``#`` are skipped. A carriage
  return is an ordinary byte (so ``\\r\\n`` bodies are refused, as InfluxDB refuses them).
* **Escapes.** A separator (space, comma, ``=`` in tags) is escaped when the character just
  before it is a backslash. Names are then unescaped as :mod:`~metricsflow.model.escaping`
  says (``cpu\\=load`` is measurement ``cpu=load``).
* **Values.** Numbers as InfluxDB scans them (``1``, ``-1.5``, ``.5``, ``1.``, ``1e5``,
  ``5i``; digits checked for range only where InfluxDB checks them); booleans ``t T true True
  TRUE f F false False FALSE``; strings in double quotes with ``\\"`` and ``\\\\``. Unsigned
  ``5u`` only with ``allow_unsigned`` (InfluxDB 2.x); InfluxDB 1.x refuses them.
* **Timestamp.** Optional integer in the request's precision; range
  ``[MinInt64+2, MaxInt64-1]`` ns. A line without one gets the receive time truncated to the
  precision (InfluxDB's ``SetPrecision``).
* **Keys.** Tags are sorted by key; duplicate tag keys are refused; the series key may not
  exceed 65,535 bytes (also with ``4 + len(field key)`` added).

Beyond InfluxDB (a refusal where InfluxDB would store something surprising; each in
docs/ingestion.md): a tag or field key ``time``; one field key with two types in a line; a
line that cannot be written back so that InfluxDB reads the same point; the gateway's
per-line limits (:class:`Limits`).

Output: :func:`canonicalize` returns, per valid line, its *series key* (measurement and sorted
tags, escaped, see :func:`~metricsflow.model.escaping.series_key`) and its *canonical line*:
that series key, the field section exactly as the client wrote it, and the timestamp in
nanoseconds. InfluxDB reads a canonical line as the same point as the original (checked for
every line off the fast path). Errors are :class:`~metricsflow.errors.ParseError` with the
1-based line and column and InfluxDB's reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Final

from metricsflow.errors import ParseError, SerializationError
from metricsflow.model.escaping import (
    escape_field_key,
    escape_measurement,
    escape_string,
    escape_tag,
    series_key,
)
from metricsflow.model.lpscan import (
    MAX_TIME_NS,
    MIN_TIME_NS,
    Limits,
    ScannedLine,
    field_key_writes_back,
    field_values,
    line_end_after,
    scan_point,
    split_lines,
)
from metricsflow.model.native import NATIVE
from metricsflow.model.native import native as _native
from metricsflow.model.point import FieldValue, Point, Unsigned

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_TIME_NS",
    "MIN_TIME_NS",
    "NATIVE",
    "PRECISION_V1",
    "PRECISION_V2",
    "Canonical",
    "Limits",
    "canonical_lines",
    "canonicalize",
    "canonicalize_python",
    "escape_field_key",
    "escape_key",
    "escape_measurement",
    "escape_tag",
    "format_point",
    "format_points",
    "format_value",
    "line_end_after",
    "parse",
    "parse_line",
    "series_key",
    "split_lines",
]

PRECISION_V1: Final[dict[str, int]] = {
    "n": 1,
    "ns": 1,
    "u": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
"""v1 ``/write`` precision names (``ns`` too: InfluxDB 1.x reads any unknown name as ns)."""
PRECISION_V2: Final[dict[str, int]] = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
}
"""v2 ``/api/v2/write`` precision names."""

DEFAULT_LIMITS: Final = Limits()
escape_key = escape_tag
"""Compatibility name: a tag key or value escaped (see :func:`escape_tag`)."""


# --------------------------------------------------------------------------- serializer
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
    return escape_string(value)


def format_point(point: Point) -> str:
    """Canonical line protocol of a point built in code: sorted tags and fields, ns time."""
    for k, _v in point.fields:
        if "\\" in k and not field_key_writes_back(k):
            raise SerializationError(
                f"line protocol cannot represent the field key {k!r} (InfluxDB's two field "
                "readers would split it differently)"
            )
    fields = ",".join(f"{escape_field_key(k)}={format_value(v)}" for k, v in point.fields)
    if fields[:1] in ("\t", "\x00"):  # InfluxDB skips blanks before the first field
        raise SerializationError(f"line protocol cannot represent the field key {fields!r}")
    return f"{series_key(point.measurement, point.tags)} {fields} {point.time_ns}"


def format_points(points: Iterable[Point]) -> str:
    return "\n".join(format_point(p) for p in points)


# --------------------------------------------------------------------------- exact parser
def _to_point(scanned: ScannedLine, lineno: int, limits: Limits) -> Point:
    values = field_values(scanned, lineno, limits)
    return Point(
        scanned.measurement,
        tuple(sorted(scanned.tags)),
        tuple(sorted(values.items())),
        scanned.time_ns,
    )


def parse_line(
    line: str,
    *,
    lineno: int = 1,
    precision_factor: int = 1,
    default_time_ns: int | None = None,
    limits: Limits | None = None,
) -> Point | None:
    """Parse one line exactly; ``None`` for a blank or comment line.

    The timestamp is multiplied by ``precision_factor``; a missing one becomes
    ``default_time_ns`` truncated to the precision (an error when that is ``None``).
    """
    lim = limits or DEFAULT_LIMITS
    scanned = scan_point(
        line,
        lineno=lineno,
        precision_factor=precision_factor,
        default_time_ns=default_time_ns,
        limits=lim,
    )
    return None if scanned is None else _to_point(scanned, lineno, lim)


def parse(
    body: bytes | str,
    *,
    precision_factor: int = 1,
    default_time_ns: int | None = None,
    limits: Limits | None = None,
) -> list[Point]:
    """Parse a whole body exactly; the first bad line raises :class:`ParseError`."""
    lim = limits or DEFAULT_LIMITS
    points: list[Point] = []
    for lineno, block in split_lines(_decode(body)[0]):
        p = parse_line(
            block,
            lineno=lineno,
            precision_factor=precision_factor,
            default_time_ns=default_time_ns,
            limits=lim,
        )
        if p is not None:
            points.append(p)
    return points


# --------------------------------------------------------------------------- canonicalizer
@dataclass(slots=True)
class Canonical:
    """The valid lines of a body (``series_keys[i]`` is the key of ``lines[i]``) and the
    errors of the refused ones, in body order."""

    series_keys: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    errors: list[ParseError] = field(default_factory=list)

    def raise_first(self) -> None:
        """All or nothing: raise the first error, if any."""
        if self.errors:
            raise self.errors[0]


# A strict subset of the grammar, for the C regex engine: no escapes, no quotes, no leading
# blanks, plain numbers with bounded digits (no range check needed), no unsigned. A line it
# matches is read by InfluxDB exactly as the fast path reads it.
NAME_PATTERN: Final = r'[^ ,="\\\n]+'
NUM_PATTERN: Final = (
    r"(?>-?(?:[0-9]{1,15}+(?:\.[0-9]{0,17}+)?|\.[0-9]{1,17}+)(?:[eE][+-]?[0-9]{1,2}+)?+(?![iu0-9])"
    r"|-?[0-9]{1,18}+i|t(?:rue)?|T(?:rue|RUE)?|f(?:alse)?|F(?:alse|ALSE)?)(?=[ ,]|$)"
)
FIELD_KEY_PATTERN: Final = r'[^ ,="\\\n\t\x00][^ ,="\\\n]*+'
MEASUREMENT_PATTERN: Final = r'[^ \t,"\\#\n\x00][^ ,"\\\n]*+'
FIELDS_PATTERN: Final = rf"{FIELD_KEY_PATTERN}={NUM_PATTERN}(?:,{NAME_PATTERN}={NUM_PATTERN})*+"
_FAST_BODY: Final = (
    rf"({MEASUREMENT_PATTERN})((?:,{NAME_PATTERN}={NAME_PATTERN})*+) ({FIELDS_PATTERN})"
    r"(?: (-?[1-9][0-9]{0,18}+|0))?"
)
_FAST_RE: Final = re.compile(_FAST_BODY)
_FAST_ALL_RE: Final = re.compile(rf"^({_FAST_BODY})$", re.MULTILINE)
_FIELD_KEYS_RE: Final = re.compile(r"(?:^|,)([^=]*)=")
_DUP_FIELD_RE: Final = re.compile(
    r"^[^ \n]+ (?:[^ ,\n]*,){0,62}([^=, \n]+)=[^, \n]*,(?:[^ ,\n]*,){0,62}\1=", re.M
)
"""A line of a plain body naming one field key twice (bounded: lines of at most 63 fields,
see ``_MANY_FIELDS_RE``, so the search stays linear in the body)."""
_MANY_FIELDS_RE: Final = re.compile(r"^[^ \n]+ (?:[^ ,\n]*,){63}", re.M)
_FAST_MAX_LINE: Final = 16_000
"""Longer fast-path lines have their key and tag value lengths measured (``_long_line_ok``)."""

_TAG_CACHE_SIZE: Final = 200_000
_TAG_CACHE: dict[str, str | None] = {}
"""Fast-path tag sections (``,k=v,...``) -> their sorted form (``None``: duplicate keys)."""


def _tag_key(pair: str) -> str:
    return pair[: pair.index("=")]


def _sorted_tags(tagstr: str) -> str | None:
    """``tagstr`` itself when its keys are sorted, its sorted form, or ``None`` (dups)."""
    if tagstr.count(",") < 2:
        return tagstr
    keys = tagstr[1:].replace("=", ",").split(",")[::2]
    if len(set(keys)) != len(keys):
        return None
    if keys == sorted(keys):
        return tagstr
    return "," + ",".join(sorted(tagstr[1:].split(","), key=_tag_key))


def _fast_fields_ok(fieldstr: str, max_fields: int) -> bool:
    """No field key twice with two types (InfluxDB drops such a point), within the limit."""
    if "," not in fieldstr:
        return True
    keys = _FIELD_KEYS_RE.findall(fieldstr)
    if len(keys) > max_fields:
        return False
    return len(set(keys)) == len(keys)  # duplicates: the exact path checks their types


def _long_line_ok(groups: tuple[str, ...], limits: Limits) -> bool:
    """A long fast-path line within the key (bytes, InfluxDB's rule) and tag value limits."""
    meas, tagstr, fieldstr = groups[0], groups[1], groups[2]
    if tagstr and max(map(len, tagstr.split("="))) > limits.max_tag_value_length:
        return False
    key_bytes = len((meas + tagstr).encode())
    longest = max(len(k.encode()) for k in _FIELD_KEYS_RE.findall(fieldstr))
    return key_bytes + 4 + longest <= limits.max_key_length


def canonicalize(
    body: bytes | str,
    *,
    precision_factor: int = 1,
    default_time_ns: int,
    limits: Limits | None = None,
) -> Canonical:
    """Validate every line of a body; return the valid ones canonical and the errors.

    A canonical line is the series key, the client's field section and the timestamp in ns
    (the input line itself when it already is that). A line without a timestamp gets
    ``default_time_ns`` truncated to the precision.

    Runs the compiled scanner (``metricsflow_lp``, built from ``native/lp`` by ``make deps``)
    when it is installed: it settles the lines it can read and hands every other line (all
    refused ones among them) to the exact scanner here, so the result is always
    :func:`canonicalize_python`'s (``tests/model/test_lp_native.py``).
    """
    lim = limits or DEFAULT_LIMITS
    if _native is not None:
        found = _canonicalize_native(_native, body, precision_factor, default_time_ns, lim)
        if found is not None:
            return found
    return canonicalize_python(
        body, precision_factor=precision_factor, default_time_ns=default_time_ns, limits=lim
    )


def _canonicalize_native(
    native: ModuleType,
    body: bytes | str,
    precision_factor: int,
    default_time_ns: int,
    lim: Limits,
) -> Canonical | None:
    """The compiled scanner's answer, its deferred lines read by the exact scanner; ``None``
    when it does not take the body (not UTF-8, a limit beyond 64 bits)."""
    if isinstance(body, str):
        try:
            data = body.encode("utf-8")
        except UnicodeEncodeError:
            return None
    else:
        data = body
    limits = (
        lim.max_line_length,
        lim.max_tags,
        lim.max_fields,
        lim.max_key_length,
        lim.max_tag_value_length,
        lim.allow_unsigned,
        lim.min_time_ns,
        lim.max_time_ns,
    )
    try:
        found = native.canonicalize(data, precision_factor, default_time_ns, limits)
    except OverflowError:
        return None
    if found is None:
        return None
    keys, lines, deferred = found
    if not deferred:
        return Canonical(keys, lines)
    out = Canonical()
    done = 0
    for index, lineno, start, end in deferred:
        out.series_keys.extend(keys[done:index])
        out.lines.extend(lines[done:index])
        done = index
        line = data[start:end].decode("utf-8")
        _exact_line(line, lineno, precision_factor, default_time_ns, lim, out)
    out.series_keys.extend(keys[done:])
    out.lines.extend(lines[done:])
    return out


def canonicalize_python(
    body: bytes | str,
    *,
    precision_factor: int = 1,
    default_time_ns: int,
    limits: Limits | None = None,
) -> Canonical:
    """:func:`canonicalize` in Python alone: the reference implementation (the compiled
    scanner is tested against it), and the path when ``metricsflow_lp`` is not installed."""
    lim = limits or DEFAULT_LIMITS
    text, invalid_utf8 = _decode(body)
    out = Canonical()
    keys = out.series_keys
    lines_out = out.lines
    truncated_default = default_time_ns - default_time_ns % precision_factor
    plain = '"' not in text and "\\" not in text
    blocks = list(enumerate(text.split("\n"), 1)) if plain else split_lines(text)
    max_tags = lim.max_tags
    max_fields = lim.max_fields
    # lines this short cannot break the key or tag value limits; longer ones are measured
    short = min(_FAST_MAX_LINE, lim.max_key_length // 4 - 4, lim.max_tag_value_length)
    max_line = lim.max_line_length
    tag_cache = _TAG_CACHE
    fast = _FAST_RE.fullmatch
    min_time, max_time = lim.min_time_ns, lim.max_time_ns
    fast_ok = not invalid_utf8 and ",time=" not in text and " time=" not in text
    rows: list[tuple[str, str, str, str, str]] | None = None
    if plain and fast_ok and len(text) > 200:
        # one C-level pass over the whole body; used when every line is in the subset
        found = _FAST_ALL_RE.findall(text)
        if len(found) == len(blocks):
            rows = found
    dup_free = (
        rows is not None
        and _MANY_FIELDS_RE.search(text) is None
        and _DUP_FIELD_RE.search(text) is None
    )
    for lineno, line in blocks:
        groups: tuple[str, ...] | None = None
        if rows is not None:
            groups = rows[lineno - 1][1:]
        elif len(line) <= max_line and fast_ok:
            m = fast(line)
            if m is not None:
                groups = m.groups("")
        if groups is not None and (
            len(line) <= short or (len(line) <= max_line and _long_line_ok(groups, lim))
        ):
            meas, tagstr, fieldstr, ts = groups
            canonical = True
            sk = meas + tagstr
            ok = True
            if tagstr:
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
            if ok and (
                fieldstr.count(",") < max_fields
                if dup_free
                else _fast_fields_ok(fieldstr, max_fields)
            ):
                if not ts:
                    time_ns = truncated_default
                    canonical = False
                elif precision_factor == 1:
                    time_ns = int(ts)
                else:
                    time_ns = int(ts) * precision_factor
                    canonical = False
                if min_time <= time_ns < max_time:
                    keys.append(sk)
                    lines_out.append(line if canonical else f"{sk} {fieldstr} {time_ns}")
                    continue
        # exact path: anything unusual, and every error
        _exact_line(line, lineno, precision_factor, default_time_ns, lim, out)
    return out


def _exact_line(
    line: str,
    lineno: int,
    precision_factor: int,
    default_time_ns: int,
    limits: Limits,
    out: Canonical,
) -> None:
    """One line through the exact scanner: appended to ``out`` canonical, or as an error."""
    try:
        scanned = scan_point(
            line,
            lineno=lineno,
            precision_factor=precision_factor,
            default_time_ns=default_time_ns,
            limits=limits,
        )
        if scanned is None:
            return
        field_values(scanned, lineno, limits)
        canonical_line = _write_back(scanned, lineno, limits)
    except ParseError as exc:
        out.errors.append(exc)
        return
    out.series_keys.append(scanned.series_key)
    out.lines.append(canonical_line)


def _write_back(scanned: ScannedLine, lineno: int, limits: Limits) -> str:
    """The canonical line of ``scanned``, verified to read back as the same point."""
    try:
        sk = scanned.series_key
    except SerializationError as exc:  # pragma: no cover - names read from a line round-trip
        raise ParseError(str(exc), line=lineno, column=1, text=scanned.text[:40]) from None
    head = f"{sk}{scanned.separator}{scanned.fields}"
    line = f"{head} {scanned.time_ns}"
    if scanned.text.startswith(head):
        return line  # key and fields exactly as the client wrote them: InfluxDB reads the same
    again: ScannedLine | None
    try:
        if "\n" in line and split_lines(line) != [(1, line)]:
            again = None
        else:
            again = scan_point(line, lineno=lineno, limits=limits)
    except ParseError:
        again = None
    if (
        again is None
        or again.measurement != scanned.measurement
        or sorted(again.tags) != sorted(scanned.tags)
        or again.time_ns != scanned.time_ns
        or again.fields != scanned.fields
    ):
        raise ParseError(
            "the line cannot be written back so that InfluxDB reads the same point "
            "(ambiguous escaping)",
            line=lineno,
            column=1,
            text=scanned.text[:80],
        )
    return line


def _decode(body: bytes | str) -> tuple[str, bool]:
    """The body as text and whether it holds invalid UTF-8 (kept as lone surrogates, which
    the exact scanner refuses line by line)."""
    if isinstance(body, str):
        return body, False
    try:
        return body.decode("utf-8"), False
    except UnicodeDecodeError:
        return body.decode("utf-8", "surrogateescape"), True


def canonical_lines(points: Sequence[Point]) -> tuple[list[str], list[str]]:
    """``(series_keys, canonical_lines)`` for points built in code (the JSON endpoint)."""
    return [series_key(p.measurement, p.tags) for p in points], [format_point(p) for p in points]
