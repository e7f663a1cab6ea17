"""The compiled fast paths (``metricsflow_lp``, native/lp) answer exactly as their Python
references.

The line-protocol scanner as the Python canonicalizer: the same series keys, the same
canonical lines, the same errors (line, column, reason, text), on generated bodies (escapes,
unicode, every field type and spelling, edge and missing timestamps, every precision, every
error the generators reach) and on the cases quoted in the issue. It must also *settle* lines
itself: a body it hands back to Python line by line would pass the equivalence and be no
faster, so the plain, escaped and unicode lines below must come back without a deferred line.

The record encoder (partition by Kafka's murmur2, pack ``lp1`` values) as
``encode_partitioned_python``.
"""

from __future__ import annotations

from typing import Any

import metricsflow_lp
import pytest
from aiokafka.partitioner import murmur2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from metricsflow.errors import ParseError, SerializationError
from metricsflow.model.lineprotocol import (
    NATIVE,
    PRECISION_V1,
    Canonical,
    Limits,
    canonicalize,
    canonicalize_python,
)
from metricsflow.model.message import (
    MAX_RECORD_BYTES,
    encode_partitioned,
    encode_partitioned_python,
)
from tests.model.lp_bodies import PRECISIONS, TIMESTAMPS, Body, bodies, name_part

V2 = Limits(allow_unsigned=True)
TIGHT = Limits(
    max_line_length=60,
    max_tags=2,
    max_fields=2,
    max_key_length=40,
    max_tag_value_length=5,
    min_time_ns=0,
    max_time_ns=2_000_000_000_000_000_000,
)
NOW_NS = 1_700_000_000_123_456_789


def _errors(c: Canonical) -> list[tuple[int, int, str, str]]:
    return [(e.line, e.column, e.reason, e.text) for e in c.errors]


def canonicalize_checked(
    text: str | bytes,
    *,
    precision_factor: int = 1,
    default_time_ns: int = NOW_NS,
    limits: Limits | None = None,
) -> Canonical:
    """:func:`canonicalize`, asserted equal to :func:`canonicalize_python` (keys, lines,
    errors); the differential tests read every body through this."""
    kw = {
        "precision_factor": precision_factor,
        "default_time_ns": default_time_ns,
        "limits": limits,
    }
    ours = canonicalize(text, **kw)  # type: ignore[arg-type]
    ref = canonicalize_python(text, **kw)  # type: ignore[arg-type]
    assert ours.series_keys == ref.series_keys, text
    assert ours.lines == ref.lines, text
    assert _errors(ours) == _errors(ref), text
    return ours


def assert_same(text: str | bytes, precision: str = "n", limits: Limits | None = None) -> None:
    canonicalize_checked(text, precision_factor=PRECISION_V1[precision], limits=limits)


def deferred(text: str, limits: Limits | None = None) -> list[tuple[int, int, int, int]]:
    lim = limits or Limits()
    found = metricsflow_lp.canonicalize(
        text.encode(),
        1,
        NOW_NS,
        (
            lim.max_line_length,
            lim.max_tags,
            lim.max_fields,
            lim.max_key_length,
            lim.max_tag_value_length,
            lim.allow_unsigned,
            lim.min_time_ns,
            lim.max_time_ns,
        ),
    )
    assert found is not None
    return found[2]


def test_the_compiled_scanner_is_built_and_used() -> None:
    assert NATIVE


EQUIVALENCE = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


BODIES_PER_EXAMPLE = 40


@EQUIVALENCE
@given(bodies(BODIES_PER_EXAMPLE), st.sampled_from([None, V2, TIGHT]))
def test_generated_bodies_canonicalize_as_the_python_reference(
    batch: list[Body], limits: Limits
) -> None:
    """15 x 40 bodies with each dialect's limits (derandomized). The differential tests
    (test_lineprotocol_influxdb.py, tests/job/test_ingest_differential.py) read their 2,000+
    bodies through :func:`canonicalize_checked` as well."""
    for b in batch:
        assert_same(b.text.encode(), b.precision, limits)


_ALPHABET = st.sampled_from([*'ab=, "\\\n\t#0159.-eiuTtfFE+é😀\x00', "\\ ", "\\,", "\\="])


@settings(EQUIVALENCE, max_examples=400)
@given(st.lists(_ALPHABET, max_size=40).map("".join), st.sampled_from(PRECISIONS))
def test_random_text_canonicalizes_as_the_python_reference(text: str, precision: str) -> None:
    assert_same(text.encode(), precision)
    assert_same("m" + text, precision, V2)


@settings(EQUIVALENCE, max_examples=150)
@given(
    st.lists(name_part, min_size=1, max_size=6),
    st.sampled_from(["1", "2i", '"s\\"x"', "t", "5u"]),
    st.sampled_from(TIMESTAMPS),
)
def test_escape_heavy_lines_canonicalize_as_the_python_reference(
    parts: list[str], value: str, ts: str
) -> None:
    name = "".join(parts)
    for line in (
        f"m{name},t{name}=v{name} f{name}={value} {ts}",
        f"{name} f={value}",
        f"m,k=v{name},a=b f{name}={value},g=1 {ts}",
    ):
        assert_same(line, "n", V2)
        assert_same(line, "s")


@pytest.mark.parametrize(
    "text",
    [
        "cpu,regions=east\\\\  value=1.0",  # the cases
        "cpu,regions=\\\\ east value=1.0",
        "cpu\\=load,region=east value=1.0",
        "cpu value=42u",
        "cpu,time=x value=1",
        "cpu time=1",
        'cpu s="a\nb" 1',
        'cpu,b=2,a=1 v=1,w=2i,x=t,y="s" 1700000000',
        "cpu v=1 9223372036854775807",
        "cpu v=1 -9223372036854775806",
        "cpu v=1 -9223372036854775807",
        "cpu v=9223372036854775807i,w=-9223372036854775808i",
        "cpu v=9223372036854775808i",
        "cpu v=18446744073709551615u,w=18446744073709551616u",
        "cpu v=1e308,w=1e309",
        "cpu v=" + "1" * 400,
        "cpu v=" + "0" * 5000 + "1i",
        "cpu v=1 " + "0" * 5000 + "1",
        "cpu v=1,v=2i",
        "cpu v=1,v=2",
        "cpu a\\ b=1,a\\\\=2",
        "cpu \tv=1",
        "  \t cpu v=1 1\n\n# c\n\tcpu v=2  1",
        "cpu,a=1,a=2 v=1",
        "é,ü=ö 😀=1 5",
        "cpu v=1 1\r\ncpu v=2 2",
        "cpu\\ x\\,y,k\\ 1=v\\=2 f\\,\\ =1",
    ],
)
@pytest.mark.parametrize("precision", ["n", "s", "h"])
def test_quoted_cases_canonicalize_as_the_python_reference(text: str, precision: str) -> None:
    assert_same(text, precision)
    assert_same(text, precision, V2)
    assert_same(text, precision, TIGHT)


@example("cpu,host=a,region=eu usage=1.5,idle=2i 1700000000000000000")
@given(
    st.sampled_from(
        [
            "cpu,host=a,region=eu usage=1.5,idle=2i 1700000000000000000",
            "cpu,region=eu,host=a usage=1.5",
            'cpu\\ load,host\\,x=a\\=b us\\ er=1,s="x\\"y" 1',
            "cpü,hôst=a😀 ü=1 1",
            'cpu s="multi\nline" 1',
        ]
    )
)
def test_valid_lines_are_settled_by_the_compiled_scanner(line: str) -> None:
    assert deferred(line) == []


def test_refused_lines_go_to_the_exact_scanner_with_their_line_numbers() -> None:
    body = "m v=1 1\nm v=bad 1\nm v=2 2\nm,a=1,a=2 v=3 3"
    assert [(i, n) for i, n, _s, _e in deferred(body)] == [(1, 2), (2, 4)]
    result = canonicalize_checked(body)
    assert result.lines == ["m v=1 1", "m v=2 2"]
    assert [e.line for e in result.errors] == [2, 4]
    assert all(isinstance(e, ParseError) for e in result.errors)


def test_invalid_utf8_is_left_to_the_python_path() -> None:
    assert_same(b"m v=1 1\nm v=\xff\nm v=2 2")


def test_integers_of_thousands_of_digits_are_read_as_go_reads_them() -> None:
    """Leading zeros are free in Go's strconv (Python's int() refuses 4,300+ digits)."""
    zeros = "0" * 5_000
    result = canonicalize_checked(f"m v={zeros}1i,w={zeros}2 {zeros}3\nm v={'9' * 5_000}i 1")
    assert result.lines == [f"m v={zeros}1i,w={zeros}2 3"]
    assert [e.line for e in result.errors] == [2]


_KEYS = st.sampled_from(["cpu,host=a", "cpu,host=b", "mém,hôst=😀", "m", "disk,path=/x\\ y"])
_LINES = st.text(st.sampled_from([*"ab =,\n\\é😀"]), min_size=1, max_size=30)


@settings(EQUIVALENCE, max_examples=300)
@given(
    st.lists(st.tuples(_KEYS, _LINES), max_size=40),
    st.integers(1, 7),
    st.sampled_from([40, 64, 200, MAX_RECORD_BYTES]),
    st.sampled_from([None, "autogen"]),
)
def test_records_are_partitioned_and_packed_as_the_python_reference(
    pairs: list[tuple[str, str]], partitions: int, max_bytes: int, rp: str | None
) -> None:
    keys = [k for k, _ in pairs]
    lines = [f"{k} v={ln}" for k, ln in pairs]
    kw = {"received_ns": 7, "max_bytes": max_bytes}

    def encode(fn: Any) -> Any:
        try:
            return fn(keys, lines, partitions, "db", rp, **kw)
        except SerializationError as exc:
            return str(exc)

    assert encode(encode_partitioned) == encode(encode_partitioned_python)


@settings(EQUIVALENCE, max_examples=300)
@given(st.binary(max_size=70))
def test_the_compiled_murmur2_is_kafkas(data: bytes) -> None:
    assert metricsflow_lp.murmur2(data) == int(murmur2(data)) & 0x7FFFFFFF
