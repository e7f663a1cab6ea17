"""Throughput of the window cascade (1m -> 1h -> 1d) per core, vectorized vs record-at-a-time.

Both sides get the same input: in-memory micro-batches of one key group each, as a source
would hand them over (``RecordBatch`` for the engine; the same rows as Python tuples for the
baseline, converted before the clock starts, which favours the baseline). Workload: ``series``
time series at a 10 s interval, spread over ``key_groups`` partitions, ``batch_rows`` rows per
batch, ``ooo`` of the points delayed by one batch (out of order, within the watermark bound)
and ``dup`` re-sent (client retries). The baseline is a straightforward record-at-a-time
implementation of the same windows with the same semantics (a dict per window, one point at a
time, the way common Python stream processors work); both results are compared before the
figures are reported.

    .venv/bin/python bench/bench_cascade.py            # full run, writes bench/results/cascade.json
    .venv/bin/python bench/bench_cascade.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import cProfile
import heapq
import json
import math
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.model.columnar import ColumnarChunk
from metricsflow.runtime.base import Operator, OperatorContext, Output, StateInitializationContext
from metricsflow.runtime.records import AggregateBatch, RawLinesBatch, RecordBatch, Watermark
from metricsflow.state.base import KeyedStateBackend
from metricsflow.windows import DEFAULT_TIERS, build_cascade
from metricsflow.windows.keys import WindowKeyIndex
from metricsflow.windows.watermarks import WatermarkAssigner, WatermarkStrategy

S = 1_000_000_000
INTERVAL_NS = 10 * S
BOUND_NS = 30 * S
LATENESS_NS = 60 * S
RESULTS = Path(__file__).parent / "results" / "cascade.json"


# -- workload --------------------------------------------------------------------------------
@dataclass
class Workload:
    batches: list[RecordBatch]
    points: int
    sources: dict[int, WindowKeyIndex] | None = None
    """``keys="source"``: per key group the Kafka source's key index; each batch's ``keys`` and
    ``key_idx`` are then made inside the timed run from a decoded chunk (stable series ids)."""
    chunks: list[ColumnarChunk] | None = None


def make_workload(
    series: int,
    minutes: int,
    key_groups: int,
    batch_rows: int,
    ooo: float,
    dup: float,
    seed: int,
    keys_arg: str = "fresh",
) -> Workload:
    """``keys_arg``: ``"fresh"`` - every batch brings a new tuple of fresh key strings (what the
    Kafka source did before it kept a key dictionary); ``"stable"`` - the same tuple object
    for every batch of a key group; ``"source"`` - what the Kafka source does now: records
    decoded with a per-partition ``KeyInterner`` (stable series/field ids), mapped to window
    key ids by a per-partition ``WindowKeyIndex`` (inside the timed run), ``keys`` = its
    growing ``KeyTuple``."""
    rng = np.random.default_rng(seed)
    t0 = 1_700_006_400 * S  # a day boundary (UTC)
    per_kg = [np.arange(kg, series, key_groups) for kg in range(key_groups)]
    names = [
        f"telegraf\x00cpu,cpu=cpu{i % 64},host=host-{i:06d}\x00usage_user" for i in range(series)
    ]
    phase = rng.integers(0, INTERVAL_NS, series)
    ticks = minutes * 60 * S // INTERVAL_NS
    ticks_per_batch = max(1, batch_rows // max(1, len(per_kg[0])))
    batches: list[RecordBatch] = []
    carry: dict[int, tuple[Any, Any, Any]] = {}
    dictionaries: dict[int, tuple[str, ...]] = {}
    keys_mode: str = keys_arg
    for first in range(0, ticks, ticks_per_batch):
        for kg, ids in enumerate(per_kg):
            n_ticks = min(ticks_per_batch, ticks - first)
            local = np.tile(np.arange(len(ids), dtype=np.int32), n_ticks)
            tick = np.repeat(np.arange(first, first + n_ticks), len(ids))
            ts = t0 + tick * INTERVAL_NS + phase[ids][local]
            values: Any = rng.normal(50.0, 20.0, ts.shape[0])
            keys: tuple[str, ...]
            if kg in carry:  # points delayed from the previous batch: out of order
                cl, ct, cv = carry.pop(kg)
                local, ts, values = (
                    np.concatenate(p) for p in ((local, cl), (ts, ct), (values, cv))
                )
            delayed = rng.random(ts.shape[0]) < ooo
            carry[kg] = (local[delayed], ts[delayed], values[delayed])
            keep = ~delayed
            local, ts, values = local[keep], ts[keep], values[keep]
            again = np.flatnonzero(rng.random(ts.shape[0]) < dup)  # retries: same identity
            local = np.concatenate((local, local[again]))
            ts = np.concatenate((ts, ts[again]))
            values = np.concatenate((values, values[again]))
            # a decoder makes fresh strings for every fetch (their hashes are not cached)
            if keys_mode == "source":
                keys = ()
            elif keys_mode == "stable":
                keys = dictionaries.setdefault(kg, tuple(names[i] for i in ids.tolist()))
            else:
                keys = tuple((names[i] + "!")[:-1] for i in ids.tolist())
            batches.append(
                RecordBatch(kg, keys, local.astype(np.int32), ts.astype(np.int64), values)
            )
    for kg, (cl, ct, cv) in carry.items():
        if keys_mode == "source":
            keys = ()
        else:
            keys = dictionaries.get(kg) or tuple((names[i] + "!")[:-1] for i in per_kg[kg].tolist())
        batches.append(RecordBatch(kg, keys, cl.astype(np.int32), ct.astype(np.int64), cv))
    workload = Workload(batches, sum(len(b) for b in batches))
    if keys_mode == "source":
        # decoded with one KeyInterner per partition: series id = position in the interner
        workload.sources = {kg: WindowKeyIndex() for kg in range(key_groups)}
        for kg, index in workload.sources.items():
            index.interner.series_keys.extend(
                (names[i].split("\x00")[1] + "!")[:-1] for i in per_kg[kg].tolist()
            )
            index.interner.field_keys.append("usage_user")
        workload.chunks = [
            ColumnarChunk(
                workload.sources[b.key_group].interner.series_keys,
                workload.sources[b.key_group].interner.field_keys,
                b.key_idx,
                np.zeros(len(b), dtype=np.int32),
                b.ts_ns,
                b.values,
                np.zeros(len(b), dtype=np.uint8),
                len(b),
                0,
                b"",
            )
            for b in batches
        ]
    return workload


# -- the engine ------------------------------------------------------------------------------
class Sink(Output):
    def __init__(self) -> None:
        self.batches: list[AggregateBatch] = []
        self.late = 0

    def emit(self, element: RecordBatch | AggregateBatch | RawLinesBatch) -> None:
        assert isinstance(element, AggregateBatch)
        self.batches.append(element)

    def emit_watermark(self, watermark: Watermark) -> None:
        pass

    def emit_side(self, tag: str, element: RecordBatch) -> None:
        self.late += len(element)


class Link(Output):
    def __init__(self, downstream: Operator, out: Output, tap: Sink | None = None) -> None:
        self.downstream, self.out, self.tap = downstream, out, tap

    def emit(self, element: RecordBatch | AggregateBatch | RawLinesBatch) -> None:
        if self.tap is not None and isinstance(element, AggregateBatch):
            self.tap.batches.append(element)
        self.downstream.process_batch(element, self.out)

    def emit_watermark(self, watermark: Watermark) -> None:
        self.downstream.process_watermark(watermark, self.out)

    def emit_side(self, tag: str, element: RecordBatch) -> None:
        if self.tap is not None:
            self.tap.late += len(element)


def run_engine(
    workload: Workload, make_backend: Callable[[str], KeyedStateBackend], storage_dir: str
) -> tuple[float, dict[str, Sink]]:
    key_groups = frozenset(b.key_group for b in workload.batches)
    assigner = WatermarkAssigner("watermarks", WatermarkStrategy(BOUND_NS))
    tiers = build_cascade(DEFAULT_TIERS, LATENESS_NS)
    ops: list[Operator] = [assigner, *tiers]
    storage = FsCheckpointStorage(storage_dir)
    backends = [make_backend(op.uid) for op in ops]
    for op, backend in zip(ops, backends, strict=True):
        op.setup(OperatorContext(op.uid, key_groups, backend, storage))
        op.initialize_state(StateInitializationContext(False, (), ()))
        op.open()
    taps = {t.tier.name: Sink() for t in tiers}
    outs: list[Output] = [taps[tiers[-1].tier.name]]
    for i in range(len(tiers) - 1, 0, -1):
        outs.insert(0, Link(tiers[i], outs[0], taps[tiers[i - 1].tier.name]))
    head: Output = Link(tiers[0], outs[0])
    outs.insert(0, head)
    started = time.perf_counter()
    if workload.sources is not None and workload.chunks is not None:
        sources = workload.sources
        for batch, chunk in zip(workload.batches, workload.chunks, strict=True):
            index = sources[batch.key_group]  # what KafkaPartitionReader._decode does
            ids = index.ids("telegraf", chunk)
            assigner.process_batch(
                RecordBatch(batch.key_group, index.keys, ids, chunk.time_ns, chunk.values), head
            )
    else:
        for batch in workload.batches:
            assigner.process_batch(batch, head)
    for op, out in zip(tiers, outs[1:], strict=True):
        op.finish(out)
    elapsed = time.perf_counter() - started
    for backend in backends:
        backend.close()
    return elapsed, taps


# -- the record-at-a-time baseline -----------------------------------------------------------
class RecordAtATimeCascade:
    """The same windows, one record at a time, in plain Python dicts (same semantics)."""

    def __init__(self, windows_ns: list[int], names: list[str]) -> None:
        self.windows_ns = windows_ns
        self.names = names
        # per tier: (kg, window_end) -> {key: {identity: value or partial}}
        self.open: list[dict[tuple[int, int], dict[str, dict[int, Any]]]] = [{} for _ in windows_ns]
        # per tier and key group: heaps of window ends to fire, and to purge
        self.timers: list[dict[int, list[int]]] = [{} for _ in windows_ns]
        self.purge: list[dict[int, list[int]]] = [{} for _ in windows_ns]
        self.max_ts: dict[int, int] = {}
        self.wm: dict[int, int] = {}
        self.results: list[dict[tuple[int, str, int], tuple[Any, ...]]] = [{} for _ in windows_ns]
        self.late = 0

    def process(self, kg: int, key: str, ts: int, value: float) -> None:
        window = self.windows_ns[0]
        end = ts - ts % window + window
        wm = self.wm.get(kg)
        if ts > self.max_ts.get(kg, -(2**63)):
            self.max_ts[kg] = ts
        # lateness per record: the watermark as of this record's position in the log
        row_wm = self.max_ts[kg] - BOUND_NS if wm is None else max(wm, self.max_ts[kg] - BOUND_NS)
        if end + LATENESS_NS <= row_wm:
            self.late += 1
            return
        self._add(0, kg, end, key, ts, value, wm)

    def end_of_batch(self, kg: int) -> None:
        """Watermarks sit between batches (as in the engine), so the semantics match."""
        wm = self.wm.get(kg)
        if kg in self.max_ts and (wm is None or self.max_ts[kg] - BOUND_NS > wm):
            self.advance(kg, self.max_ts[kg] - BOUND_NS)

    def _add(self, tier: int, kg: int, end: int, key: str, ident: int, item: Any, wm: Any) -> None:
        win = self.open[tier].get((kg, end))
        if win is None:
            win = self.open[tier][(kg, end)] = {}
            heapq.heappush(self.timers[tier].setdefault(kg, []), end)
            heapq.heappush(self.purge[tier].setdefault(kg, []), end + LATENESS_NS)
        rows = win.get(key)
        if rows is None:
            rows = win[key] = {}
        rows[ident] = item  # the last arrival of an identity wins
        if wm is not None and end <= wm:  # already fired, within lateness: emit again
            self._emit(tier, kg, end, key, rows)

    def _emit(self, tier: int, kg: int, end: int, key: str, rows: dict[int, Any]) -> None:
        window = self.windows_ns[tier]
        if tier == 0:
            first_ts, last_ts = min(rows), max(rows)
            values = rows.values()
            agg = (
                len(rows),
                sum(values),
                min(values),
                max(values),
                first_ts,
                rows[first_ts],
                last_ts,
                rows[last_ts],
            )
        else:
            parts = [rows[i] for i in sorted(rows)]
            agg = (
                sum(p[0] for p in parts),
                sum(p[1] for p in parts),
                min(p[2] for p in parts),
                max(p[3] for p in parts),
                parts[0][4],
                parts[0][5],
                parts[-1][6],
                parts[-1][7],
            )
        start = end - window
        self.results[tier][(kg, key, start)] = agg
        if tier + 1 < len(self.windows_ns):
            coarse = self.windows_ns[tier + 1]
            coarse_end = start - start % coarse + coarse
            self._add(tier + 1, kg, coarse_end, key, start, agg, self.wm.get(kg))

    def advance(self, kg: int, wm: int) -> None:
        self.wm[kg] = wm
        for tier in range(len(self.windows_ns)):
            timers = self.timers[tier].get(kg, [])
            while timers and timers[0] <= wm:
                end = heapq.heappop(timers)
                win = self.open[tier].get((kg, end))
                if win is not None:
                    for key, rows in win.items():
                        self._emit(tier, kg, end, key, rows)
            purge = self.purge[tier].get(kg, [])
            while purge and purge[0] <= wm:
                self.open[tier].pop((kg, heapq.heappop(purge) - LATENESS_NS), None)

    def finish(self) -> None:
        for kg in list(self.wm):
            self.advance(kg, 2**63 - 1 - LATENESS_NS)


def run_baseline(workload: Workload) -> tuple[float, RecordAtATimeCascade]:
    assert workload.sources is None, "the baseline takes fresh or stable keys"
    windows = [t.window_ns for t in DEFAULT_TIERS[1:]]
    records = [
        (
            b.key_group,
            [
                (b.keys[i], t, v)
                for i, t, v in zip(
                    b.key_idx.tolist(), b.ts_ns.tolist(), b.values.tolist(), strict=True
                )
            ],
        )
        for b in workload.batches
    ]
    cascade = RecordAtATimeCascade(windows, [])
    process, end_of_batch = cascade.process, cascade.end_of_batch
    started = time.perf_counter()
    for kg, rows in records:
        for key, ts, value in rows:
            process(kg, key, ts, value)
        end_of_batch(kg)
    cascade.finish()
    return time.perf_counter() - started, cascade


# -- checks and report -----------------------------------------------------------------------
def final_views(taps: dict[str, Sink]) -> dict[str, dict[tuple[int, str, int], tuple[Any, ...]]]:
    views: dict[str, dict[tuple[int, str, int], tuple[Any, ...]]] = {}
    for tier, sink in taps.items():
        view: dict[tuple[int, str, int], tuple[Any, ...]] = {}
        for b in sink.batches:
            keys = b.keys
            for i, start, c, s, mn, mx in zip(
                b.key_idx.tolist(),
                b.window_start_ns.tolist(),
                b.count.tolist(),
                b.sum.tolist(),
                b.min.tolist(),
                b.max.tolist(),
                strict=True,
            ):
                view[(b.key_group, keys[i], start)] = (c, s, mn, mx)
        views[tier] = view
    return views


def check_equal(taps: dict[str, Sink], baseline: RecordAtATimeCascade) -> None:
    views = final_views(taps)
    for tier, want in zip(views, baseline.results, strict=True):
        got = views[tier]
        if set(got) != set(want):
            raise AssertionError(f"tier {tier}: {len(got)} windows vs baseline {len(want)}")
        for k, g in got.items():
            w = want[k]
            if (
                g[0] != w[0]
                or g[2] != w[2]
                or g[3] != w[3]
                or not math.isclose(g[1], w[1], rel_tol=1e-9, abs_tol=1e-6)
            ):
                raise AssertionError(f"tier {tier} window {k}: {g} vs baseline {w[:4]}")


def backends(names: list[str], root: str) -> dict[str, Callable[[str], KeyedStateBackend]]:
    out: dict[str, Callable[[str], KeyedStateBackend]] = {}
    for name in names:
        if name == "heap":
            from metricsflow.state.heap import HeapKeyedStateBackend

            out[name] = HeapKeyedStateBackend
        elif name == "rocksdb":
            try:
                from metricsflow.state.rocksdb import RocksDBKeyedStateBackend
            except ImportError as exc:
                print(f"rocksdb backend unavailable: {exc}", file=sys.stderr)
                continue
            out[name] = lambda owner: RocksDBKeyedStateBackend(local_dir=root, owner=owner)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--key-groups", type=int, default=4)
    parser.add_argument("--batch-rows", type=int, default=25_000)
    parser.add_argument("--ooo", type=float, default=0.02, help="fraction delayed one batch")
    parser.add_argument("--dup", type=float, default=0.001, help="fraction re-sent")
    parser.add_argument("--backends", default="heap,rocksdb")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--keys", default="source,fresh,stable", help="key modes to run (see make_workload)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="engine runs per contender")
    parser.add_argument("--quick", action="store_true", help="10k series, 5 minutes")
    parser.add_argument("--profile", action="store_true", help="cProfile the heap engine run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.series, args.minutes = 10_000, 5

    def workload_for(keys: str = "fresh") -> Workload:
        """A fresh copy per run: no run profits from string hashes another one computed."""
        return make_workload(
            args.series,
            args.minutes,
            args.key_groups,
            args.batch_rows,
            args.ooo,
            args.dup,
            args.seed,
            keys,
        )

    workload = workload_for()
    print(f"workload: {workload.points:,} points in {len(workload.batches)} batches", flush=True)
    base_s, baseline = run_baseline(workload)
    points, batches = workload.points, len(workload.batches)
    del workload
    base_rate = points / base_s
    rows: list[dict[str, Any]] = [
        {
            "implementation": "record-at-a-time (pure Python dicts)",
            "backend": "-",
            "keys": "-",
            "seconds": round(base_s, 3),
            "points_per_s": round(base_rate),
            "speedup": 1.0,
        }
    ]
    labels = {
        "source": "Kafka source key index (growing KeyTuple)",
        "fresh": "fresh key strings per batch (old source)",
        "stable": "same key tuple every batch",
    }
    modes = args.keys.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-cascade-") as root:
        makers = backends(args.backends.split(","), root)
        runs = [(name, make, mode) for mode in modes for name, make in makers.items()]
        runs = [r for r in runs if r[0] == "heap" or r[2] == "source"]  # rocksdb: realistic only
        timings: dict[tuple[str, str], list[float]] = {}
        for rep in range(args.repeat):  # interleaved, so that load changes hit every contender
            for name, make, mode in runs:
                workload = workload_for(mode)
                try:
                    profile = args.profile and name == "heap" and mode == modes[0] and rep == 0
                    if profile:
                        profiler = cProfile.Profile()
                        profiler.enable()
                    elapsed, taps = run_engine(workload, make, f"{root}/chk-{name}-{mode}-{rep}")
                    if profile:
                        profiler.disable()
                        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
                except Exception as exc:  # a backend under construction must not hide the rest
                    print(f"{name}: failed: {exc!r}", file=sys.stderr)
                    continue
                check_equal(taps, baseline)
                del taps, workload
                timings.setdefault((name, mode), []).append(elapsed)
                print(
                    f"  {name:8} {labels[mode]:44} {points / elapsed:12,.0f} points/s", flush=True
                )
        for (name, mode), times in timings.items():
            elapsed = statistics.median(times)
            rate = points / elapsed
            rows.append(
                {
                    "implementation": "metricsflow TierWindowOperator",
                    "backend": name,
                    "keys": labels[mode],
                    "seconds": round(elapsed, 3),
                    "points_per_s": round(rate),
                    "speedup": round(rate / base_rate, 1),
                    "runs_points_per_s": [round(points / t) for t in times],
                    "speedup_range": [
                        round(points / max(times) / base_rate, 1),
                        round(points / min(times) / base_rate, 1),
                    ],
                }
            )
    print(
        f"\n{'implementation':38} {'backend':8} {'keys':44} {'seconds':>8} {'points/s':>12} "
        f"{'x (median)':>10} {'x range':>12}"
    )
    for r in rows:
        spread = r.get("speedup_range", [1.0, 1.0])
        print(
            f"{r['implementation']:38} {r['backend']:8} {r['keys']:44} {r['seconds']:8.2f} "
            f"{r['points_per_s']:12,} {r['speedup']:10.1f} {spread[0]:5.1f}-{spread[1]:<6.1f}"
        )
    report = {
        "benchmark": "cascade",
        "command": "python bench/bench_cascade.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "workload": {
            "series": args.series,
            "minutes": args.minutes,
            "key_groups": args.key_groups,
            "batch_rows": args.batch_rows,
            "out_of_order": args.ooo,
            "duplicates": args.dup,
            "points": points,
            "batches": batches,
            "tiers": [t.name for t in DEFAULT_TIERS[1:]],
            "bound_ns": BOUND_NS,
            "allowed_lateness_ns": LATENESS_NS,
            "repeat": args.repeat,
        },
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "platform": platform.platform(),
            "cores_used": 1,
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
