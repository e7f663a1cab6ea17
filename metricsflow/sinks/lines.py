"""Tier rows as line protocol, named the way InfluxDB's continuous queries name them.

One :class:`AggregateBatch` row (time series ``db / series key / field f``, one window)
becomes one line in the tier's retention policy::

    <series key> count_f=<n>i,sum_f=<x>,min_f=..,max_f=..,mean_f=..,first_f=..,last_f=.. <start>

Measurement and tags are the series key's (kept as they came); ``count_`` is an integer, every
other aggregate a float (``repr`` of a float64 round-trips exactly); the timestamp is the
window start in nanoseconds, as in ``GROUP BY time()``. A non-finite aggregate (a float sum
that overflowed) is left out of its line rather than failing the whole write.

Counter rows add ``increase_f=<x>,resets_f=<n>i``; sketched rows add ``sketch_f="<base64
DDSketch>"`` and ``p50_f``, ``p90_f``, ``p95_f``, ``p99_f`` (docs/counters-and-percentiles.md).
"""

from __future__ import annotations

import math
from collections.abc import Generator

from metricsflow.model.escaping import escape_field_key as escape_key
from metricsflow.runtime.records import AggregateBatch, split_window_key
from metricsflow.windows import sketches

_PERCENT_NAMES = tuple(f"p{p}" for p in sketches.PERCENTILES)

SLICE_ROWS = 2_000
"""Rows (or distinct series keys) encoded between two pauses of :func:`aggregate_lines_sliced`:
a few milliseconds of per-row formatting, so an event loop driving it is never held long."""

LinesBySlices = Generator[None, None, dict[str, list[bytes]]]


def aggregate_lines(batch: AggregateBatch) -> dict[str, list[bytes]]:
    """Encode the rows of ``batch`` as line protocol, grouped by database."""
    encoder = aggregate_lines_sliced(batch, len(batch) + 1)
    while True:
        try:
            next(encoder)
        except StopIteration as done:
            by_db: dict[str, list[bytes]] = done.value
            return by_db


def aggregate_lines_sliced(batch: AggregateBatch, slice_rows: int = SLICE_ROWS) -> LinesBySlices:
    """:func:`aggregate_lines` in slices: pauses (``yield``) after every ``slice_rows`` rows
    and series keys, and returns the same lines (``StopIteration.value``). The job's sink
    drives it with ``await asyncio.sleep(0)`` between slices, so encoding a big batch never
    holds the event loop (Kafka heartbeats) for more than one slice."""
    # ``batch.keys`` is the producing operator's whole (append-only) key dictionary: split
    # only the keys this batch uses, or every emission would cost O(all series).
    idx = batch.key_idx.tolist()
    prefixes: dict[int, tuple[str, str, str]] = {}
    for j, k in enumerate(set(idx), 1):
        db, series, field_key = split_window_key(batch.keys[k])
        prefixes[k] = (db, series, escape_key(field_key))
        if j % slice_rows == 0:
            yield
    by_db: dict[str, list[bytes]] = {}
    starts = batch.window_start_ns.tolist()
    counts = batch.count.tolist()
    sums = batch.sum.tolist()
    mins = batch.min.tolist()
    maxs = batch.max.tolist()
    firsts = batch.first.tolist()
    lasts = batch.last.tolist()
    extra = _extra_fields(batch)
    yield
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
        if extra is not None:
            parts += [f"{name}_{f}={value}" for name, value in extra[i]]
        line = f"{series} {','.join(parts)} {starts[i]}".encode()
        by_db.setdefault(db, []).append(line)
        if (i + 1) % slice_rows == 0:
            yield
    return by_db


def _extra_fields(batch: AggregateBatch) -> list[list[tuple[str, str]]] | None:
    """Per row, the counter and sketch fields: (name prefix, encoded value)."""
    if batch.increase is None and (batch.sketches is None or batch.sketches.size == 0):
        return None
    out: list[list[tuple[str, str]]] = [[] for _ in range(len(batch))]
    if batch.increase is not None:
        resets = batch.resets.tolist() if batch.resets is not None else [0] * len(batch)
        for i, inc in enumerate(batch.increase.tolist()):
            if math.isfinite(inc):
                out[i] += [("increase", repr(inc)), ("resets", f"{resets[i]}i")]
    bins = batch.sketches
    if bins is not None and bins.size:
        gid, encoded = sketches.encode(bins)
        _, values = sketches.percentiles(bins)
        for row, text, pct in zip(gid.tolist(), encoded, values.tolist(), strict=True):
            fields = out[row]
            fields.append(("sketch", f'"{text}"'))
            fields += [(n, repr(v)) for n, v in zip(_PERCENT_NAMES, pct, strict=True)]
    return out
