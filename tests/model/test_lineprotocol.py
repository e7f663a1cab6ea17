"""Line protocol: InfluxDB 1.x's rules, the fast path against the exact scanner, write-back.

What InfluxDB 1.6 itself does with each quoted case was observed on the real server; the
differential test (test_lineprotocol_influxdb.py) checks the same against it on every run.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from metricsflow.errors import ParseError, SerializationError
from metricsflow.model.limits import ENGINE_MAX_TIME_NS, ENGINE_MIN_TIME_NS
from metricsflow.model.lineprotocol import (
    MAX_TIME_NS,
    MIN_TIME_NS,
    PRECISION_V1,
    Limits,
    canonicalize,
    format_point,
    parse,
    parse_line,
)
from metricsflow.model.lpscan import line_end_after, scan_point, split_lines
from metricsflow.model.point import Point, Unsigned

V2 = Limits(allow_unsigned=True)

# Names: anything printable but newline, not ending in a backslash (no line-protocol form).
names = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\n\r"),
    min_size=1,
    max_size=12,
).filter(lambda s: not s.endswith("\\") and s != "time")
field_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**64 - 1).map(Unsigned),
    st.booleans(),
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=20),
)
points = st.builds(
    Point.make,
    names.filter(lambda s: s[0] not in "#\t\x00"),
    st.dictionaries(names, names, max_size=4),
    st.dictionaries(
        names.filter(lambda s: s[0] not in "\t\x00"), field_values, min_size=1, max_size=4
    ),
    st.integers(ENGINE_MIN_TIME_NS, ENGINE_MAX_TIME_NS - 1),
)


def canon(body: str | bytes, **kw: object) -> tuple[list[str], list[str]]:
    result = canonicalize(body, default_time_ns=kw.pop("default_time_ns", 0), **kw)  # type: ignore[arg-type]
    result.raise_first()
    return result.series_keys, result.lines


def exact_only(body: str, limits: Limits = V2) -> list[tuple[str, str] | str]:
    """Per line of ``body``, the exact scanner's (series key, canonical line) or the reason."""
    out: list[tuple[str, str] | str] = []
    for lineno, line in split_lines(body):
        try:
            s = scan_point(line, lineno=lineno, default_time_ns=0, limits=limits)
        except ParseError as exc:
            out.append(exc.reason)
            continue
        if s is not None:
            out.append((s.series_key, f"{s.series_key}{s.separator}{s.fields} {s.time_ns}"))
    return out


@given(points)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@example(Point.make("0", {}, {"\\=": 0.0}, 0))
def test_any_point_built_in_code_is_written_and_read_back_unchanged(point: Point) -> None:
    try:
        line = format_point(point)
    except SerializationError:
        # only a field key with a backslash before '=' (or '"') has no line-protocol form
        assert any("\\" in k for k, _v in point.fields)
        return
    parsed = parse_line(line, limits=V2)
    assert parsed == point
    assert [type(v) for _, v in parsed.fields] == [type(v) for _, v in point.fields]
    keys, lines = canon(line, limits=V2)
    assert lines == [line]
    assert keys == [point.series_key]


# ---------------------------------------------------------------- the cases
def test_a_separator_after_an_escaped_backslash_is_still_escaped() -> None:
    # InfluxDB: the byte before the space is a backslash, so the first space is escaped
    # and the tag value is `east\ ` (read back: `east\` + space).
    keys, lines = canon("cpu,regions=east\\\\  value=1.0 8")
    assert keys == ["cpu,regions=east\\\\ "]
    (p,) = parse("cpu,regions=east\\\\  value=1.0 8")
    assert p.tags == (("regions", "east\\ "),)
    assert lines == ["cpu,regions=east\\\\  value=1.0 8"]


def test_a_tag_value_starting_with_an_escaped_backslash_space_is_accepted() -> None:
    (p,) = parse("cpu,regions=\\\\ east value=1.0 9")
    assert p.tags == (("regions", "\\ east"),)
    assert canon("cpu,regions=\\\\ east value=1.0 9")[0] == ["cpu,regions=\\\\ east"]


def test_an_escaped_equals_in_a_measurement_is_unescaped() -> None:
    (p,) = parse("cpu\\=load,region=east value=1.0 7")
    assert p.measurement == "cpu=load"
    keys, lines = canon("cpu\\=load,region=east value=1.0 7")
    assert keys == ["cpu=load,region=east"]  # InfluxDB's SHOW SERIES shows the same key
    assert lines == ["cpu=load,region=east value=1.0 7"]


def test_unsigned_integers_follow_the_influxdb_generation() -> None:
    with pytest.raises(ParseError, match=r"invalid number.*InfluxDB 1\.x"):
        canon("m v=42u 1")
    assert canon("m v=42u 1", limits=V2)[1] == ["m v=42u 1"]
    (p,) = parse("m v=42u 1", limits=V2)
    assert p.fields == (("v", Unsigned(42)),)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("m,time=a v=1 1", 'invalid tag key: input tag "time" on measurement "m" is invalid'),
        ("m time=1 1", 'invalid field name: input field "time" on measurement "m" is invalid'),
        ("m time=1,v=2 1", 'invalid field name: input field "time" on measurement "m"'),
    ],
)
def test_a_time_key_is_refused_with_influxdbs_reason(line: str, reason: str) -> None:
    result = canonicalize(line, default_time_ns=0)
    assert result.lines == []
    (err,) = result.errors
    assert reason in err.reason


@pytest.mark.parametrize(("precision", "factor"), sorted(PRECISION_V1.items()))
def test_the_receive_time_of_a_line_without_timestamp_is_truncated_to_the_precision(
    precision: str, factor: int
) -> None:
    received = 1_700_000_123_456_789_123
    _keys, lines = canon("m v=1 3\nm v=2", precision_factor=factor, default_time_ns=received)
    assert lines == [f"m v=1 {3 * factor}", f"m v=2 {received - received % factor}"]


def test_a_string_field_may_hold_a_newline() -> None:
    body = 'm s="two\nlines",v=1 1\nm v=2 2'
    assert split_lines(body) == [(1, 'm s="two\nlines",v=1 1'), (3, "m v=2 2")]
    _keys, lines = canon(body)
    assert lines == ['m s="two\nlines",v=1 1', "m v=2 2"]
    assert parse(body)[0].fields == (("s", "two\nlines"), ("v", 1.0))


def test_the_default_limits_take_at_least_what_influxdb_takes() -> None:
    tags = ",".join(f"t{i}=v" for i in range(1_500))
    keys, _lines = canon(f"m,{tags} v=1 1")
    assert keys[0].count(",") == 1_500
    fields = ",".join(f"f{i}=1" for i in range(5_000))
    assert len(parse(f"m {fields} 1")[0].fields) == 5_000


def test_the_key_limit_is_influxdbs_65535_bytes() -> None:
    ok = "m,t=" + "x" * (65_535 - 4 - 4 - 1) + " v=1 1"
    assert canon(ok)[1] == [ok]
    with pytest.raises(ParseError, match="max key length exceeded: 65536 > 65535"):
        canon("m,t=" + "x" * (65_535 - 4 - 4) + " v=1 1")


# ---------------------------------------------------------------- more of InfluxDB's rules
@pytest.mark.parametrize(
    ("line", "point"),
    [
        (r"c\,p\ u,t\ k=v\,a\=l f\=k=1 5", Point("c,p u", (("t k", "v,a=l"),), (("f=k", 1.0),), 5)),
        ('m s="a \\"q\\" \\\\ b" 1', Point("m", (), (("s", 'a "q" \\ b'),), 1)),
        ("m,t==x v=1 1", Point("m", (("t", "=x"),), (("v", 1.0),), 1)),
        ('j\\"k v=1 1', Point('j"k', (), (("v", 1.0),), 1)),
        ('w v="a"b"c" 1', Point("w", (), (("v", 'a"b"c'),), 1)),
        ("f v=1,v=2,w=t 1", Point("f", (), (("v", 2.0), ("w", True)), 1)),
        ("\x00 \tm v=1  1 ", Point("m", (), (("v", 1.0),), 1)),
        ("s v=00.5,w=-0,x=1.,y=.5,z=1E5 1", None),
        ("m a=1i,c=-3.5e2,d=.5,e=1. 1", None),
        ("m a=t,b=T,c=true,d=True,e=TRUE,f=f,g=F,h=false,i=False,j=FALSE 1", None),
        ("r v=1e-400 1", Point("r", (), (("v", 0.0),), 1)),
        ("t v=9223372036854775807i,w=-9223372036854775808i 1", None),
    ],
)
def test_lines_influxdb_accepts_are_read_as_influxdb_reads_them(
    line: str, point: Point | None
) -> None:
    p = parse_line(line)
    assert p is not None
    if point is not None:
        assert p == point
    (_key,), (canonical,) = canon(line)
    assert parse_line(canonical) == p


def test_influxdbs_extreme_timestamps_are_accepted_when_the_pipeline_range_is_widened() -> None:
    wide = Limits(min_time_ns=MIN_TIME_NS, max_time_ns=MAX_TIME_NS + 1)
    for line in ("n v=1 -9223372036854775806", "p v=1 9223372036854775806"):
        assert canon(line, limits=wide)[1] == [line]
        with pytest.raises(ParseError, match="is outside the range the pipeline stores"):
            canon(line)


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
    result = canonicalize(line, default_time_ns=0)
    if accepted:
        assert result.lines == [line]
        return
    (err,) = result.errors
    assert "is outside the range the pipeline stores" in err.reason
    assert str(time_ns) in err.reason
    assert err.column == 7


@pytest.mark.parametrize(
    ("body", "line", "column", "reason"),
    [
        ("m v=1 1\ncpu,host=a v=abc 1", 2, 14, "invalid boolean"),
        ("m v=1\nm,a v=1", 2, 4, "missing tag value"),
        ("m,=a v=1", 1, 3, "missing tag key"),
        ("m", 1, 2, "missing fields"),
        ("m v=1 12x", 1, 9, "bad timestamp"),
        ("m v=1 1\r", 1, 8, "bad timestamp"),
        ("m v=1\t1", 1, 6, "invalid number"),
        ("m v=1i5 1", 1, 5, "invalid number"),
        ('m v="abc', 1, 9, "unbalanced quotes"),
        ("u v=9223372036854775808i 1", 1, 5, "unable to parse integer 9223372036854775808"),
        ("m v=-1u", 1, 5, "invalid number"),
        ("m v=1e400", 1, 5, "invalid float"),
        ("o v=1 -9223372036854775807", 1, 7, "time outside range"),
        ("q v=1 9223372036854775807", 1, 7, "time outside range"),
        ("m v=1 1 2", 1, 9, "point is invalid"),
        ("x,a=1,a=2 v=1 1", 1, 7, "duplicate tags"),
        ("m v=", 1, 4, "missing field value"),
        ("m v=nan", 1, 5, "invalid number"),
        (",a=b v=1", 1, 1, "missing measurement"),
        ("m,t=a=b v=1", 1, 6, "invalid tag format"),
        ("a a\\\\=1 1", 1, 3, "invalid value: field-key=a\\\\=1"),
        ("z v=1i,v=2 1", 1, 8, "field type conflict"),
        ("m v=1,w 1", 1, 8, "invalid field format"),
    ],
)
def test_refused_lines_carry_influxdbs_reason_with_line_and_column(
    body: str, line: int, column: int, reason: str
) -> None:
    result = canonicalize(body, default_time_ns=1)
    err = result.errors[-1]
    assert (err.line, err.column) == (line, column), str(err)
    assert reason in err.reason
    assert str(err).startswith(f"line {line}, column {column}: ")


def test_valid_lines_around_refused_ones_are_kept() -> None:
    result = canonicalize("m v=1 1\nm v=bad 1\nm v=2 2\nm v=3 3 4", default_time_ns=0)
    assert result.lines == ["m v=1 1", "m v=2 2"]
    assert [(e.line, e.reason) for e in result.errors] == [
        (2, "invalid boolean"),
        (4, "point is invalid"),
    ]


def test_a_newline_after_a_backslash_does_not_end_the_line() -> None:
    result = canonicalize("c v=1 1\\\nc v=2 2", default_time_ns=0)
    assert result.lines == []
    assert [e.reason for e in result.errors] == ["bad timestamp"]


def test_gateway_limits_are_reported_like_syntax_errors() -> None:
    limits = Limits(max_tags=1, max_fields=1, max_key_length=12, max_line_length=30)
    for body, reason in [
        ("m,a=1,b=2 v=1", "more than 1 tags"),
        ("m v=1,w=2", "more than 1 fields"),
        ("measurement v=1", "max key length exceeded: 16 > 12"),
        ("m v=1 " + "1" * 40, "line longer than 30"),
    ]:
        with pytest.raises(ParseError, match=reason):
            canon("m v=1\n" + body, limits=limits)


def test_a_non_canonical_line_gets_sorted_tags_and_a_nanosecond_timestamp() -> None:
    keys, lines = canon("cpu,z=1,a=2 y=1,x=2i 5", precision_factor=1000)
    assert keys == ["cpu,a=2,z=1"]
    assert lines == ["cpu,a=2,z=1 y=1,x=2i 5000"]  # fields exactly as written


def test_invalid_utf8_refuses_its_line_with_its_position() -> None:
    result = canonicalize(b"m v=1 1\nm v=\xff\nm v=2 2", default_time_ns=1)
    assert result.lines == ["m v=1 1", "m v=2 2"]
    (err,) = result.errors
    assert (err.line, err.column, err.reason) == (2, 5, "invalid UTF-8")


line_chars = st.sampled_from([*list('abc=, "\\1.0-9eiuTtf#\t\n'), "é", "time"])
line_text = st.lists(line_chars, max_size=25).map("".join)


def _representable(point: Point) -> bool:
    """A field key like ``\\,`` has no line-protocol form (format_point refuses it)."""
    try:
        format_point(point)
    except SerializationError:
        return False
    return True


formatted_points = points.filter(_representable).map(format_point)
mutated_lines = st.one_of(
    line_text,
    formatted_points,
    st.tuples(formatted_points, st.integers(0, 40), line_text).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
    ),
)


@given(st.lists(mutated_lines, min_size=1, max_size=8))
@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@example(["m v=1", "m v=1 1 1"])
@example(["m,b=1,a=2 v=1,v=2"])
def test_the_fast_path_agrees_with_the_exact_scanner_on_every_line(lines: list[str]) -> None:
    body = "\n".join(lines)
    result = canonicalize(body, default_time_ns=0, limits=V2)
    exact = exact_only(body)
    accepted = [x for x in exact if isinstance(x, tuple)]
    refused = [x for x in exact if isinstance(x, str)]
    # Lines the exact scanner accepts may still be refused by the write-back checks
    # (time keys, type conflicts, ambiguous escapes); nothing else differs.
    kept = list(zip(result.series_keys, result.lines, strict=True))
    assert set(kept) <= set(accepted)
    assert len(kept) + len(result.errors) == len(accepted) + len(refused)
    assert [e.reason for e in result.errors][: len(refused)] is not None
    for key, line in kept:
        again = canonicalize(line, default_time_ns=0, limits=V2)
        assert (again.series_keys, again.lines) == ([key], [line])


def test_a_long_plain_body_with_one_duplicate_field_key_takes_the_exact_path_for_it() -> None:
    lines = [f"cpu,host=h{i} a={i},b={i}i {i}" for i in range(40)]
    lines[17] = "cpu,host=h17 a=1,b=2i,a=3 17"  # same type: InfluxDB keeps the last
    lines[23] = "cpu,host=h23 a=1,b=2i,b=3 23"  # two types: InfluxDB drops the point
    result = canonicalize("\n".join(lines), default_time_ns=0)
    assert len(result.lines) == 39
    assert "cpu,host=h17 a=1,b=2i,a=3 17" in result.lines
    (err,) = result.errors
    assert (err.line, err.reason.split(":")[0]) == (24, "field type conflict")
    assert parse_line("cpu,host=h17 a=1,b=2i,a=3 17") == Point(
        "cpu", (("host", "h17"),), (("a", 3.0), ("b", 2)), 17
    )


def test_duplicate_field_keys_are_found_in_lines_of_many_fields_too() -> None:
    fields = ",".join(f"f{i}={i}" for i in range(100))
    lines = [f"m,host=h{i} {fields} {i}" for i in range(10)]
    lines[5] = f"m,host=h5 {fields},f3=1i 5"  # the 101st field conflicts with the 4th
    result = canonicalize("\n".join(lines), default_time_ns=0)
    assert len(result.lines) == 9
    assert [e.line for e in result.errors] == [6]


@given(st.text(st.sampled_from(list('am =,"\\\n1')), max_size=40), st.data())
@settings(max_examples=300)
def test_line_end_after_finds_the_line_ends_influxdb_splits_at(
    body: str, data: st.DataObject
) -> None:
    ends, pos = [], 0
    for _n, block in split_lines(body):
        pos += len(block)
        if pos < len(body):
            ends.append(pos)
        pos += 1
    at = data.draw(st.integers(0, max(len(body) - 1, 0)))
    expected = next((e for e in ends if e >= at), -1)
    assert line_end_after(body.encode(), 0, at) == expected
