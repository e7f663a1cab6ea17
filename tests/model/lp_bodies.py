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


def _value_for(key: str) -> st.SearchStrategy[str]:
    kind = _kind(key)
    base = [
        st.sampled_from(FLOATS),
        st.sampled_from(INTS),
        st.sampled_from(UINTS),
        st.sampled_from(BOOLS),
        STRINGS,
    ][kind]
    # now and then a value of another type (a type conflict within a line, or a bad value)
    return st.one_of(base, base, base, st.sampled_from(FLOATS + INTS + BOOLS))


@st.composite
def fields(draw: st.DrawFn) -> str:
    keys = draw(st.lists(field_key, min_size=1, max_size=3))
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


@st.composite
def line(draw: st.DrawFn, prefix: str, timestamps: list[str]) -> str:
    meas = prefix + draw(st.one_of(st.just(""), name_part))
    tags = draw(st.lists(st.tuples(tag_key, tag_value), max_size=3))
    tag_text = "".join(f",{k}={v}" for k, v in tags)
    ts = draw(st.one_of(st.just(""), st.sampled_from(timestamps)))
    sep = draw(st.sampled_from([" ", " ", " ", "  ", " \t"]))
    text = f"{meas}{tag_text}{sep}{draw(fields())}"
    if ts:
        text += draw(st.sampled_from([" ", " ", "  "])) + ts
    text += draw(st.sampled_from(["", "", "", "", " ", "\r", "\t"]))
    if draw(st.integers(0, 9)) == 0:  # damage: a piece inserted somewhere after the prefix
        at = draw(st.integers(len(prefix), len(text)))
        text = text[:at] + draw(st.sampled_from([*_PIECES, "\n", "i", "u"])) + text[at:]
    return draw(st.sampled_from(["", "", "", "", " ", "\t"])) + text


@st.composite
def body(
    draw: st.DrawFn,
    number: int,
    timestamps: list[str] = TIMESTAMPS,
    precisions: list[str] = PRECISIONS,
) -> Body:
    n = draw(st.integers(1, 4))
    lines = [draw(line(f"L§_{number}_{i}_", timestamps)) for i in range(n)]
    if draw(st.integers(0, 5)) == 0:
        lines.insert(
            draw(st.integers(0, n)), draw(st.sampled_from(["", "# comment", "  ", "\t# x"]))
        )
    return Body("\n".join(lines), draw(st.sampled_from(precisions)))


def bodies(
    count: int,
    first: int = 0,
    timestamps: list[str] = TIMESTAMPS,
    precisions: list[str] = PRECISIONS,
) -> st.SearchStrategy[list[Body]]:
    return st.tuples(*(body(first + i, timestamps, precisions) for i in range(count))).map(list)
