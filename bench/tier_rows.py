"""Tier rows read back from InfluxDB, and the cross-check of two contenders' rows.

A row is identified by (measurement, tags, window start ns) and holds its fields
(``count_f``, ``sum_f``, ...). :func:`compare_rows` is the correctness gate of
``bench_worker.py``: every contender's 1m rows must equal the metricsflow worker's (same row
keys, same field names; integers exactly, floats within ``rel_tol`` relative) before any
figure is reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

RowKey = tuple[str, tuple[tuple[str, str], ...], int]
Rows = dict[RowKey, dict[str, float | int]]


def rows_from_series(series: Iterable[Mapping[str, Any]]) -> Rows:
    """Rows from the ``series`` of an InfluxDB 1.x answer to ``SELECT * ... GROUP BY *``
    queried with ``epoch=ns`` (null columns = fields the row does not have)."""
    rows: Rows = {}
    for s in series:
        tags = tuple(sorted((s.get("tags") or {}).items()))
        columns = s["columns"]
        t = columns.index("time")
        for values in s["values"]:
            key = (s["name"], tags, int(values[t]))
            row = rows.setdefault(key, {})
            for name, v in zip(columns, values, strict=True):
                if name != "time" and v is not None:
                    row[name] = v
    return rows


def _same(a: float | int, b: float | int, rel_tol: float) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=rel_tol * 1e-3)


def compare_rows(
    reference: Rows, other: Rows, *, rel_tol: float = 1e-9, limit: int = 10
) -> list[str]:
    """The differences of ``other`` from ``reference`` (empty = the same rows), at most
    ``limit`` described, then a count of the rest. Integers from InfluxDB (``count_f``) must be
    equal; other values equal within ``rel_tol`` relative."""
    problems: list[str] = []
    missing = reference.keys() - other.keys()
    extra = other.keys() - reference.keys()
    for key in sorted(missing)[:limit]:
        problems.append(f"missing row {key}")
    for key in sorted(extra)[:limit]:
        problems.append(f"unexpected row {key}: {other[key]}")
    total = len(missing) + len(extra)
    for key in sorted(reference.keys() & other.keys()):
        want, got = reference[key], other[key]
        if want.keys() != got.keys():
            total += 1
            if len(problems) < limit:
                problems.append(f"row {key}: fields {sorted(got)} instead of {sorted(want)}")
            continue
        for name, value in want.items():
            if not _same(value, got[name], rel_tol):
                total += 1
                if len(problems) < limit:
                    problems.append(f"row {key}: {name}={got[name]!r} instead of {value!r}")
    if total > len(problems):
        problems.append(f"... {total - len(problems)} more difference(s)")
    return problems
