"""The window cascade (1m -> 1h -> 1d, heap backend) with sketches on 10 % of the fields.

The workload is bench_cascade.py's (10 s points, 2 % out of order, 0.1 % retries, one key
tuple per key group); every tenth series' field is renamed ``latency_ms`` so that the default
sketch patterns pick it. Measured per run, single thread (one core):

* ``cascade``: the operators alone (raw -> 1m sketches from values, 1h/1d merges);
* ``+ encode``: plus, for every emitted tier row batch, what the InfluxDB sink adds for the new
  fields: ``sketch_<f>`` base64 strings and ``p50_..p99_`` (``sketches.encode`` +
  ``sketches.percentiles``), and the line protocol of every row (``aggregate_lines``).

Times are CPU seconds of the process (``time.process_time``), so the figures are points per
CPU-second (per core) even on a loaded machine; the two configurations run interleaved.

Storage cost: the average line-protocol bytes per tier row, sketched vs plain, per tier.

    .venv/bin/python bench/bench_tier_fields.py           # writes bench/results/tier_fields.json
    .venv/bin/python bench/bench_tier_fields.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_cascade import BOUND_NS, LATENESS_NS, Link, Sink, make_workload

from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.model.fieldkinds import FieldKinds
from metricsflow.runtime.base import (
    Operator,
    OperatorContext,
    Output,
    StateInitializationContext,
)
from metricsflow.runtime.records import AggregateBatch, RecordBatch
from metricsflow.sinks.lines import aggregate_lines
from metricsflow.state.heap import HeapKeyedStateBackend
from metricsflow.windows import DEFAULT_TIERS, build_cascade
from metricsflow.windows.watermarks import WatermarkAssigner, WatermarkStrategy

RESULTS = Path(__file__).parent / "results" / "tier_fields.json"


def sketched_batches(
    batches: list[RecordBatch], every: int, counters: bool = False
) -> list[RecordBatch]:
    """Every ``every``-th key of each key group's tuple gets field ``latency_ms`` (sketched);
    with ``counters``, the key after it gets ``requests_total`` (a counter)."""
    renamed: dict[int, tuple[str, ...]] = {}
    out = []
    for b in batches:
        keys = renamed.get(id(b.keys))
        if keys is None:
            keys = tuple(
                k.rsplit("\x00", 1)[0] + "\x00latency_ms"
                if i % every == 0
                else k.rsplit("\x00", 1)[0] + "\x00requests_total"
                if counters and i % every == 1
                else k
                for i, k in enumerate(b.keys)
            )
            renamed[id(b.keys)] = keys
        out.append(RecordBatch(b.key_group, keys, b.key_idx, b.ts_ns, b.values))
    return out


def run(batches: list[RecordBatch], kinds: FieldKinds | None, root: str) -> tuple[float, Any]:
    key_groups = frozenset(b.key_group for b in batches)
    assigner = WatermarkAssigner("watermarks", WatermarkStrategy(BOUND_NS))
    tiers = build_cascade(DEFAULT_TIERS, LATENESS_NS, field_kinds=kinds)
    ops: list[Operator] = [assigner, *tiers]
    storage = FsCheckpointStorage(root)
    for op in ops:
        op.setup(OperatorContext(op.uid, key_groups, HeapKeyedStateBackend(op.uid), storage))
        op.initialize_state(StateInitializationContext(False, (), ()))
        op.open()
    taps = {t.tier.name: Sink() for t in tiers}
    outs: list[Output] = [taps[tiers[-1].tier.name]]
    for i in range(len(tiers) - 1, 0, -1):
        outs.insert(0, Link(tiers[i], outs[0], taps[tiers[i - 1].tier.name]))
    head: Output = Link(tiers[0], outs[0])
    outs.insert(0, head)
    started = time.process_time()  # CPU seconds of this (single-threaded) process: per core
    for batch in batches:
        assigner.process_batch(batch, head)
    for op, out in zip(tiers, outs[1:], strict=True):
        op.finish(out)
    return time.process_time() - started, taps


def encode_all(taps: dict[str, Sink]) -> tuple[float, dict[str, dict[str, float]]]:
    """Time of the sink's line encoding of every emitted row; bytes per row by kind."""
    started = time.process_time()
    lines: dict[str, list[bytes]] = {}
    for tier, sink in taps.items():
        for batch in sink.batches:
            for part in aggregate_lines(batch).values():
                lines.setdefault(tier, []).extend(part)
    elapsed = time.process_time() - started
    sizes: dict[str, dict[str, float]] = {}
    for tier, tier_lines in lines.items():
        sk = [len(x) for x in tier_lines if b"sketch_" in x]
        plain = [len(x) for x in tier_lines if b"sketch_" not in x]
        sizes[tier] = {
            "rows": len(tier_lines),
            "sketched_rows": len(sk),
            "bytes_per_sketched_row": round(statistics.mean(sk), 1) if sk else 0.0,
            "bytes_per_plain_row": round(statistics.mean(plain), 1) if plain else 0.0,
        }
    return elapsed, sizes


def batches_emitted(taps: dict[str, Sink]) -> list[AggregateBatch]:
    return [b for s in taps.values() for b in s.batches]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--every", type=int, default=10, help="one field in N is sketched")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10k series, 5 minutes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.series, args.minutes = 10_000, 5
    rows: dict[str, list[float]] = {}
    sizes: dict[str, Any] = {}
    points = 0
    with tempfile.TemporaryDirectory(prefix="bench-tier-fields-") as root:
        for rep in range(args.repeat):
            for label, kinds, counters in (
                ("gauges only", None, False),
                ("sketches on 1 in N", FieldKinds(), False),
                ("sketches and counters on 1 in N each", FieldKinds(), True),
            ):
                workload = make_workload(
                    args.series, args.minutes, 4, 25_000, 0.02, 0.001, 1, "stable"
                )
                points = workload.points
                batches = sketched_batches(workload.batches, args.every, counters)
                cascade_s, taps = run(batches, kinds, f"{root}/{rep}-{label}")
                encode_s, tier_sizes = encode_all(taps)
                sizes[label] = tier_sizes
                rows.setdefault(f"{label}: cascade", []).append(points / cascade_s)
                rows.setdefault(f"{label}: cascade + line encoding", []).append(
                    points / (cascade_s + encode_s)
                )
                print(
                    f"  {label:36} cascade {points / cascade_s:12,.0f} points/s, with encoding "
                    f"{points / (cascade_s + encode_s):12,.0f} points/s",
                    flush=True,
                )
    result = {
        "command": "bench/bench_tier_fields.py" + (" --quick" if args.quick else ""),
        "points": points,
        "sketched_fraction": 1 / args.every,
        "points_per_s_median": {k: round(statistics.median(v)) for k, v in rows.items()},
        "points_per_s_runs": {k: [round(x) for x in v] for k, v in rows.items()},
        "bytes_per_row": sizes,
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
