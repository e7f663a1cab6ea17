"""hypothesis strategies for line-protocol bodies as clients write them, and as they get them
wrong: escapes (including escaped backslashes before separators), unicode, every field type
and its spellings, edge timestamps, missing timestamps, blanks, comments, newlines inside
strings, reserved keys, random damage.

Each line's measurement starts with a plain prefix ``L§_<body>_<line>_`` (the caller
replaces ``§`` by the batch number) so that what InfluxDB stored can be traced back to the
line it came from. Field types follow the field
key (one type per key everywhere) so that queries over many measurements show every value.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

from hypothesis import strategies as st

from metricsflow.model.lineprotocol import MAX_TIME_NS, MIN_TIME_NS, PRECISION_V1

PRECISIONS = sorted(PRECISION_V1)

_PIECES = [
    *"abcxyz09_-.:/é√€",
    "\\,",
    "\\ ",
    "\\=",
    '\\"',
    "\\\\",
    "\\\\ ",
    "\\\\,",
    "\\\\=",
    "\\",
    "=",
    ",",
    " ",
    '"',
    "#",
    "\t",
    "😀",
]
name_part = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=5).map("".join)
plain = st.text("abcdefghkmnpqrs", min_size=1, max_size=4)
rarely_time = st.one_of(*[plain] * 9, st.just("time"))
tag_key = st.one_of(rarely_time, rarely_time, name_part)
tag_value = st.one_of(plain, plain, name_part, st.just("=x"))
field_key = st.one_of(rarely_time, rarely_time, rarely_time, name_part)

FLOATS = [
    "1",
    "-1.5",
    ".5",
    "1.",
    "1e5",
    "1E-3",
    "00.5",
    "-0",
    "1e400",
    "1e-400",
    "12345678901234567890123456",
    "1.2.3",
    "-",
    ".",
    "1e",
    "nan",
    "-.5e+3",
    "5.e1",
]
INTS = [
    "5i",
    "-5i",
    "0i",
    "9223372036854775807i",
    "-9223372036854775808i",
    "9223372036854775808i",
    "1i5",
    "-i",
    "00012i",
    "1.5i",
]
UINTS = ["5u", "0u", "18446744073709551615u", "18446744073709551616u", "-1u"]
BOOLS = ["t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE", "tRUE", "yes"]
string_body = st.lists(
    st.sampled_from([*"ab é😀,= ", '\\"', "\\\\", "\\", "\n", "\\n", '"']), max_size=6
).map("".join)
STRINGS = st.one_of(string_body.map(lambda s: f'"{s}"'), st.just('"unterminated'))


def _kind(key: str) -> int:
    return zlib.crc32(key.encode()) % 5


def _value_strategy(kind: int) -> st.SearchStrategy[str]:
    base = [
        st.sampled_from(FLOATS),
        st.sampled_from(INTS),
        st.sampled_from(UINTS),
        st.sampled_from(BOOLS),
        STRINGS,
    ][kind]
    # now and then a value of another type (a type conflict within a line, or a bad value)
    return st.one_of(base, base, base, st.sampled_from(FLOATS + INTS + BOOLS))


# Strategies are built once, not inside the composites below: a strategy built per draw is
# validated again each time, which cost most of the generation time of 2,000+ bodies.
_VALUES = [_value_strategy(kind) for kind in range(5)]


def _value_for(key: str) -> st.SearchStrategy[str]:
    return _VALUES[_kind(key)]


_FIELD_KEYS = st.lists(field_key, min_size=1, max_size=3)


@st.composite
def fields(draw: st.DrawFn) -> str:
    keys = draw(_FIELD_KEYS)
    return ",".join(f"{k}={draw(_value_for(k))}" for k in keys)


TIMESTAMPS = [
    "0",
    "-1",
    "1",
    "1700000000",
    "1700000000123",
    "1700000000123456789",
    str(MIN_TIME_NS),
    str(MAX_TIME_NS),
    str(MIN_TIME_NS - 1),
    str(MAX_TIME_NS + 1),
    "9223372036854775808",
    "-",
    "12x",
    "0001",
]


@dataclass(frozen=True)
class Body:
    text: str
    precision: str


_MEASUREMENT = st.one_of(st.just(""), name_part)
_TAGS = st.lists(st.tuples(tag_key, tag_value), max_size=3)
_SEPARATOR = st.sampled_from([" ", " ", " ", "  ", " \t"])
_FIELDS = fields()
_BEFORE_TIME = st.sampled_from([" ", " ", "  "])
_LINE_END = st.sampled_from(["", "", "", "", " ", "\r", "\t"])
_ONE_IN_TEN = st.integers(0, 9)
_DAMAGE = st.sampled_from([*_PIECES, "\n", "i", "u"])
_LEADING = st.sampled_from(["", "", "", "", " ", "\t"])


@functools.cache
def _timestamp(timestamps: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.one_of(st.just(""), st.sampled_from(timestamps))


@functools.cache
def _line_after_prefix(timestamps: tuple[str, ...]) -> st.SearchStrategy[tuple[str, str]]:
    return _line_parts(timestamps)


@st.composite
def _line_parts(draw: st.DrawFn, timestamps: tuple[str, ...]) -> tuple[str, str]:
    """(leading blanks, the line after its measurement's prefix)."""
    meas = draw(_MEASUREMENT)
    tags = draw(_TAGS)
    tag_text = "".join(f",{k}={v}" for k, v in tags)
    ts = draw(_timestamp(timestamps))
    sep = draw(_SEPARATOR)
    text = f"{meas}{tag_text}{sep}{draw(_FIELDS)}"
    if ts:
        text += draw(_BEFORE_TIME) + ts
    text += draw(_LINE_END)
    if draw(_ONE_IN_TEN) == 0:  # damage: a piece inserted somewhere after the prefix
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(_DAMAGE) + text[at:]
    return draw(_LEADING), text


_LINES = st.integers(1, 4)
_ONE_IN_SIX = st.integers(0, 5)
_BLANK_OR_COMMENT = st.sampled_from(["", "# comment", "  ", "\t# x"])


@functools.cache
def _precision(precisions: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(precisions)


@st.composite
def body(
    draw: st.DrawFn,
    number: int,
    timestamps: list[str] = TIMESTAMPS,
    precisions: list[str] = PRECISIONS,
) -> Body:
    n = draw(_LINES)
    parts = _line_after_prefix(tuple(timestamps))
    lines = []
    for i in range(n):
        lead, rest = draw(parts)
        lines.append(f"{lead}L§_{number}_{i}_{rest}")
    if draw(_ONE_IN_SIX) == 0:
        lines.insert(draw(st.integers(0, n)), draw(_BLANK_OR_COMMENT))
    return Body("\n".join(lines), draw(_precision(tuple(precisions))))


def bodies(
    count: int,
    first: int = 0,
    timestamps: list[str] = TIMESTAMPS,
    precisions: list[str] = PRECISIONS,
) -> st.SearchStrategy[list[Body]]:
    return st.tuples(*(body(first + i, timestamps, precisions) for i in range(count))).map(list)
