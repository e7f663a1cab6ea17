"""The whole cascade (watermarks -> 10s -> 1m -> 5m) against an independent reference.

The reference below is plain Python over dicts and shares no code with the engine. It models
the engine's documented semantics (docs/windows.md):

* a point is judged against the watermark *as of its own position* in the log:
  ``max(wm before its batch, max event time up to it - bound)``; it is late iff
  ``end of its finest window + allowed lateness <= that watermark``; late points go to side
  output ``"late"`` and nowhere else;
* after a batch, the watermark of its key group is ``max(wm, max event time - bound)``; on an
  idle tick at least ``idle_timeout`` after the last batch, ``max(wm, now - bound)``;
* every tier's final result (last emitted row per key and window, as the sink overwrites)
  aggregates the accepted points after dedupe (last arrival per key + ts).

count, min, max, first, last (and their timestamps) must match exactly; sum within
``rel 1e-9 + abs 1e-9 * sum(|v|)``, the tolerance stated in docs/windows.md.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from metricsflow.runtime.records import AggregateBatch, RecordBatch
from metricsflow.time import ManualClock
from metricsflow.windows import TierSpec, build_cascade
from metricsflow.windows.watermarks import WatermarkAssigner, WatermarkStrategy

S = 1_000_000_000
TIERS = (
    TierSpec("raw", "0s", "1d"),
    TierSpec("10s", "10s", "1d"),
    TierSpec("1m", "1m", "1d"),
    TierSpec("5m", "5m", "1d"),
)
WINDOWS = {"10s": 10 * S, "1m": 60 * S, "5m": 300 * S}
FINEST = 10 * S


def key_name(kg: int, i: int) -> str:
    return f"db\x00cpu,host=h{kg}-{i}\x00usage"


@st.composite
def streams(draw: st.DrawFn) -> dict[str, Any]:
    n_kg = draw(st.integers(1, 3))
    n_keys = draw(st.integers(1, 4))
    cursor = dict.fromkeys(range(n_kg), draw(st.integers(-50, 400)) * S)
    steps: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 24))):
        if draw(st.integers(0, 5)) == 0:
            steps.append(("tick", draw(st.integers(0, 200)) * S))
            continue
        kg = draw(st.integers(0, n_kg - 1))
        cursor[kg] += draw(st.integers(0, 45)) * S
        rows = draw(
            st.lists(
                st.tuples(
                    st.integers(0, n_keys - 1),
                    st.integers(0, 100),  # seconds behind the cursor
                    st.sampled_from([0, 1, S // 2]),  # sub-second offset: duplicates are common
                    st.one_of(
                        st.integers(-1000, 1000).map(float),
                        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
                    ),
                ),
                min_size=1,
                max_size=12,
            )
        )
        shuffle = draw(st.booleans())
        steps.append(
            ("batch", kg, [(k, cursor[kg] - b * S + o, v) for k, b, o, v in rows], shuffle)
        )
    return {
        "n_kg": n_kg,
        "n_keys": n_keys,
        "steps": steps,
        "bound": draw(st.sampled_from([0, 5 * S, 30 * S])),
        "lateness": draw(st.sampled_from([0, 10 * S, 60 * S])),
        "idle": draw(st.sampled_from([None, 30 * S])),
    }


def to_batch(
    kg: int, n_keys: int, rows: list[tuple[int, int, float]], shuffle: bool
) -> RecordBatch:
    keys = [key_name(kg, i) for i in range(n_keys)]
    if shuffle:  # a different keys tuple (order, content) than the previous batch
        keys = [*reversed(keys), "db\x00unused\x00f"]
    index = {k: i for i, k in enumerate(keys)}
    return RecordBatch(
        key_group=kg,
        keys=tuple(keys),
        key_idx=np.array([index[key_name(kg, k)] for k, _, _ in rows], dtype=np.int32),
        ts_ns=np.array([t for _, t, _ in rows], dtype=np.int64),
        values=np.array([v for _, _, v in rows], dtype=np.float64),
    )


# -- the reference ------------------------------------------------------------------------
def reference(stream: dict[str, Any]) -> tuple[dict[str, dict[Any, Any]], Counter[Any]]:
    bound, lateness, idle = stream["bound"], stream["lateness"], stream["idle"]
    wall = 0
    wm: dict[int, int] = {}
    max_ts: dict[int, int] = {}
    last_input: dict[int, int] = {}
    latest: dict[tuple[int, str, int], float] = {}  # (kg, key, ts) -> value, last arrival wins
    late: Counter[Any] = Counter()
    for step in stream["steps"]:
        if step[0] == "tick":
            wall += step[1]
            if idle is None:
                continue
            for kg in last_input:
                if wall - last_input[kg] >= idle:
                    wm[kg] = max(wm[kg], wall - bound)
            continue
        _, kg, rows, _ = step
        wall += S
        for k, ts, v in rows:  # one record at a time: the watermark as of each row
            key = key_name(kg, k)
            window_end = (ts // FINEST + 1) * FINEST
            max_ts[kg] = max(max_ts.get(kg, -(2**62)), ts)
            wm[kg] = max(wm.get(kg, -(2**62)), max_ts[kg] - bound)
            if window_end + lateness <= wm[kg]:
                late[(kg, key, ts, v)] += 1
            else:
                latest[(kg, key, ts)] = v
        last_input[kg] = wall
    tiers: dict[str, dict[Any, Any]] = {}
    for name, size in WINDOWS.items():
        groups: dict[tuple[int, str, int], list[tuple[int, float]]] = {}
        for (kg, key, ts), v in latest.items():
            groups.setdefault((kg, key, ts // size * size), []).append((ts, v))
        tiers[name] = {}
        for gkey, points in groups.items():
            points.sort()
            values = [v for _, v in points]
            tiers[name][gkey] = {
                "count": len(values),
                "sum": math.fsum(values),
                "abs": math.fsum(abs(v) for v in values),
                "min": min(values),
                "max": max(values),
                "first_ts": points[0][0],
                "first": points[0][1],
                "last_ts": points[-1][0],
                "last": points[-1][1],
            }
    return tiers, late


# -- the engine ---------------------------------------------------------------------------
def final_view(batches: list[AggregateBatch]) -> dict[Any, Any]:
    """What the sink ends up with: the last row emitted per (key group, key, window)."""
    view: dict[Any, Any] = {}
    for b in batches:
        for i in range(len(b)):
            view[(b.key_group, b.keys[int(b.key_idx[i])], int(b.window_start_ns[i]))] = {
                "count": int(b.count[i]),
                "sum": float(b.sum[i]),
                "min": float(b.min[i]),
                "max": float(b.max[i]),
                "first_ts": int(b.first_ts_ns[i]),
                "first": float(b.first[i]),
                "last_ts": int(b.last_ts_ns[i]),
                "last": float(b.last[i]),
            }
    return view


def run_engine(stream: dict[str, Any], chain_factory: Any, backends: Any, storage: Any) -> Any:
    clock = ManualClock(0)
    assigner = WatermarkAssigner(
        "watermarks", WatermarkStrategy(stream["bound"], stream["idle"]), clock
    )
    operators = [assigner, *build_cascade(TIERS, stream["lateness"])]
    chain = chain_factory(
        operators,
        [backends(op.uid) for op in operators],
        storage,
        frozenset(range(stream["n_kg"])),
    )
    for step in stream["steps"]:
        if step[0] == "tick":
            clock.advance(step[1])
            assigner.on_processing_time(clock.now_ns(), chain.outputs[0])
        else:
            _, kg, rows, shuffle = step
            clock.advance(S)
            chain.push(to_batch(kg, stream["n_keys"], rows, shuffle))
    chain.finish()
    return chain, operators


def assert_same(tier: str, got: dict[Any, Any], want: dict[Any, Any]) -> None:
    assert set(got) == set(want), f"tier {tier}: windows differ"
    for gkey, w in want.items():
        g = got[gkey]
        for field in ("count", "min", "max", "first_ts", "first", "last_ts", "last"):
            assert g[field] == w[field], (tier, gkey, field, g, w)
        assert abs(g["sum"] - w["sum"]) <= 1e-9 * abs(w["sum"]) + 1e-9 * w["abs"], (tier, gkey)


FIXTURES = [HealthCheck.function_scoped_fixture]


@settings(max_examples=80, deadline=None, suppress_health_check=FIXTURES)
@given(stream=streams())
def test_every_tier_equals_the_reference_on_the_heap_backend(
    stream: dict[str, Any], chain_factory: Any, heap_backends: Any, storage: Any
) -> None:
    check_against_reference(stream, chain_factory, heap_backends, storage)


@settings(max_examples=12, deadline=None, suppress_health_check=FIXTURES)
@given(stream=streams())
def test_every_tier_equals_the_reference_on_the_rocksdb_backend(
    stream: dict[str, Any], chain_factory: Any, rocksdb_backends: Any, storage: Any
) -> None:
    check_against_reference(stream, chain_factory, rocksdb_backends, storage)


def check_against_reference(
    stream: dict[str, Any], chain_factory: Any, backend_factory: Any, storage: Any
) -> None:
    """Out-of-order, duplicated and late points, several key groups, idle partitions."""
    chain, operators = run_engine(stream, chain_factory, backend_factory, storage)
    want, want_late = reference(stream)
    for i, tier in enumerate(("10s", "1m", "5m"), start=1):
        assert_same(tier, final_view(chain.taps[i].batches()), want[tier])
    got_late: Counter[Any] = Counter()
    for b in chain.taps[1].late:
        for i in range(len(b)):
            got_late[
                (b.key_group, b.keys[int(b.key_idx[i])], int(b.ts_ns[i]), float(b.values[i]))
            ] += 1
    assert got_late == want_late
    assert operators[1].metrics.late_points == sum(want_late.values())
    assert all(not tap.late for tap in chain.taps[2:])
    assert all(op.metrics.late_partials == 0 for op in operators[2:])
    event(f"late points: {bool(want_late)}")
    event(
        f"re-emissions in 10s/1m/5m: {[op.metrics.reemitted_windows > 0 for op in operators[1:]]}"
    )


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURES)
@given(stream=streams(), cut=st.floats(0, 1))
def test_a_restored_cascade_emits_exactly_what_an_uninterrupted_one_emits_on_the_heap_backend(
    stream: dict[str, Any], cut: float, chain_factory: Any, heap_backends: Any, storage: Any
) -> None:
    check_restore(stream, cut, chain_factory, heap_backends, storage)


@settings(max_examples=8, deadline=None, suppress_health_check=FIXTURES)
@given(stream=streams(), cut=st.floats(0, 1))
def test_a_restored_cascade_emits_exactly_what_an_uninterrupted_one_emits_on_rocksdb(
    stream: dict[str, Any], cut: float, chain_factory: Any, rocksdb_backends: Any, storage: Any
) -> None:
    check_restore(stream, cut, chain_factory, rocksdb_backends, storage)


def check_restore(
    stream: dict[str, Any], cut: float, chain_factory: Any, backend_factory: Any, storage: Any
) -> None:
    stream = {**stream, "idle": None}  # idle advances follow the wall clock: not replayable
    whole, _ = run_engine(stream, chain_factory, backend_factory, storage)
    at = int(cut * len(stream["steps"]))
    first = {**stream, "steps": stream["steps"][:at]}
    # run the first part without finishing, checkpoint, restore into fresh operators
    clock = ManualClock(0)
    ops = [
        WatermarkAssigner("watermarks", WatermarkStrategy(stream["bound"], None), clock),
        *build_cascade(TIERS, stream["lateness"]),
    ]
    kgs = frozenset(range(stream["n_kg"]))
    part = chain_factory(ops, [backend_factory(op.uid) for op in ops], storage, kgs)
    for _, kg, rows, shuffle in (s for s in first["steps"] if s[0] == "batch"):
        part.push(to_batch(kg, stream["n_keys"], rows, shuffle))
    emitted_before = [len(tap.elements) for tap in part.taps]
    handles = part.checkpoint(checkpoint_id=7)
    ops2 = [
        WatermarkAssigner("watermarks", WatermarkStrategy(stream["bound"], None), clock),
        *build_cascade(TIERS, stream["lateness"]),
    ]
    resumed = chain_factory(
        ops2, [backend_factory(op.uid + "-2") for op in ops2], storage, kgs, restore=handles
    )
    for _, kg, rows, shuffle in (s for s in stream["steps"][at:] if s[0] == "batch"):
        resumed.push(to_batch(kg, stream["n_keys"], rows, shuffle))
    resumed.finish()
    for i in range(1, len(ops)):
        tail = whole.taps[i].elements[emitted_before[i] :]
        assert describe(resumed.taps[i].elements) == describe(tail)


def describe(elements: list[Any]) -> list[Any]:
    out: list[Any] = []
    for e in elements:
        if isinstance(e, AggregateBatch):
            out.append(sorted(final_view([e]).items()))
        else:
            out.append(e)
    return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_reference_model_itself_dedupes_and_drops_late_points(shuffle: bool) -> None:
    stream = {
        "n_kg": 1,
        "n_keys": 1,
        "bound": 0,
        "lateness": 0,
        "idle": None,
        "steps": [
            ("batch", 0, [(0, 1 * S, 1.0), (0, 1 * S, 5.0), (0, 2 * S, 2.0)], shuffle),
            ("batch", 0, [(0, 25 * S, 3.0)], shuffle),
            ("batch", 0, [(0, 3 * S, 100.0)], shuffle),  # window [0, 10s) closed: late
        ],
    }
    tiers, late = reference(stream)
    assert tiers["10s"][(0, key_name(0, 0), 0)]["sum"] == 7.0
    assert late == Counter({(0, key_name(0, 0), 3 * S, 100.0): 1})
