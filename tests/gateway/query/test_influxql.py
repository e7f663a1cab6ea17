"""The InfluxQL parser of the query API: what it accepts, renders back, and refuses."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.query.base import InfluxQLSyntaxError, UnrewritableQueryError
from gateway.query.influxql import parse_select, split_statements
from gateway.query.rewrite import analyze, column_names, evaluate_time, parse_time_string
from gateway.query.syntax import (
    BinaryExpr,
    Call,
    DurationLit,
    Expr,
    Field,
    Fill,
    IntegerLit,
    Measurement,
    NumberLit,
    ParenExpr,
    RegexDimension,
    RegexLit,
    SelectStatement,
    StringLit,
    TagDimension,
    TimeDimension,
    VarRef,
    WildcardDimension,
    regex_is_expressible,
    render,
    render_regex,
)

GRAFANA_QUERIES = [
    'SELECT mean("value") FROM "cpu" WHERE time >= now() - 6h GROUP BY time(1m) fill(null)',
    'SELECT mean("value") FROM "autogen"."cpu" WHERE ("host" =~ /^(a|b)$/) AND '
    'time >= 1700000000000ms and time <= 1700021600000ms GROUP BY time(30s), "host" fill(none)',
    'SELECT count("v") AS "n", max("v") FROM "db"."1m"."m" WHERE time > \'2024-01-01T00:00:00Z\''
    " GROUP BY time(1h30m), * fill(-1.5)",
    "SELECT sum(a) / sum(b) FROM /cp\\/u.*/ WHERE t != 'it\\'s' GROUP BY time(1d, 5m), /^h/ "
    "fill(previous) ORDER BY time DESC LIMIT 10 SLIMIT 2 tz('Europe/Paris')",
    "SELECT last(\"x\") FROM db..m WHERE \"host\"::tag = 'a' OR region <> 'eu' GROUP BY time(1w)",
]


@pytest.mark.parametrize("text", GRAFANA_QUERIES)
def test_grafana_style_queries_render_back_to_the_same_statement(text: str) -> None:
    stmt = parse_select(text)
    assert parse_select(render(stmt)) == stmt
    assert render(parse_select(render(stmt))) == render(stmt)


def test_a_grafana_query_parses_into_its_parts() -> None:
    stmt = parse_select(GRAFANA_QUERIES[1])
    assert stmt.fields == (Field(Call("mean", (VarRef("value"),))),)
    assert stmt.sources == (Measurement(name="cpu", retention_policy="autogen"),)
    assert stmt.dimensions == (TimeDimension(DurationLit(30_000_000_000)), TagDimension("host"))
    assert stmt.fill == Fill("none")
    cond = stmt.condition
    assert isinstance(cond, BinaryExpr)
    assert cond.op == "AND"
    assert isinstance(cond.lhs, BinaryExpr)
    assert cond.lhs.op == "AND"
    assert cond.lhs.lhs == ParenExpr(BinaryExpr("=~", VarRef("host"), RegexLit("^(a|b)$")))


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1h30m", 5_400_000_000_000),
        ("1700000000000ms", 1_700_000_000_000_000_000),
        ("10u", 10_000),
        ("2w", 1_209_600_000_000_000),
        ("5ns", 5),
    ],
)
def test_durations_are_read_in_nanoseconds(text: str, ns: int) -> None:
    stmt = parse_select(f"SELECT count(v) FROM m GROUP BY time({text})")
    assert stmt.dimensions == (TimeDimension(DurationLit(ns)),)


def test_statements_split_on_semicolons_outside_quotes_and_regexes() -> None:
    text = "SELECT a FROM b WHERE x =~ /;/ ; SHOW TAG KEYS FROM \"c;\"; SELECT 'a;b' FROM d;"
    assert split_statements(text) == [
        "SELECT a FROM b WHERE x =~ /;/",
        'SHOW TAG KEYS FROM "c;"',
        "SELECT 'a;b' FROM d",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "SHOW MEASUREMENTS",
        "SELECT * FROM (SELECT a FROM b)",
        "SELECT a INTO b FROM c",
        "DROP DATABASE x",
    ],
)
def test_valid_influxql_outside_the_subset_is_unrewritable(text: str) -> None:
    with pytest.raises(UnrewritableQueryError):
        parse_select(text)


@pytest.mark.parametrize(
    "text",
    [
        "SELECT a FROM b WHERE x = $host",
        "SELECT count(v) FROM m GROUP BY time(1h30)",
        "SELECT a FROM",
        "SELECT a FROM b WHERE s = 'open",
        "SELECT FROM b",
        "SELECT a FROM b c",
    ],
)
def test_broken_text_is_a_syntax_error(text: str) -> None:
    with pytest.raises(InfluxQLSyntaxError):
        parse_select(text)


# --- properties -----------------------------------------------------------------------------

names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=8
)
numbers = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
leaves: st.SearchStrategy[Expr] = st.one_of(
    st.builds(VarRef, names),
    st.builds(VarRef, names, st.sampled_from(["tag", "field"])),
    st.builds(StringLit, st.text(max_size=8)),
    st.builds(IntegerLit, st.integers(0, 10**15)),
    st.builds(NumberLit, numbers.filter(lambda x: x >= 0)),
    st.builds(DurationLit, st.integers(1, 10**15)),
    st.builds(Call, st.just("now"), st.just(())),
)


def regex_patterns(max_size: int) -> st.SearchStrategy[str]:
    """Patterns the ``/.../`` syntax can carry (no unpaired trailing backslash)."""
    return st.text(min_size=1, max_size=max_size).filter(regex_is_expressible)


def _binary(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    wrapped = children.map(lambda e: ParenExpr(e) if isinstance(e, BinaryExpr) else e)
    ops = st.sampled_from(["AND", "OR", "=", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/"])
    regex = st.builds(
        BinaryExpr, st.sampled_from(["=~", "!~"]), wrapped, st.builds(RegexLit, regex_patterns(6))
    )
    return st.one_of(st.builds(BinaryExpr, ops, wrapped, wrapped), regex)


exprs = st.recursive(leaves, _binary, max_leaves=6)
calls = st.builds(
    Call,
    st.sampled_from(["count", "sum", "min", "max", "mean", "first", "last"]),
    st.tuples(st.builds(VarRef, names)),
)
statements = st.builds(
    SelectStatement,
    fields=st.lists(st.builds(Field, calls, st.none() | names), min_size=1, max_size=3).map(tuple),
    sources=st.tuples(
        st.builds(
            Measurement, name=names, database=st.none() | names, retention_policy=st.none() | names
        )
    ),
    condition=st.none() | exprs,
    dimensions=st.lists(
        st.one_of(
            st.builds(TagDimension, names),
            st.just(WildcardDimension()),
            st.builds(RegexDimension, regex_patterns(5)),
            st.builds(TimeDimension, st.builds(DurationLit, st.integers(1, 10**13))),
        ),
        max_size=3,
    ).map(tuple),
    fill=st.none()
    | st.builds(Fill, st.sampled_from(["null", "none", "previous", "linear"]))
    | st.builds(Fill, st.just("value"), st.integers(-1000, 1000) | numbers),
    limit=st.none() | st.integers(0, 100),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statements)
def test_any_statement_of_the_subset_survives_render_and_parse(stmt: SelectStatement) -> None:
    assert parse_select(render(stmt)) == stmt


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="SELECTFROMWHEREGROUPBYtime()\"'/;=~<>*,.0123456789 abhms$-", max_size=60))
def test_arbitrary_text_is_parsed_or_refused_cleanly(text: str) -> None:
    try:
        stmt = parse_select(text)
    except (InfluxQLSyntaxError, UnrewritableQueryError):
        return
    assert parse_select(render(stmt)) == stmt


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["mean", "count", "max"]), min_size=1, max_size=5),
    st.lists(st.none() | st.sampled_from(["mean", "mean_1", "x"]), min_size=5, max_size=5),
)
def test_column_names_are_unique_like_influxdbs(
    funcs: list[str], aliases: list[str | None]
) -> None:
    fields = tuple(
        Field(Call(f, (VarRef("v"),)), alias) for f, alias in zip(funcs, aliases, strict=False)
    )
    result = column_names(fields)
    assert len(result) == len(fields)
    explicit = [f.alias for f in fields if f.alias is not None]
    if len(set(explicit)) == len(explicit):
        assert len(set(result)) == len(result)


# --- analysis -------------------------------------------------------------------------------

NOW = 1_700_000_000_000_000_000


def test_time_expressions_evaluate_like_influxdb() -> None:
    stmt = parse_select("SELECT count(v) FROM m WHERE time >= now() - 6h + 30m")
    assert isinstance(stmt.condition, BinaryExpr)
    assert evaluate_time(stmt.condition.rhs, NOW) == NOW - 5 * 3_600_000_000_000 - 1_800_000_000_000
    assert parse_time_string("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert parse_time_string("1970-01-02") == 86_400_000_000_000
    assert parse_time_string("1970-01-01T01:00:00+01:00") == 0


def test_the_analysis_turns_bounds_into_a_half_open_range() -> None:
    a = analyze(
        parse_select(
            "SELECT mean(v) FROM m WHERE host = 'a' AND time > 10 AND time <= 99 "
            "GROUP BY time(1m), host"
        ),
        NOW,
    )
    assert (a.start_ns, a.end_ns) == (11, 100)
    assert a.components == (("sum", "v"), ("count", "v"))
    assert a.condition_identifiers == frozenset({"host"})


@pytest.mark.parametrize(
    "text",
    [
        "SELECT mean(v) FROM m WHERE time >= now() - 1h",  # no GROUP BY time
        "SELECT mean(v) FROM m GROUP BY time(1m)",  # no lower bound
        "SELECT mean(v) FROM m WHERE time >= now() - 1h OR host = 'a' GROUP BY time(1m)",
        "SELECT mean(v) FROM m, n WHERE time >= now() - 1h GROUP BY time(1m)",
        "SELECT mean(v) FROM /m/ WHERE time >= now() - 1h GROUP BY time(1m)",
        "SELECT mean(v) FROM m WHERE time >= now() - 1h GROUP BY time(1m, 10s)",
        "SELECT percentile(v, 90), mean(v) FROM m WHERE time >= now() - 1h GROUP BY time(1m)",
        "SELECT percentile(v, 0) FROM m WHERE time >= now() - 1h GROUP BY time(1m)",
        "SELECT percentile(v, 101) FROM m WHERE time >= now() - 1h GROUP BY time(1m)",
        "SELECT percentile(v) FROM m WHERE time >= now() - 1h GROUP BY time(1m)",
        "SELECT derivative(first(v)) FROM m WHERE time >= now() - 1h GROUP BY time(1m)",
        "SELECT difference(v) FROM m WHERE time >= now() - 1h GROUP BY time(1m)",
        "SELECT difference(last(v), 1s) FROM m WHERE time >= now() - 1h GROUP BY time(1m)",
        "SELECT derivative(last(v)) FROM m WHERE time >= now() - 1h GROUP BY time(1m) fill(0)",
        "SELECT moving_average(last(v), 3) FROM m WHERE time >= now() - 1h GROUP BY time(1m)",
        "SELECT mean(*) FROM m WHERE time >= now() - 1h GROUP BY time(1m)",
        "SELECT mean(v) FROM m WHERE v::field > 1 AND time >= now() - 1h GROUP BY time(1m)",
        "SELECT mean(v) FROM m WHERE time >= now() - 1h GROUP BY time(1m) tz('UTC')",
    ],
)
def test_statements_a_tier_cannot_answer_exactly_are_unrewritable(text: str) -> None:
    with pytest.raises(UnrewritableQueryError):
        analyze(parse_select(text), NOW)


def test_percentiles_and_counter_functions_are_analyzed_with_their_parameters() -> None:
    p = analyze(
        parse_select(
            "SELECT percentile(v, 99.9), percentile(w, 50) AS med FROM m "
            "WHERE time >= now() - 1h GROUP BY time(1m)"
        ),
        NOW,
    )
    assert p.kind == "percentile"
    assert [(c.name, c.field, c.param) for c in p.columns] == [
        ("percentile", "v", 99.9),
        ("med", "w", 50.0),
    ]
    assert p.components == (("sketch", "v"), ("sketch", "w"))
    c = analyze(
        parse_select(
            "SELECT non_negative_derivative(mean(v), 1m), difference(max(v)) FROM m "
            "WHERE time >= now() - 1h GROUP BY time(5m) fill(none)"
        ),
        NOW,
    )
    assert c.kind == "counter"
    assert [(c.name, c.field, c.param) for c in c.columns] == [
        ("non_negative_derivative", "v", 60e9),
        ("difference", "v", 0.0),
    ]
    assert c.components == (("increase", "v"),)


def test_a_non_ascii_digit_is_a_syntax_error_not_a_crash() -> None:
    with pytest.raises(InfluxQLSyntaxError):
        parse_select('SELECT count("v") FROM "m" LIMIT ²')


def test_a_regex_ending_in_an_unpaired_backslash_cannot_be_rendered() -> None:
    assert not regex_is_expressible("a\\")
    assert regex_is_expressible("a\\\\")
    with pytest.raises(ValueError, match="unpaired backslash"):
        render_regex("a\\")


def test_a_regex_starting_with_a_star_is_a_regex_not_a_comment_as_influxdb_reads_it() -> None:
    """InfluxDB's parser scans a regex wherever one may stand (after ``=~``, as a source, a
    dimension or an operand) skipping only white space, so ``/*/`` there is the regex ``*``
    (hypothesis found the render of ``RegexLit("*")`` read back as a comment)."""
    stmt = parse_select('SELECT count("v") FROM "m" WHERE host =~ /*/')
    assert stmt.condition == BinaryExpr("=~", VarRef("host"), RegexLit("*"))
    assert parse_select("SELECT v FROM m /* a comment */").sources[0].name == "m"
