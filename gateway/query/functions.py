"""Percentiles and counter functions answered from the tiers' sketch and counter fields.

Two kinds of statement beyond the plain aggregates (:mod:`gateway.query.rewrite` tells them
apart, ``docs/counters-and-percentiles.md`` has the rules):

* ``percentile(f, N)`` ``GROUP BY time(<interval>)``: the tier's ``sketch_<f>`` strings of the
  windows in each interval are merged (bucket counts add), the raw values of the partial
  windows at the range edges are added to the same sketch, and the percentile is read from
  the merged sketch by InfluxDB's nearest-rank rule (:mod:`gateway.query.sketches`). Never a
  mean of stored quantiles.
* ``difference``/``non_negative_difference``/``derivative``/``non_negative_derivative`` of
  ``last``/``max``/``mean(f)`` ``GROUP BY time(<interval>)`` of a counter: the increase of
  ``f`` in each interval, reset-aware (a drop is a reset, the value after it counts from
  zero): ``sum(increase_<f>)`` of the tier windows, plus, for the tail not in the tier yet,
  the increase computed from the raw samples, starting from the last sample before the tail
  (the ``last_<f>`` of the latest tier window). A derivative divides the increase by the
  interval (in its unit). The rows are laid out as InfluxDB lays out these functions: one per
  interval that holds a sample, except the first such interval of each series.

Each statement becomes a few InfluxDB statements (:class:`FunctionPart`) run in one request;
:func:`merge_percentile_parts` and :func:`merge_counter_parts` build the answer (CPU work, run
off the event loop by the router).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.query.access import regex_search
from gateway.query.base import Series, TagSet, UnrewritableQueryError
from gateway.query.results import apply_fill
from gateway.query.rewrite import (
    KIND_COUNTER,
    KIND_PERCENTILE,
    Analysis,
    body_range,
    component_alias,
)
from gateway.query.sketches import SketchAccumulator
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
    ParenExpr,
    RegexDimension,
    SelectStatement,
    TagDimension,
    TimeDimension,
    VarRef,
    WildcardDimension,
    render,
)
from metricsflow.model.tiers import RAW_TIER, TierSpec, tier_field_name


@dataclass(frozen=True, slots=True)
class FunctionPart:
    """One InfluxDB statement of a percentile or counter plan. ``role``: ``head``/``tail``
    (raw values or samples), ``body`` (tier fields), ``head_count`` (which intervals of the
    head hold samples), ``previous`` (the last sample before the tail)."""

    role: str
    tier: str
    influxql: str
    #: percentile parts: ``SELECT count(...)`` of the rows the part reads (one total row);
    #: counter parts that read ``increase_<f>``: ``count(increase_<f>)`` and ``count(count_<f>)``
    #: per component (columns ``c<i>_i``, ``c<i>_n``), equal when every window has an increase
    count_influxql: str = ""


def required_tier_fields(analysis: Analysis) -> frozenset[str]:
    """The tier fields the rewrite reads (``sketch_<f>`` or ``increase_<f>``): without them
    in the chosen tier, the statement goes to raw."""
    return frozenset(tier_field_name(comp, f) for comp, f in analysis.components)


def group_keys(analysis: Analysis, tag_keys: frozenset[str]) -> tuple[str, ...] | None:
    """The tag keys of each output series (``None``: no tag dimension, one series), as
    InfluxDB resolves ``GROUP BY`` tags, regexes and ``*`` against the measurement's keys."""
    if not analysis.tag_dimensions:
        return None
    keys: list[str] = []
    for dim in analysis.tag_dimensions:
        if isinstance(dim, WildcardDimension):
            keys.extend(sorted(tag_keys))
        elif isinstance(dim, TagDimension):
            keys.append(dim.name)
        elif isinstance(dim, RegexDimension):
            keys.extend(k for k in sorted(tag_keys) if regex_search(dim.pattern, k))
    return tuple(sorted(set(keys)))


def _statement(
    analysis: Analysis,
    source: Measurement,
    fields: list[Field],
    start: int,
    end: int,
    dims: tuple[Dimension, ...],
    fill: Fill | None,
) -> str:
    bounds: Expr = BinaryExpr(
        "AND",
        BinaryExpr(">=", VarRef("time"), IntegerLit(start)),
        BinaryExpr("<", VarRef("time"), IntegerLit(end)),
    )
    cond = analysis.condition
    condition = bounds if cond is None else BinaryExpr("AND", ParenExpr(cond), bounds)
    stmt = SelectStatement(
        fields=tuple(fields), sources=(source,), condition=condition, dimensions=dims, fill=fill
    )
    return render(stmt)


def _fields(analysis: Analysis, name: Any) -> list[Field]:
    return [
        Field(name(comp, f), component_alias(i)) for i, (comp, f) in enumerate(analysis.components)
    ]


def cover(
    lo: int, hi: int, finer: Sequence[TierSpec], now_ns: int, lag_ns: int
) -> list[tuple[TierSpec | None, int, int]]:
    """Pieces ``(tier or None for raw, start, end)`` covering ``[lo, hi)``: the whole windows
    of the coarsest of the ``finer`` tiers (coarse to fine) that the worker has written and
    the tier still keeps, the rest recursively from finer tiers, raw last. So a range edge
    reads at most one window of each finer tier's worth of raw points, not one of the chosen
    tier (a day of raw values at the 1d tier)."""
    if lo >= hi:
        return []
    for i, tier in enumerate(finer):
        size = tier.window_ns
        if tier.retention_ns and lo < now_ns - tier.retention_ns:
            continue
        x = -(-lo // size) * size
        y = (min(hi, now_ns - lag_ns) // size) * size
        if x < y:
            rest = finer[i + 1 :]
            return [
                *cover(lo, x, rest, now_ns, lag_ns),
                (tier, x, y),
                *cover(y, hi, rest, now_ns, lag_ns),
            ]
    return [(None, lo, hi)]


def build_function_parts(
    analysis: Analysis,
    tier: TierSpec,
    now_ns: int,
    lag_ns: int = 0,
    tiers: Sequence[TierSpec] = (),
) -> list[FunctionPart]:
    """The InfluxDB statements of a percentile or counter plan, each returning one column
    ``c<i>`` per component of ``analysis.components``. The range edges outside the chosen
    tier's whole windows are read from the finer ``tiers`` where they can be (:func:`cover`)."""
    a, b = body_range(analysis, tier.window_ns, now_ns, lag_ns)
    finer = sorted(
        (t for t in tiers if t.name != RAW_TIER and 0 < t.window_ns < tier.window_ns),
        key=lambda t: -t.window_ns,
    )
    src = analysis.source
    start, end = analysis.start_ns, analysis.end_ns
    tags = analysis.tag_dimensions
    timed = (TimeDimension(DurationLit(analysis.interval_ns)), *tags)

    def source(t: TierSpec | None) -> Measurement:
        if t is None:
            return src
        return Measurement(name=src.name, database=src.database, retention_policy=t.name)

    def pieces(lo: int, hi: int) -> list[tuple[TierSpec | None, int, int]]:
        return cover(lo, hi, finer, now_ns, lag_ns)

    raw_values = _fields(analysis, lambda _c, f: VarRef(f))
    parts: list[FunctionPart] = []
    if analysis.kind == KIND_PERCENTILE:
        sketch_values = _fields(analysis, lambda c, f: VarRef(tier_field_name(c, f)))
        edges = [*pieces(start, a), (tier, a, b), *pieces(b, end)]
        for t, lo, hi in edges:
            fields = raw_values if t is None else sketch_values
            sql = _statement(analysis, source(t), fields, lo, hi, tags, None)
            counts = [Field(Call("count", (f.expr,)), f.alias) for f in fields]
            count_sql = _statement(analysis, source(t), counts, lo, hi, (), None)
            parts.append(FunctionPart("raw" if t is None else "body", _name(t), sql, count_sql))
        return parts
    if analysis.kind != KIND_COUNTER:
        raise UnrewritableQueryError(f"not a percentile or counter statement: {analysis.kind}")
    every = (WildcardDimension(),)
    interval = analysis.interval_ns
    first_bucket = start - start % interval
    raw_counts = _fields(analysis, lambda _c, f: Call("count", (VarRef(f),)))
    tier_counts = _fields(
        analysis, lambda _c, f: Call("sum", (VarRef(tier_field_name("count", f)),))
    )
    sums = _fields(analysis, lambda c, f: Call("sum", (VarRef(tier_field_name(c, f)),)))
    lasts = _fields(analysis, lambda _c, f: Call("last", (VarRef(tier_field_name("last", f)),)))
    coverage = [
        field
        for i, (c, f) in enumerate(analysis.components)
        for field in (
            Field(Call("count", (VarRef(tier_field_name(c, f)),)), f"{component_alias(i)}_i"),
            Field(Call("count", (VarRef(tier_field_name("count", f)),)), f"{component_alias(i)}_n"),
        )
    ]

    def increases(role: str, t: TierSpec, lo: int, hi: int) -> FunctionPart:
        sql = _statement(analysis, source(t), sums, lo, hi, timed, Fill("none"))
        count_sql = _statement(analysis, source(t), coverage, lo, hi, (), None)
        return FunctionPart(role, t.name, sql, count_sql)

    def counted(role: str, lo: int, hi: int) -> None:
        for t, p_lo, p_hi in pieces(lo, hi):
            fields = raw_counts if t is None else tier_counts
            sql = _statement(analysis, source(t), fields, p_lo, p_hi, timed, Fill("none"))
            parts.append(FunctionPart(role, _name(t), sql))

    # InfluxDB reads from one interval before the range start for difference()/derivative()
    # and gives a row to every interval holding a sample of what it read except the first.
    counted("before_count", start - interval, start)
    counted("head_count", start, a)
    if first_bucket < a:
        # The first interval's increase is that of its whole windows, as InfluxDB's first
        # difference is its last sample minus the last one before the interval.
        parts.append(increases("head_increase", tier, first_bucket, a))
    parts.append(increases("body", tier, a, b))
    if b >= end:
        return parts
    # The tail: finer tiers' increases, then raw samples from the last sample before them.
    sql = _statement(analysis, source(tier), lasts, first_bucket, b, every, None)
    parts.append(FunctionPart("previous", tier.name, sql))
    for t, lo, hi in pieces(b, end):
        if t is None:
            sql = _statement(analysis, src, raw_values, lo, hi, every, None)
            parts.append(FunctionPart("tail", RAW_TIER, sql))
            continue
        parts.append(increases("body", t, lo, hi))
        sql = _statement(analysis, source(t), lasts, lo, hi, every, None)
        parts.append(FunctionPart("previous", t.name, sql))
    return parts


def _name(tier: TierSpec | None) -> str:
    return RAW_TIER if tier is None else tier.name


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------


def _bucket(t: int, interval: int) -> int:
    return t - t % interval


def _bucket_times(analysis: Analysis) -> range:
    interval = analysis.interval_ns
    first = analysis.start_ns - analysis.start_ns % interval
    last = (analysis.end_ns - 1) - (analysis.end_ns - 1) % interval
    return range(first, last + 1, interval)


def _group_of(series: Series, keys: tuple[str, ...] | None) -> tuple[str, TagSet]:
    """The output series a part's series belongs to: its tags projected on the group keys."""
    if keys is None:
        return series.name, ()
    tags = series.tags or {}
    return series.name, tuple((k, tags.get(k, "")) for k in keys)


def _tags(key: tuple[str, TagSet], keys: tuple[str, ...] | None) -> dict[str, str] | None:
    return None if keys is None else dict(key[1])


def merge_percentile_parts(
    analysis: Analysis,
    parts: Sequence[FunctionPart],
    results: Sequence[list[Series]],
    keys: tuple[str, ...] | None,
    integer_fields: frozenset[str] = frozenset(),
) -> list[Series]:
    """The percentile answer: per output series, interval and field, the merge of the body's
    sketches and the head's and tail's raw values; for ``integer_fields`` the nearest integer
    (InfluxDB answers one of the field's values: exact below 50, within 1 % above)."""
    interval = analysis.interval_ns
    fields = [f for _, f in analysis.components]
    sketches: dict[tuple[tuple[str, TagSet], int, int], SketchAccumulator] = defaultdict(
        SketchAccumulator
    )
    raw: dict[tuple[tuple[str, TagSet], int, int], list[float]] = defaultdict(list)
    present: set[tuple[str, TagSet]] = set()
    for part, part_series in zip(parts, results, strict=True):
        for s in part_series:
            group = _group_of(s, keys)
            for row in s.values:
                bucket = _bucket(int(row[0]), interval)
                for j, value in enumerate(row[1 : 1 + len(fields)]):
                    if value is None:
                        continue
                    present.add(group)
                    if part.role == "body":
                        if isinstance(value, str):
                            sketches[(group, bucket, j)].add_encoded(value)
                    elif _is_number(value):
                        raw[(group, bucket, j)].append(float(value))
    for key, values in raw.items():
        sketches[key].add_values(values)
    index = {key: i for i, key in enumerate(analysis.components)}
    percents: dict[int, list[float]] = defaultdict(list)
    for col in analysis.columns:
        percents[index[("sketch", col.field)]].append(col.param)
    answers: dict[tuple[tuple[str, TagSet], int, int], dict[float, float | None]] = {}
    for key, acc in sketches.items():
        wanted = percents[key[2]]
        answers[key] = dict(zip(wanted, acc.percentiles(wanted), strict=True))
    out: list[Series] = []
    columns = ["time", *(c.name for c in analysis.columns)]
    for group in sorted(present):
        rows: list[list[Any]] = []
        for t in _bucket_times(analysis):
            out_row: list[Any] = [t]
            for col in analysis.columns:
                got = answers.get((group, t, index[("sketch", col.field)]))
                value = None if got is None else got[col.param]
                if value is not None and col.field in integer_fields:
                    value = math.floor(value + 0.5)
                out_row.append(value)
            rows.append(out_row)
        rows = apply_fill(analysis, rows)
        if rows:
            out.append(Series(group[0], _tags(group, keys), columns, rows))
    return out


def _is_number(value: Any) -> bool:
    """A value InfluxDB returned for a numeric field (not a string a conflicting write left)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _increase(previous: float | None, value: float) -> float:
    """Prometheus' rule for one pair of samples: a drop is a reset, counted from zero."""
    if previous is None:
        return 0.0
    return value - previous if value >= previous else value


def merge_counter_parts(
    analysis: Analysis,
    parts: Sequence[FunctionPart],
    results: Sequence[list[Series]],
    keys: tuple[str, ...] | None,
) -> list[Series]:
    """The counter answer: per output series and interval, the sum of its series' increases;
    rows as InfluxDB lays out ``difference``/``derivative``: only intervals holding samples,
    not the first of them (counting the samples of ``[start - interval, start)``, which
    InfluxDB reads too)."""
    interval = analysis.interval_ns
    width = len(analysis.components)
    increase: dict[tuple[tuple[str, TagSet], int, int], float] = defaultdict(float)
    holding: dict[tuple[tuple[str, TagSet], int], set[int]] = defaultdict(set)
    previous: dict[tuple[str, TagSet], list[Any]] = {}
    for part, part_series in zip(parts, results, strict=True):
        role = part.role
        for s in part_series:
            if role == "previous":  # parts in time order: the latest non-null wins
                last = previous.setdefault(s.key, [None] * width)
                for j, value in enumerate(s.values[0][1 : 1 + width] if s.values else []):
                    if _is_number(value):
                        last[j] = float(value)
                continue
            group = _group_of(s, keys)
            if role == "tail":
                last = previous.get(s.key, [None] * width)
                for part_row in s.values:
                    t = _bucket(int(part_row[0]), interval)
                    for j, value in enumerate(part_row[1 : 1 + width]):
                        if not _is_number(value):
                            continue
                        holding[(group, j)].add(t)
                        increase[(group, t, j)] += _increase(last[j], float(value))
                        last[j] = float(value)
                continue
            for part_row in s.values:
                t = _bucket(int(part_row[0]), interval)
                for j, value in enumerate(part_row[1 : 1 + width]):
                    if not _is_number(value):
                        continue
                    if role != "head_increase":
                        holding[(group, j)].add(t)
                    if role in ("head_increase", "body"):
                        increase[(group, t, j)] += float(value)
    index = {key: i for i, key in enumerate(analysis.components)}
    groups = sorted({g for g, _ in holding})
    first = {key: min(times) for key, times in holding.items()}
    out: list[Series] = []
    columns = ["time", *(c.name for c in analysis.columns)]
    for group in groups:
        rows: list[list[Any]] = []
        for t in _bucket_times(analysis):
            out_row: list[Any] = [t]
            for col in analysis.columns:
                j = index[("increase", col.field)]
                times = holding.get((group, j), set())
                if t not in times or t == first[(group, j)]:
                    out_row.append(None)
                    continue
                value = increase.get((group, t, j), 0.0)
                if col.param:  # a derivative: per unit of time
                    value = value * col.param / interval
                out_row.append(value)
            rows.append(out_row)
        rows = [r for r in rows if any(v is not None for v in r[1:])]
        if rows:
            out.append(Series(group[0], _tags(group, keys), columns, rows))
    return out
