"""Merge the parts of a rewritten statement into the response InfluxDB would have given.

Every part (raw head, tier body, raw tail) returns, per series and ``GROUP BY time()`` bucket,
the partial aggregates (components) ``c0, c1, ...`` with ``fill(none)``. Here they are merged
per series and bucket in time order (count and sum add, min/max compare, first keeps the
earliest part's value, last the latest's), the output columns are computed (``mean = sum /
count``), the statement's ``fill`` is applied the way InfluxDB applies it (``count`` fills
empty buckets with 0 under ``fill(null)``; ``linear`` interpolates as InfluxDB's
``linearFloat`` / ``linearInteger`` do), and times are formatted for the ``epoch`` parameter.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.query.base import Series, TagSet
from gateway.query.rewrite import Analysis

_EPOCH_NS: dict[str, int] = {
    "ns": 1,
    "n": 1,
    "u": 1_000,
    "µ": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


@dataclass
class _Accumulator:
    name: str
    tags: dict[str, str] | None
    buckets: dict[int, list[Any]] = field(default_factory=dict)


def _merge_value(component: str, old: Any, new: Any) -> Any:
    if new is None:
        return old
    if old is None:
        return new
    if component in ("count", "sum"):
        return old + new
    if component == "min":
        return min(old, new)
    if component == "max":
        return max(old, new)
    if component == "first":
        return old
    return new  # last: parts arrive in time order


def merge_parts(analysis: Analysis, parts: list[list[Series]]) -> list[Series]:
    """``parts`` in time order, each the series of one part's statement (times in ns)."""
    components = [comp for comp, _ in analysis.components]
    width = len(components)
    series: dict[tuple[str, TagSet], _Accumulator] = {}
    for part in parts:
        for s in part:
            acc = series.setdefault(s.key, _Accumulator(s.name, s.tags))
            for part_row in s.values:
                t = int(part_row[0])
                values = part_row[1 : 1 + width]
                current = acc.buckets.get(t)
                if current is None:
                    acc.buckets[t] = list(values)
                    continue
                for i, comp in enumerate(components):
                    current[i] = _merge_value(comp, current[i], values[i])
    interval = analysis.interval_ns
    first_bucket = analysis.start_ns - analysis.start_ns % interval
    last_bucket = (analysis.end_ns - 1) - (analysis.end_ns - 1) % interval
    bucket_times = range(first_bucket, last_bucket + 1, interval)
    index = {key: i for i, key in enumerate(analysis.components)}
    out: list[Series] = []
    for key in sorted(series):
        acc = series[key]
        rows: list[list[Any]] = []
        for t in bucket_times:
            comps = acc.buckets.get(t)
            row: list[Any] = [t]
            for col in analysis.columns:
                if comps is None:
                    row.append(None)
                elif col.aggregate == "mean":
                    total = comps[index[("sum", col.field)]]
                    count = comps[index[("count", col.field)]]
                    row.append(None if not count or total is None else total / count)
                else:
                    row.append(comps[index[(col.aggregate, col.field)]])
            rows.append(row)
        rows = apply_fill(analysis, rows)
        if rows:
            columns = ["time", *(c.name for c in analysis.columns)]
            out.append(Series(acc.name, acc.tags, columns, rows))
    return out


def apply_fill(analysis: Analysis, rows: list[list[Any]]) -> list[list[Any]]:
    fill = analysis.fill
    if fill.kind == "none":
        return [r for r in rows if any(v is not None for v in r[1:])]
    for j, col in enumerate(analysis.columns, start=1):
        if fill.kind == "null":
            if col.aggregate == "count":
                for r in rows:
                    if r[j] is None:
                        r[j] = 0
        elif fill.kind == "value":
            # InfluxDB casts the fill value to the column's type: count is an integer.
            value = int(fill.value or 0) if col.aggregate == "count" else fill.value
            for r in rows:
                if r[j] is None:
                    r[j] = value
        elif fill.kind == "previous":
            previous: Any = None
            for r in rows:
                if r[j] is None:
                    r[j] = previous
                else:
                    previous = r[j]
        elif fill.kind == "linear":
            _fill_linear(rows, j)
    return rows


def _fill_linear(rows: list[list[Any]], j: int) -> None:
    known = [i for i, r in enumerate(rows) if r[j] is not None]
    for left, right in itertools.pairwise(known):
        if right - left < 2:
            continue
        t0, y0 = rows[left][0], rows[left][j]
        t1, y1 = rows[right][0], rows[right][j]
        slope = float(y1 - y0) / float(t1 - t0)
        for i in range(left + 1, right):
            value = slope * float(rows[i][0] - t0) + float(y0)
            both_int = isinstance(y0, int) and isinstance(y1, int)
            rows[i][j] = int(value) if both_int else value


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def format_time(ns: int, epoch: str | None) -> int | str:
    """``epoch=ns|u|µ|ms|s|m|h`` -> an integer; otherwise RFC3339 with nanoseconds, trailing
    zeros trimmed, as InfluxDB formats ``time.RFC3339Nano``."""
    if epoch:
        unit = _EPOCH_NS.get(epoch, 1)
        return ns // unit
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos:
        stamp += "." + f"{nanos:09d}".rstrip("0")
    return stamp + "Z"


def go_number(value: Any) -> Any:
    """Integral floats as integers, as Go's encoding/json prints float64 (``3`` not ``3.0``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value


def statement_result(statement_id: int, series: list[Series], epoch: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {"statement_id": statement_id}
    rendered: list[dict[str, Any]] = []
    for s in series:
        item: dict[str, Any] = {"name": s.name}
        if s.tags is not None:
            item["tags"] = s.tags
        item["columns"] = s.columns
        item["values"] = [
            [format_time(int(row[0]), epoch), *(go_number(v) for v in row[1:])] for row in s.values
        ]
        rendered.append(item)
    if rendered:
        result["series"] = rendered
    return result
