"""Tier rows as line protocol, named the way InfluxDB's continuous queries name them.

One :class:`AggregateBatch` row (time series ``db / series key / field f``, one window)
becomes one line in the tier's retention policy::

    <series key> count_f=<n>i,sum_f=<x>,min_f=..,max_f=..,mean_f=..,first_f=..,last_f=.. <start>

Measurement and tags are the series key's (kept as they came); ``count_`` is an integer, every
other aggregate a float (``repr`` of a float64 round-trips exactly); the timestamp is the
window start in nanoseconds, as in ``GROUP BY time()``. A non-finite aggregate (a float sum
that overflowed) is left out of its line rather than failing the whole write.
"""

from __future__ import annotations

import math

from metricsflow.model.escaping import escape_field_key as escape_key
from metricsflow.runtime.records import AggregateBatch, split_window_key


def aggregate_lines(batch: AggregateBatch) -> dict[str, list[bytes]]:
    """Encode the rows of ``batch`` as line protocol, grouped by database."""
    # ``batch.keys`` is the producing operator's whole (append-only) key dictionary: split
    # only the keys this batch uses, or every emission would cost O(all series).
    idx = batch.key_idx.tolist()
    prefixes: dict[int, tuple[str, str, str]] = {}
    for k in set(idx):
        db, series, field_key = split_window_key(batch.keys[k])
        prefixes[k] = (db, series, escape_key(field_key))
    by_db: dict[str, list[bytes]] = {}
    starts = batch.window_start_ns.tolist()
    counts = batch.count.tolist()
    sums = batch.sum.tolist()
    mins = batch.min.tolist()
    maxs = batch.max.tolist()
    firsts = batch.first.tolist()
    lasts = batch.last.tolist()
    for i, k in enumerate(idx):
        db, series, f = prefixes[k]
        n = counts[i]
        s = sums[i]
        mean = s / n if n else math.nan
        parts = [f"count_{f}={n}i"]
        for name, value in (
            ("sum", s),
            ("min", mins[i]),
            ("max", maxs[i]),
            ("mean", mean),
            ("first", firsts[i]),
            ("last", lasts[i]),
        ):
            if math.isfinite(value):
                parts.append(f"{name}_{f}={value!r}")
        line = f"{series} {','.join(parts)} {starts[i]}".encode()
        by_db.setdefault(db, []).append(line)
    return by_db
