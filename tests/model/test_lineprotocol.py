"""Line protocol: exact parser, fast canonicalizer and serializer agree with the reference."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from metricsflow.errors import ParseError
from metricsflow.model.limits import ENGINE_MAX_TIME_NS, ENGINE_MIN_TIME_NS
from metricsflow.model.lineprotocol import (
    PRECISION_V1,
    Limits,
    canonicalize,
    format_point,
    parse,
    parse_line,
)
from metricsflow.model.point import Point, Unsigned

# Names: anything printable except newline and backslash (a trailing backslash cannot be
# represented in line protocol, as in InfluxDB); commas, spaces, equals and quotes included.
names = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\\\n\r"),
    min_size=1,
    max_size=12,
).filter(lambda s: not s.startswith(("#", " ", "\t")))
tag_names = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\\\n\r"),
    min_size=1,
    max_size=12,
)
field_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**64 - 1).map(Unsigned),
    st.booleans(),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r"), max_size=20),
)
points = st.builds(
    Point.make,
    names,
    st.dictionaries(tag_names, tag_names, max_size=4),
    st.dictionaries(tag_names, field_values, min_size=1, max_size=4),
    st.integers(ENGINE_MIN_TIME_NS, ENGINE_MAX_TIME_NS - 1),
)


@given(points)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_any_valid_point_serialized_to_line_protocol_parses_back_unchanged(point: Point) -> None:
    line = format_point(point)
    parsed = parse_line(line)
    assert parsed == point
    assert [type(v) for _, v in parsed.fields] == [type(v) for _, v in point.fields]
    keys, lines = canonicalize(line, default_time_ns=0)
    assert lines == [line]
    assert keys == [point.series_key]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (r"c\,p\ u,t\ k=v\,a\=l f\=k=1 5", Point("c,p u", (("t k", "v,a=l"),), (("f=k", 1.0),), 5)),
        ('m s="a \\"q\\" \\\\ b" 1', Point("m", (), (("s", 'a "q" \\ b'),), 1)),
        ("m a=1i,b=2u,c=-3.5e2,d=.5,e=1. 1", None),
        ("m a=t,b=T,c=true,d=True,e=TRUE,f=f,g=F,h=false,i=False,j=FALSE 1", None),
        ("  m v=1 1\r", Point("m", (), (("v", 1.0),), 1)),
    ],
)
def test_the_reference_escapes_suffixes_and_booleans_are_understood(
    line: str, expected: Point | None
) -> None:
    point = parse_line(line)
    assert point is not None
    if expected is not None:
        assert point == expected
    assert parse_line(format_point(point)) == point


def test_integer_unsigned_and_float_keep_their_types() -> None:
    (p,) = parse("m a=1i,b=2u,c=3 1")
    assert dict(p.fields) == {"a": 1, "b": 2, "c": 3.0}
    types = {k: type(v) for k, v in p.fields}
    assert types == {"a": int, "b": Unsigned, "c": float}


def test_comments_blank_lines_and_crlf_are_skipped() -> None:
    assert len(parse(b"# hello\r\n\r\nm v=1 1\r\n   \n# x\nm v=2 2\n")) == 2


@pytest.mark.parametrize("precision", sorted(PRECISION_V1))
def test_precision_multiplies_the_timestamp_and_a_missing_one_gets_the_receive_time(
    precision: str,
) -> None:
    _keys, lines = canonicalize(
        "m v=1 3\nm v=2", precision_factor=PRECISION_V1[precision], default_time_ns=42
    )
    assert lines == [f"m v=1 {3 * PRECISION_V1[precision]}", "m v=2 42"]


@pytest.mark.parametrize(
    ("body", "line", "column", "reason"),
    [
        ("m v=1 1\ncpu,host=a v=abc 1", 2, 14, "invalid field value 'abc' for field 'v'"),
        ("m v=1\nm,a v=1", 2, 3, "missing tag value"),
        ("m,=a v=1", 1, 3, "missing tag key"),
        ("m", 1, 2, "missing fields"),
        ("m v=1 12x", 1, 7, "invalid timestamp"),
        ("m v=1i5 1", 1, 5, "invalid field value"),
        ('m v="abc', 1, 5, "unterminated string"),
        ("m v=99999999999999999999i", 1, 5, "integer value out of range"),
        ("m v=-1u", 1, 5, "invalid field value"),
        ("m v=1e400", 1, 5, "float value out of range"),
        ("m v=1 9223372036854775807", 1, 7, "is outside the range the pipeline stores"),
        ("m,a=1,a=2 v=1", 1, 7, "duplicate tag key"),
        ("m v=", 1, 5, "missing field value"),
        ("m v=nan", 1, 5, "invalid field value"),
        (" ,a=b v=1", 1, 2, "missing measurement"),
    ],
)
def test_errors_name_the_line_the_column_and_the_offending_text(
    body: str, line: int, column: int, reason: str
) -> None:
    with pytest.raises(ParseError) as info:
        canonicalize(body, default_time_ns=1)
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)
    assert reason in err.reason
    assert str(err).startswith(f"line {line}, column {column}: ")


def test_limits_are_reported_like_syntax_errors() -> None:
    limits = Limits(max_tags=1, max_fields=1, max_key_length=3, max_line_length=30)
    for body, reason in [
        ("m,a=1,b=2 v=1", "more than 1 tags"),
        ("m v=1,w=2", "more than 1 fields"),
        ("meas v=1", "measurement longer than 3"),
        ("m vvvv=1", "field key longer than 3"),
        ("m v=1 " + "1" * 40, "line longer than 30"),
    ]:
        with pytest.raises(ParseError, match=reason):
            canonicalize("m v=1\n" + body, default_time_ns=1, limits=limits)


def test_a_non_canonical_line_is_rewritten_sorted_and_in_nanoseconds() -> None:
    keys, lines = canonicalize("cpu,z=1,a=2 y=1,x=2i 5", precision_factor=1000, default_time_ns=0)
    assert keys == ["cpu,a=2,z=1"]
    assert lines == ["cpu,a=2,z=1 x=2i,y=1 5000"]


def test_invalid_utf8_is_reported_with_its_position() -> None:
    with pytest.raises(ParseError) as info:
        canonicalize(b"m v=1\nm v=\xff", default_time_ns=1)
    assert (info.value.line, info.value.column) == (2, 5)


line_chars = st.sampled_from([*list('abc=, "\\1.0-9eiuTtf#\t'), "é"])
mutated_lines = st.one_of(
    st.text(line_chars, max_size=25),
    points.map(format_point),
    st.tuples(points.map(format_point), st.integers(0, 40), st.text(line_chars, max_size=3)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
    ),
)


def _line_ok(line: str) -> bool:
    try:
        parse_line(line, default_time_ns=0)
    except ParseError:
        return False
    return True


@given(st.lists(mutated_lines, min_size=1, max_size=8))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@example(["m v=1", "m v=1 1 1"])
def test_a_body_is_rejected_exactly_at_its_first_line_that_is_bad_on_its_own(
    lines: list[str],
) -> None:
    body = "\n".join(lines)
    physical = body.split("\n")
    first_bad = next((n for n, ln in enumerate(physical, 1) if not _line_ok(ln)), None)
    if first_bad is not None:
        with pytest.raises(ParseError) as info:
            canonicalize(body, default_time_ns=0)
        assert info.value.line == first_bad
        assert 1 <= info.value.column <= len(physical[first_bad - 1]) + 1
        return
    _keys, out = canonicalize(body, default_time_ns=0)
    # the fast path and the exact parser agree on every accepted line
    exact = [p for p in (parse_line(ln, default_time_ns=0) for ln in physical) if p is not None]
    assert [parse_line(ln) for ln in out] == exact


@pytest.mark.parametrize(
    ("time_ns", "accepted"),
    [
        (ENGINE_MIN_TIME_NS - 1, False),
        (ENGINE_MIN_TIME_NS, True),
        (ENGINE_MAX_TIME_NS - 1, True),
        (ENGINE_MAX_TIME_NS, False),
        (9_223_372_036_000_000_000, False),  # 'edge v=1 9223372036' at precision s
    ],
)
def test_timestamps_are_accepted_exactly_within_the_pipeline_range(
    time_ns: int, accepted: bool
) -> None:
    line = f"m v=1 {time_ns}"
    if accepted:
        assert canonicalize(line, default_time_ns=0)[1] == [line]
        return
    with pytest.raises(ParseError, match="is outside the range the pipeline stores") as info:
        canonicalize(line, default_time_ns=0)
    assert str(time_ns) in str(info.value)
    assert info.value.column == 7
