"""Corrected tier rows of counter and sketched fields (docs/counters-and-percentiles.md).

InfluxQL has no reset-aware increase and no mergeable percentile, so for these fields the
correction service (corrections.py) reads what the kernels need instead of InfluxQL aggregates:

* finest tier, from raw: the field's *samples* in the corrected range, the last sample before
  it (a counter's previous sample) and the first sample after it (whose window's boundary pair
  changes too); every row is computed here from the samples, the plain aggregates included;
* coarser tiers, from the next finer tier: ``sum(increase_f)``, ``sum(resets_f)`` with the
  other aggregates, and the finer ``sketch_f`` strings, merged (never the percentiles).

A row is a :class:`CorrectedRow`; :func:`build_batch` turns rows into an ``AggregateBatch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from metricsflow.runtime.records import AggregateBatch, SketchBins
from metricsflow.windows import sketches


@dataclass
class CorrectedRow:
    """One re-derived (key, window): the six aggregates, and the counter/sketch parts."""

    aggs: tuple[float, ...]
    increase: float = math.nan
    resets: int = 0
    values: list[float] | None = None
    """raw values of a sketched field (finest tier)"""
    encoded: list[str] = field(default_factory=list)
    """finer tiers' ``sketch_f`` strings (coarser tiers)"""


def rows_from_samples(
    samples: list[tuple[int, float]],
    previous: float | None,
    wanted: set[int],
    window_ns: int,
    *,
    counter: bool,
    sketched: bool,
) -> dict[int, CorrectedRow]:
    """Rows of one series and field from its final raw samples (sorted by time) over a range:
    the wanted windows, and for a counter also the window of the first sample after each
    wanted window (its boundary pair), when that sample is among ``samples``."""
    by_window: dict[int, list[tuple[int, float]]] = {}
    for t, v in samples:
        by_window.setdefault(t - t % window_ns, []).append((t, v))
    out_windows = set(w for w in wanted if w in by_window)
    if counter:
        starts = sorted(by_window)
        for w in wanted:
            later = [s for s in starts if s > w]
            if later:
                out_windows.add(later[0])
    rows: dict[int, CorrectedRow] = {}
    last = previous
    for start in sorted(by_window):
        points = by_window[start]
        inc, resets = 0.0, 0
        for _, v in points:
            if last is not None:
                if v < last:
                    inc, resets = inc + v, resets + 1
                else:
                    inc += v - last
            last = v
        if start not in out_windows:
            continue
        vals = [v for _, v in points]
        row = CorrectedRow(
            (float(len(vals)), math.fsum(vals), min(vals), max(vals), vals[0], vals[-1])
        )
        if counter:
            row.increase, row.resets = inc, resets
        elif sketched:
            row.values = vals
        rows[start] = row
    return rows


def build_batch(
    key_group: int,
    tier: str,
    window_ns: int,
    found: list[tuple[str, int, CorrectedRow]],
) -> AggregateBatch:
    keys = tuple(k for k, _, _ in found)
    starts = np.array([s for _, s, _ in found], dtype=np.int64)
    agg = np.array([r.aggs for _, _, r in found], dtype=np.float64).reshape(len(found), 6)
    increase = np.array([r.increase for _, _, r in found], dtype=np.float64)
    resets = np.array([r.resets for _, _, r in found], dtype=np.int64)
    parts: list[SketchBins] = []
    for i, (_, _, row) in enumerate(found):
        if row.values:
            values = np.array(row.values, dtype=np.float64)
            parts.append(sketches.from_values(np.full(values.shape[0], i, np.int64), values))
        if row.encoded:
            parts.append(sketches.decode(row.encoded, np.full(len(row.encoded), i, np.int64)))
    bins = sketches.merge(parts) if parts else None
    has_counter = bool(np.isfinite(increase).any())
    return AggregateBatch(
        key_group=key_group,
        tier=tier,
        window_ns=window_ns,
        keys=keys,
        key_idx=np.arange(len(found), dtype=np.int32),
        window_start_ns=starts,
        count=agg[:, 0].astype(np.int64),
        sum=agg[:, 1].copy(),
        min=agg[:, 2].copy(),
        max=agg[:, 3].copy(),
        first_ts_ns=starts.copy(),  # not stored by InfluxDB's tiers: the window start
        first=agg[:, 4].copy(),
        last_ts_ns=starts + (window_ns - 1),
        last=agg[:, 5].copy(),
        increase=increase if has_counter else None,
        resets=resets if has_counter else None,
        sketches=bins if bins is not None and bins.size else None,
    )
