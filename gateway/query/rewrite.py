"""Rewrite an aggregate ``SELECT ... GROUP BY time(<interval>)`` onto a downsampled tier.

The plan for one statement (see ``docs/influxdb-layout.md``):

1. :func:`analyze` checks the statement is in the rewritable subset and extracts the output
   columns (with the names InfluxDB would give them), the interval, the time range
   ``[start, end)`` (``now()`` evaluated once, by the gateway) and the non-time condition.
2. :func:`choose_tier` picks the coarsest tier whose window divides the interval, whose
   retention covers the range start, and which holds at least one whole window of the range.
3. :func:`build_parts` splits the range into a *body* of whole tier windows, answered from the
   tier's fields (count -> ``sum(count_f)``, mean -> ``sum(sum_f)`` and ``sum(count_f)``, ...),
   and a *head* and *tail* (the partial tier windows at the range edges, and the windows the
   worker may not have written yet) answered from the raw tier. All parts use ``fill(none)``;
   :mod:`gateway.query.results` merges their partial aggregates per series and bucket,
   computes ``mean = sum / count`` (never a mean of means), and applies the ``fill``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.query.access import regex_search
from gateway.query.base import REWRITABLE_AGGREGATES, UnrewritableQueryError
from gateway.query.syntax import (
    BinaryExpr,
    Call,
    Dimension,
    DurationLit,
    Expr,
    Field,
    Fill,
    IntegerLit,
    Measurement,
    NumberLit,
    ParenExpr,
    RegexDimension,
    SelectStatement,
    StringLit,
    TagDimension,
    TimeDimension,
    VarRef,
    WildcardDimension,
    render,
)
from metricsflow.model.tiers import RAW_TIER, TierSpec, tier_field_name

#: Components (partial aggregates) each output aggregate is computed from.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "count": ("count",),
    "sum": ("sum",),
    "min": ("min",),
    "max": ("max",),
    "first": ("first",),
    "last": ("last",),
    "mean": ("sum", "count"),
}
#: How a tier field is re-aggregated to give a component over several tier windows.
TIER_REAGGREGATE: dict[str, str] = {
    "count": "sum",
    "sum": "sum",
    "min": "min",
    "max": "max",
    "first": "first",
    "last": "last",
}
#: Most buckets a rewritten statement may produce (the gateway materializes them).
MAX_BUCKETS = 200_000

_TIME_OPS = {">=", ">", "<=", "<"}
_FLIP = {">=": "<=", ">": "<", "<=": ">=", "<": ">"}


#: Counter functions answered from the tiers' ``increase_<f>`` (gateway.query.functions).
COUNTER_FUNCTIONS: frozenset[str] = frozenset(
    {"difference", "non_negative_difference", "derivative", "non_negative_derivative"}
)
#: Aggregates a counter function may wrap: for a counter they all follow its last sample.
COUNTER_INNER: frozenset[str] = frozenset({"last", "max", "mean"})

#: What a statement asks for: plain aggregates, percentiles (from ``sketch_<f>``) or counter
#: functions (from ``increase_<f>``); one kind per statement.
KIND_AGGREGATE = "aggregate"
KIND_PERCENTILE = "percentile"
KIND_COUNTER = "counter"


@dataclass(frozen=True, slots=True)
class OutputColumn:
    name: str
    aggregate: str
    field: str
    #: percentile: N; counter functions: the derivative unit in ns (0 for differences).
    param: float = 0.0


@dataclass(frozen=True, slots=True)
class Analysis:
    statement: SelectStatement
    source: Measurement
    columns: tuple[OutputColumn, ...]
    components: tuple[tuple[str, str], ...]  # (component, field), query order
    interval_ns: int
    start_ns: int  # inclusive
    end_ns: int  # exclusive
    fill: Fill
    condition: Expr | None  # the WHERE without its time bounds
    condition_identifiers: frozenset[str]
    tag_dimensions: tuple[Dimension, ...]
    needs_single_series_groups: bool  # first/last: each group must be one series
    kind: str = KIND_AGGREGATE


@dataclass(frozen=True, slots=True)
class QueryPart:
    kind: str  # "head" | "body" | "tail"
    tier: str
    start_ns: int
    end_ns: int
    influxql: str


# --------------------------------------------------------------------------------------------
# Column names, as InfluxDB's SelectStatement.ColumnNames gives them
# --------------------------------------------------------------------------------------------


def column_names(fields: tuple[Field, ...]) -> list[str]:
    """Aliases first, then generated names (the function name) with ``_1``, ``_2`` suffixes
    resolving conflicts, exactly as InfluxDB 1.x names result columns."""
    names: list[str | None] = [f.alias for f in fields]
    seen: dict[str, int] = {f.alias: 1 for f in fields if f.alias is not None}
    for i, f in enumerate(fields):
        if names[i] is not None:
            continue
        name = f.expr.name if isinstance(f.expr, Call) else "expr"
        count = seen.get(name)
        if count is not None:
            while True:
                resolved = f"{name}_{count}"
                if resolved not in seen:
                    seen[name] = count + 1
                    name = resolved
                    break
                count += 1
        seen[name] = seen.get(name, 0) + 1
        names[i] = name
    return [n for n in names if n is not None]


# --------------------------------------------------------------------------------------------
# Time conditions
# --------------------------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})?$"
)
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_time_string(text: str) -> int:
    """RFC3339 (``2024-01-01T00:00:00.5Z``), ``2024-01-01 00:00:00`` or ``2024-01-01`` -> ns."""
    if _DATE_ONLY.match(text):
        text = text + "T00:00:00Z"
    match = _RFC3339.match(text)
    if match is None:
        raise UnrewritableQueryError(f"unsupported time literal {text!r}")
    date, clock, fraction, zone = match.groups()
    offset = "+00:00" if zone in (None, "Z") else zone
    try:
        moment = datetime.fromisoformat(f"{date}T{clock}{offset}").astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise UnrewritableQueryError(f"invalid time literal {text!r}: {exc}") from None
    seconds = int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    nanos = int((fraction or "").ljust(9, "0")) if fraction else 0
    return seconds * 1_000_000_000 + nanos


def evaluate_time(expr: Expr, now_ns: int) -> int:
    """A time expression (``now() - 6h``, ``1700000000000ms``, ``'2024-01-01T00:00:00Z'``,
    an integer of nanoseconds) -> ns since the epoch."""
    match expr:
        case Call("now", ()):
            return now_ns
        case IntegerLit(value) | DurationLit(value):
            return value
        case StringLit(value):
            return parse_time_string(value)
        case ParenExpr(inner):
            return evaluate_time(inner, now_ns)
        case BinaryExpr("+", lhs, rhs):
            return evaluate_time(lhs, now_ns) + evaluate_time(rhs, now_ns)
        case BinaryExpr("-", lhs, rhs):
            return evaluate_time(lhs, now_ns) - evaluate_time(rhs, now_ns)
    raise UnrewritableQueryError(f"unsupported time expression {expr!r}")


def _conjuncts(expr: Expr) -> list[Expr]:
    if isinstance(expr, ParenExpr):
        return _conjuncts(expr.expr)
    if isinstance(expr, BinaryExpr) and expr.op == "AND":
        return _conjuncts(expr.lhs) + _conjuncts(expr.rhs)
    return [expr]


def _identifiers(expr: Expr) -> set[VarRef]:
    match expr:
        case VarRef():
            return {expr}
        case BinaryExpr(_, lhs, rhs):
            return _identifiers(lhs) | _identifiers(rhs)
        case ParenExpr(inner):
            return _identifiers(inner)
        case Call(_, args):
            return set().union(*(_identifiers(a) for a in args)) if args else set()
    return set()


def _is_time(expr: Expr) -> bool:
    return isinstance(expr, VarRef) and expr.name.lower() == "time"


def split_condition(
    condition: Expr | None, now_ns: int
) -> tuple[int | None, int | None, Expr | None]:
    """(start inclusive, end exclusive, the condition without its time bounds)."""
    if condition is None:
        return None, None, None
    start: int | None = None
    end: int | None = None
    rest: list[Expr] = []
    for term in _conjuncts(condition):
        if not any(_is_time(v) for v in _identifiers(term)):
            rest.append(term)
            continue
        if not isinstance(term, BinaryExpr) or term.op not in _TIME_OPS:
            raise UnrewritableQueryError("time may only be bounded with >=, >, <=, < joined by AND")
        if _is_time(term.lhs):
            op, value = term.op, evaluate_time(term.rhs, now_ns)
        elif _is_time(term.rhs):
            op, value = _FLIP[term.op], evaluate_time(term.lhs, now_ns)
        else:
            raise UnrewritableQueryError("time must be compared with a time value")
        if op in (">=", ">"):
            bound = value if op == ">=" else value + 1
            start = bound if start is None else max(start, bound)
        else:
            bound = value + 1 if op == "<=" else value
            end = bound if end is None else min(end, bound)
    remaining: Expr | None = None
    for term in rest:
        wrapped = ParenExpr(term) if isinstance(term, BinaryExpr) and term.op == "OR" else term
        remaining = wrapped if remaining is None else BinaryExpr("AND", remaining, wrapped)
    return start, end, remaining


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------


def analyze(
    stmt: SelectStatement, now_ns: int, rp_param: str | None = None, raw_tier: str = RAW_TIER
) -> Analysis:
    """Check ``stmt`` is rewritable and extract what the plan needs; raise
    :class:`UnrewritableQueryError` with the reason otherwise."""
    if stmt.order_desc or stmt.limit or stmt.offset or stmt.slimit or stmt.soffset:
        raise UnrewritableQueryError("ORDER BY time DESC, LIMIT and OFFSET are not rewritten")
    if stmt.tz is not None:
        raise UnrewritableQueryError("tz() is not rewritten")
    if len(stmt.sources) != 1 or stmt.sources[0].regex is not None:
        raise UnrewritableQueryError("only a single named measurement is rewritten")
    source = stmt.sources[0]
    rp = source.retention_policy if source.retention_policy is not None else rp_param
    if rp not in (None, "", raw_tier):
        raise UnrewritableQueryError(f"the query names retention policy {rp!r}, not the raw tier")

    columns, kind = output_columns(stmt)
    components: list[tuple[str, str]] = []
    for col in columns:
        for comp in _components_of(col, kind):
            if (comp, col.field) not in components:
                components.append((comp, col.field))
    fill = stmt.fill or Fill("null")
    if kind == KIND_COUNTER and fill.kind not in ("null", "none"):
        raise UnrewritableQueryError("counter functions are rewritten with fill(null|none) only")

    time_dims = [d for d in stmt.dimensions if isinstance(d, TimeDimension)]
    if len(time_dims) != 1:
        raise UnrewritableQueryError("only GROUP BY time(<interval>) queries are rewritten")
    time_dim = time_dims[0]
    if not isinstance(time_dim.interval, DurationLit) or time_dim.interval.ns <= 0:
        raise UnrewritableQueryError("GROUP BY time() needs a positive duration")
    if time_dim.offset is not None and evaluate_time(time_dim.offset, now_ns) != 0:
        raise UnrewritableQueryError("GROUP BY time() offsets are not rewritten")
    tag_dims = tuple(d for d in stmt.dimensions if not isinstance(d, TimeDimension))
    if any(isinstance(d, TagDimension) and d.name.lower() == "time" for d in tag_dims):
        raise UnrewritableQueryError("GROUP BY time without an interval")

    start, end, condition = split_condition(stmt.condition, now_ns)
    if start is None:
        raise UnrewritableQueryError("no lower time bound")
    if end is None:
        end = now_ns + 1  # InfluxDB bounds GROUP BY time() queries by now()
    interval = time_dim.interval.ns
    if end <= start:
        raise UnrewritableQueryError("empty time range")
    if (end - 1) // interval - start // interval + 1 > MAX_BUCKETS:
        raise UnrewritableQueryError(f"more than {MAX_BUCKETS} buckets")
    identifiers = _identifiers(condition) if condition is not None else set()
    if any(v.type_hint not in (None, "tag") for v in identifiers):
        raise UnrewritableQueryError("conditions on fields are not rewritten")
    return Analysis(
        statement=stmt,
        source=source,
        columns=columns,
        components=tuple(components),
        interval_ns=interval,
        start_ns=start,
        end_ns=end,
        fill=fill,
        condition=condition,
        condition_identifiers=frozenset(v.name for v in identifiers),
        tag_dimensions=tag_dims,
        needs_single_series_groups=any(c.aggregate in ("first", "last") for c in columns),
        kind=kind,
    )


def _components_of(col: OutputColumn, kind: str) -> tuple[str, ...]:
    if kind == KIND_PERCENTILE:
        return ("sketch",)
    if kind == KIND_COUNTER:
        return ("increase",)
    return COMPONENTS[col.aggregate]


def _field_arg(call: Call) -> str:
    if not call.args or not isinstance(call.args[0], VarRef):
        raise UnrewritableQueryError(f"{call.name}() must take a field")
    arg = call.args[0]
    if arg.type_hint not in (None, "field") or arg.name.lower() == "time":
        raise UnrewritableQueryError(f"{call.name}() over a tag or time is not rewritten")
    return arg.name


def _output_column(name: str, expr: Expr) -> tuple[OutputColumn, str]:
    if not isinstance(expr, Call):
        raise UnrewritableQueryError("only function calls are rewritten")
    if expr.name in REWRITABLE_AGGREGATES:
        if len(expr.args) != 1:
            raise UnrewritableQueryError(f"{expr.name}() must take exactly one field")
        return OutputColumn(name, expr.name, _field_arg(expr)), KIND_AGGREGATE
    if expr.name == "percentile":
        if len(expr.args) != 2 or not isinstance(expr.args[1], IntegerLit | NumberLit):
            raise UnrewritableQueryError("percentile() must take a field and a number")
        percent = float(expr.args[1].value)
        if not 0.0 < percent <= 100.0:
            raise UnrewritableQueryError(f"percentile {percent} is not in (0, 100]")
        return OutputColumn(name, "percentile", _field_arg(expr), percent), KIND_PERCENTILE
    if expr.name in COUNTER_FUNCTIONS:
        derivative = expr.name.endswith("derivative")
        if not 1 <= len(expr.args) <= (2 if derivative else 1):
            raise UnrewritableQueryError(f"{expr.name}() arguments are not rewritten")
        inner = expr.args[0]
        if not (isinstance(inner, Call) and inner.name in COUNTER_INNER and len(inner.args) == 1):
            raise UnrewritableQueryError(
                f"{expr.name}() is rewritten over last(), max() or mean() of a field only"
            )
        unit = 0
        if derivative:
            unit = 1_000_000_000
            if len(expr.args) == 2:
                if not isinstance(expr.args[1], DurationLit) or expr.args[1].ns <= 0:
                    raise UnrewritableQueryError(f"{expr.name}() unit must be a duration")
                unit = expr.args[1].ns
        return OutputColumn(name, expr.name, _field_arg(inner), float(unit)), KIND_COUNTER
    raise UnrewritableQueryError(
        "only count, sum, min, max, mean, first, last, percentile and counter functions "
        "(difference, derivative and their non_negative_ forms) are rewritten"
    )


def output_columns(stmt: SelectStatement) -> tuple[tuple[OutputColumn, ...], str]:
    """The output columns (with InfluxDB's names) and the statement's kind; one kind per
    statement (aggregates, percentiles or counter functions are not mixed)."""
    names = column_names(stmt.fields)
    columns: list[OutputColumn] = []
    kinds: set[str] = set()
    for name, f in zip(names, stmt.fields, strict=True):
        column, kind = _output_column(name, f.expr)
        columns.append(column)
        kinds.add(kind)
    if len(kinds) != 1:
        raise UnrewritableQueryError("aggregates, percentiles and counter functions are not mixed")
    return tuple(columns), kinds.pop()


def check_tag_keys(analysis: Analysis, tag_keys: frozenset[str]) -> None:
    """The condition may only name tags (a field condition selects points, which a tier can't
    do); first/last need each group to be one series (tier points all sit at the window start,
    so across series the earliest point of a window is unknown)."""
    unknown = analysis.condition_identifiers - tag_keys
    if unknown:
        raise UnrewritableQueryError(f"condition names {sorted(unknown)} which are not tags")
    if not analysis.needs_single_series_groups:
        return
    grouped: set[str] = set()
    for dim in analysis.tag_dimensions:
        if isinstance(dim, WildcardDimension):
            return
        if isinstance(dim, TagDimension):
            grouped.add(dim.name)
        elif isinstance(dim, RegexDimension):
            grouped.update(k for k in tag_keys if regex_search(dim.pattern, k))
    if not tag_keys <= grouped:
        raise UnrewritableQueryError("first/last are rewritten only when grouped by every tag")


def choose_tier(
    analysis: Analysis, tiers: tuple[TierSpec, ...], now_ns: int, lag_ns: int = 0
) -> TierSpec | None:
    """The coarsest tier whose window divides the interval, whose retention covers the range
    start, and which holds at least one whole window of the range; ``None``: raw."""
    for tier in sorted(tiers, key=lambda t: t.window_ns, reverse=True):
        size = tier.window_ns
        if tier.name == RAW_TIER or size == 0 or analysis.interval_ns % size:
            continue
        retention = tier.retention_ns
        if retention and analysis.start_ns < now_ns - retention:
            continue
        body_start, body_end = body_range(analysis, size, now_ns, lag_ns)
        if body_start < body_end:
            return tier
    return None


def body_range(analysis: Analysis, size: int, now_ns: int, lag_ns: int) -> tuple[int, int]:
    """The whole tier windows ``[a, b)`` inside the range that the worker has written."""
    a = -(-analysis.start_ns // size) * size
    b = (min(analysis.end_ns, now_ns - lag_ns) // size) * size
    return a, b


# --------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------


def _part_statement(
    analysis: Analysis, source: Measurement, fields: list[Field], start: int, end: int
) -> str:
    bounds: Expr = BinaryExpr(
        "AND",
        BinaryExpr(">=", VarRef("time"), IntegerLit(start)),
        BinaryExpr("<", VarRef("time"), IntegerLit(end)),
    )
    cond = analysis.condition
    condition = bounds if cond is None else BinaryExpr("AND", ParenExpr(cond), bounds)
    dims: tuple[Dimension, ...] = (
        TimeDimension(DurationLit(analysis.interval_ns)),
        *analysis.tag_dimensions,
    )
    stmt = SelectStatement(
        fields=tuple(fields),
        sources=(source,),
        condition=condition,
        dimensions=dims,
        fill=Fill("none"),
    )
    return render(stmt)


def component_alias(index: int) -> str:
    return f"c{index}"


def build_parts(
    analysis: Analysis, tier: TierSpec, now_ns: int, lag_ns: int = 0
) -> list[QueryPart]:
    """Head (raw), body (tier), tail (raw) statements, in time order, each returning the
    components as columns ``c0, c1, ...`` in ``analysis.components`` order."""
    a, b = body_range(analysis, tier.window_ns, now_ns, lag_ns)
    raw_fields = [
        Field(Call(comp, (VarRef(field),)), component_alias(i))
        for i, (comp, field) in enumerate(analysis.components)
    ]
    tier_fields = [
        Field(
            Call(TIER_REAGGREGATE[comp], (VarRef(tier_field_name(comp, field)),)),
            component_alias(i),
        )
        for i, (comp, field) in enumerate(analysis.components)
    ]
    src = analysis.source
    tier_source = Measurement(
        name=src.name,
        database=src.database,
        retention_policy=tier.name,
    )
    parts: list[QueryPart] = []
    start, end = analysis.start_ns, analysis.end_ns
    if start < a:
        parts.append(
            QueryPart(
                "head", RAW_TIER, start, a, _part_statement(analysis, src, raw_fields, start, a)
            )
        )
    parts.append(
        QueryPart(
            "body", tier.name, a, b, _part_statement(analysis, tier_source, tier_fields, a, b)
        )
    )
    if b < end:
        parts.append(
            QueryPart("tail", RAW_TIER, b, end, _part_statement(analysis, src, raw_fields, b, end))
        )
    return parts
