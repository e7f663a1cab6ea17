"""Counter and sketch columns of the tier rows, through the whole cascade, against references
written here with plain loops (not the project's kernels): ``increase_``/``resets_`` exactly at
every tier, ``p50_``..``p99_`` within the sketch's 1 % of the exact nearest rank, for random
arrival orders, overwrites, resets at and between window boundaries, late points within the
allowed lateness, and a checkpoint + restore in the middle of the stream."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metricsflow.model.fieldkinds import FieldKinds, FieldSelector
from metricsflow.runtime.records import AggregateBatch, RecordBatch, Watermark
from metricsflow.sinks.correction_rows import build_batch, rows_from_samples
from metricsflow.sinks.lines import aggregate_lines
from metricsflow.windows import TierSpec, build_cascade, sketches

S = 1_000_000_000
COUNTER = "db\x00requests_total,host=a\x00value"
COUNTER_B = "db\x00net,host=b\x00bytes_recv"
LATENCY = "db\x00http,host=a\x00latency_ms"
GAUGE = "db\x00cpu,host=a\x00usage"
KEYS = (COUNTER, COUNTER_B, LATENCY, GAUGE)
TIERS = (
    TierSpec("raw", "0s", "1d"),
    TierSpec("10s", "10s", "30d"),
    TierSpec("1m", "1m", "52w"),
    TierSpec("5m", "5m", "INF"),
)
KINDS = FieldKinds(
    counters=FieldSelector.parse("*_total/*,net/bytes_*"),
    sketches=FieldSelector.parse("*/latency*"),
)
BOUND = 7 * S  # points arrive up to 7 s out of order ...
BEHIND = 4 * S  # ... and the watermark runs up to 4 s ahead of that: late but within lateness
LATENESS = 15 * S

Write = tuple[int, int, int]  # key index, t in seconds, value


def reference_counters(final: dict[tuple[str, int], float], window: int) -> dict[Any, Any]:
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for (key, t), v in final.items():
        series[key].append((t, v))
    out: dict[tuple[str, int], tuple[float, int]] = {}
    for key, samples in series.items():
        samples.sort()
        previous: float | None = None
        for t, v in samples:
            start = t - t % window
            inc, resets = out.get((key, start), (0.0, 0))
            if previous is not None:
                if v < previous:
                    inc, resets = inc + v, resets + 1
                else:
                    inc += v - previous
            out[(key, start)] = (inc, resets)
            previous = v
    return out


def nearest_rank(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    rank = math.floor(len(ordered) * pct / 100 + 0.5) - 1
    return ordered[min(max(rank, 0), len(ordered) - 1)]


def final_rows(tap: Any) -> dict[tuple[str, int], tuple[Any, ...]]:
    """What a consumer that overwrites holds: (key, window start) -> (increase, resets, bins)."""
    rows: dict[tuple[str, int], tuple[Any, ...]] = {}
    for batch in tap.batches():
        pct_rows: dict[int, list[float]] = {}
        if batch.sketches is not None:
            gid, values = sketches.percentiles(batch.sketches)
            pct_rows = dict(zip(gid.tolist(), values.tolist(), strict=True))
        for i in range(len(batch)):
            key = batch.keys[int(batch.key_idx[i])]
            inc = None if batch.increase is None else float(batch.increase[i])
            resets = None if batch.resets is None else int(batch.resets[i])
            rows[(key, int(batch.window_start_ns[i]))] = (inc, resets, pct_rows.get(i))
    return rows


streams = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 400), st.integers(0, 40)),
    min_size=1,
    max_size=120,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    writes=streams,
    batch=st.integers(1, 9),
    restore_at=st.integers(0, 20),
    shuffle=st.randoms(use_true_random=False),
    backend=st.sampled_from(["heap", "rocksdb"]),
)
def test_counter_and_sketch_fields_equal_independent_references_at_every_tier(
    writes: list[Write],
    batch: int,
    restore_at: int,
    shuffle: Any,
    backend: str,
    tmp_path_factory: Any,
) -> None:
    from metricsflow.checkpointing.storage import FsCheckpointStorage
    from tests.windows.conftest import Chain, _backends

    # arrival order: sorted by time, then shuffled within BOUND (bounded out-of-orderness)
    keyed = sorted(writes, key=lambda w: w[1] + shuffle.uniform(0, BOUND / S))
    storage = FsCheckpointStorage(str(tmp_path_factory.mktemp("ckpt")))
    factory_iter = _backends(backend, tmp_path_factory.mktemp("state"))
    make_backend = next(factory_iter)

    def new_chain(restore: Any = None) -> Chain:
        ops = build_cascade(TIERS, LATENESS, field_kinds=KINDS)
        return Chain(ops, [make_backend(o.uid) for o in ops], storage, frozenset({0}), restore)

    chain = new_chain()
    taps_before: list[Any] = []
    max_t = -(10**18)
    for n, i in enumerate(range(0, len(keyed), batch)):
        part = keyed[i : i + batch]
        chain.push(
            RecordBatch(
                0,
                KEYS,
                np.array([k for k, _, _ in part], dtype=np.int32),
                np.array([t * S for _, t, _ in part], dtype=np.int64),
                np.array([float(v) for _, _, v in part]),
            )
        )
        max_t = max(max_t, *(t * S for _, t, _ in part))
        chain.watermark(Watermark(0, max_t - BOUND + BEHIND))
        if n == restore_at:  # checkpoint, then continue in a fresh chain restored from it
            snapshot = chain.checkpoint(n + 1)
            taps_before = chain.taps
            chain = new_chain(snapshot)
    chain.finish()
    assert all(not tap.late for tap in [*taps_before, *chain.taps]), "nothing beyond lateness"

    final: dict[tuple[str, int], float] = {}
    for k, t, v in keyed:  # arrival order: last write wins
        final[(KEYS[k], t * S)] = float(v)
    for level, tier in enumerate(TIERS[1:]):
        got: dict[tuple[str, int], tuple[Any, ...]] = {}
        for tap in ([taps_before[level]] if taps_before else []) + [chain.taps[level]]:
            got.update(final_rows(tap))
        for key in (COUNTER, COUNTER_B):
            ref = reference_counters(
                {kt: v for kt, v in final.items() if kt[0] == key}, tier.window_ns
            )
            mine = {(k, s): (row[0], row[1]) for (k, s), row in got.items() if k == key}
            assert mine == ref, f"tier {tier.name} key {key!r}"
        values: dict[int, list[float]] = defaultdict(list)
        for (key, t), v in final.items():
            if key == LATENCY:
                values[t - t % tier.window_ns].append(v)
        for start, vals in values.items():
            inc, _, pct = got[(LATENCY, start)]
            assert inc is None or math.isnan(inc)
            for j, p in enumerate(sketches.PERCENTILES):
                exact = nearest_rank(vals, p)
                assert abs(pct[j] - exact) <= 0.01 * abs(exact) + 1e-12, (tier.name, start, p)
        for (key, _), row in got.items():
            if key == GAUGE:
                assert row[2] is None
                assert row[0] is None or math.isnan(row[0])


def test_tier_lines_carry_increase_resets_sketch_and_percentiles() -> None:
    bins = sketches.from_values(np.array([1, 1, 1]), np.array([2.0, 4.0, 8.0]))
    batch = AggregateBatch(
        key_group=0,
        tier="1m",
        window_ns=60 * S,
        keys=(GAUGE, COUNTER, LATENCY),
        key_idx=np.array([1, 2, 0], dtype=np.int32),
        window_start_ns=np.array([0, 0, 0], dtype=np.int64),
        count=np.array([2, 3, 1], dtype=np.int64),
        sum=np.array([3.0, 14.0, 1.0]),
        min=np.array([1.0, 2.0, 1.0]),
        max=np.array([2.0, 8.0, 1.0]),
        first_ts_ns=np.zeros(3, dtype=np.int64),
        first=np.array([1.0, 2.0, 1.0]),
        last_ts_ns=np.zeros(3, dtype=np.int64),
        last=np.array([2.0, 8.0, 1.0]),
        increase=np.array([5.0, np.nan, np.nan]),
        resets=np.array([1, 0, 0], dtype=np.int64),
        sketches=bins,
    )
    counter_line, latency_line, gauge_line = aggregate_lines(batch)["db"]
    assert b"increase_value=5.0,resets_value=1i" in counter_line
    assert b"sketch" not in counter_line
    assert b"increase_" not in latency_line
    assert b'sketch_latency_ms="' in latency_line
    assert b"p50_latency_ms=" in latency_line
    assert b"p99_latency_ms=" in latency_line
    assert b"increase_" not in gauge_line
    assert b"sketch_" not in gauge_line


def test_corrected_rows_from_raw_samples_equal_a_plain_reference() -> None:
    """A correction of window 10 of a counter re-derives it and the window of the next sample
    (30, across an empty window), from the samples and the previous sample (9.0 at t=8)."""
    samples = [(10, 12.0), (12, 3.0), (15, 5.0), (31, 4.0), (33, 9.0)]
    rows = rows_from_samples(samples, 9.0, {10}, 10, counter=True, sketched=False)
    assert sorted(rows) == [10, 30]
    ten, thirty = rows[10], rows[30]
    # pairs: 9 -> 12 (+3), 12 -> 3 (reset, +3), 3 -> 5 (+2); then 5 -> 4 (reset, +4), 4 -> 9 (+5)
    assert (ten.increase, ten.resets) == (8.0, 1)
    assert (thirty.increase, thirty.resets) == (9.0, 1)
    assert ten.aggs == (3.0, 20.0, 3.0, 12.0, 12.0, 5.0)
    sketched = rows_from_samples(samples, None, {30}, 10, counter=False, sketched=True)
    assert sorted(sketched) == [30]
    assert sketched[30].values == [4.0, 9.0]
    assert math.isnan(sketched[30].increase)
    batch = build_batch(0, "10s", 10, [("k", 30, sketched[30]), ("c", 10, ten)])
    assert batch.increase is not None
    assert math.isnan(float(batch.increase[0]))
    assert float(batch.increase[1]) == 8.0
    assert batch.sketches is not None
    assert set(batch.sketches.group.tolist()) == {0}
