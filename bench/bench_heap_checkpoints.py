"""Heap checkpoints, incremental (segments) vs full: bytes written per checkpoint vs state size.

    .venv/bin/python bench/bench_heap_checkpoints.py            # 8, 32 and 128 MB of state
    .venv/bin/python bench/bench_heap_checkpoints.py --quick    # 8 and 32 MB
    .venv/bin/python bench/bench_heap_checkpoints.py --job      # the tier job, end to end

Writes ``bench/results/heap_checkpoints.json`` and prints a table. The workload is the tier
window operator's steady state: per key group, ``window-chunks`` entries keyed
``be(window_end) | be(seq)`` holding ``ColumnarChunk`` batches (key id, timestamp, value;
200 rows); 60 windows are live (open plus allowed lateness). Between two checkpoints event time
moves one window: the new window gets its chunks (appended at the end), the oldest window fires
and is deleted (a range delete at the front), and 5 % as many late chunks land in random live
windows (inserts in the middle). So the state size stays constant while about 3.5 % of it
changes per checkpoint. Retention keeps one checkpoint (the registry deletes what no retained
checkpoint references), as ``CheckpointConfig(num_retained=1)`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from metricsflow.checkpointing.shared_registry import SharedStateRegistry, delete_shared_files
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.state import NUMPY_COLUMNS, HeapKeyedStateBackend, StateDescriptor
from metricsflow.state.handles import KeyGroupStateHandle
from metricsflow.state.serializers import ColumnarChunk

RESULTS = Path(__file__).parent / "results" / "heap_checkpoints.json"
KEY_GROUPS = 4
LIVE_WINDOWS = 60
ROWS = 200
CHUNK_BYTES = ROWS * (4 + 8 + 8)
MINUTE_NS = 60_000_000_000


def chunk_key(window: int, seq: int) -> bytes:
    return (window * MINUTE_NS).to_bytes(8, "big") + seq.to_bytes(8, "big")


def make_chunk(rng: np.random.Generator) -> ColumnarChunk:
    return ColumnarChunk(
        {
            "key_idx": rng.integers(0, 50_000, ROWS, dtype=np.int32),
            "ts": rng.integers(0, 2**62, ROWS, dtype=np.int64),
            "value": rng.random(ROWS),
        }
    )


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(state_mb: int, incremental: bool, rounds: int, work: Path) -> dict[str, Any]:
    chunks_per_window = max(1, (state_mb << 20) // (KEY_GROUPS * LIVE_WINDOWS * CHUNK_BYTES))
    late_per_round = max(1, chunks_per_window // 20)
    rng = np.random.default_rng(7)
    pick = random.Random(7)
    root = work / f"{state_mb}mb-{'inc' if incremental else 'full'}"
    storage = FsCheckpointStorage(str(root))
    backend = HeapKeyedStateBackend("tier-1m")
    backend.register(StateDescriptor("window-chunks", NUMPY_COLUMNS))
    seq = 0

    def add(kg: int, window: int, n: int) -> None:
        nonlocal seq
        for _ in range(n):
            seq += 1
            backend.put(kg, "window-chunks", chunk_key(window, seq), make_chunk(rng))

    for kg in range(KEY_GROUPS):
        for window in range(LIVE_WINDOWS):
            add(kg, window, chunks_per_window)
    registry = SharedStateRegistry()
    per_round: list[dict[str, float]] = []
    handles: list[KeyGroupStateHandle] = []
    for n in range(1, rounds + 1):
        if n > 1:  # event time moves one window
            newest = LIVE_WINDOWS + n - 2
            for kg in range(KEY_GROUPS):
                add(kg, newest, chunks_per_window)
                backend.delete_range(kg, "window-chunks", None, chunk_key(n - 1, 0))
                for _ in range(late_per_round):
                    add(kg, pick.randrange(n - 1, newest), 1)
        started = time.perf_counter()
        pending = backend.snapshot(n, range(KEY_GROUPS), storage, incremental=incremental)
        sync_s = time.perf_counter() - started
        started = time.perf_counter()
        handles = pending.run()
        async_s = time.perf_counter() - started
        registry.register(n, handles)
        if n > 1:
            storage.delete(f"chk-{n - 1}")
            delete_shared_files(storage, registry.release(n - 1))
        backend.notify_checkpoint_complete(n)
        per_round.append(
            {
                "written": sum(int(h.metadata.get("written_bytes", h.size)) for h in handles),
                "referenced": sum(h.size for h in handles),
                "sync_ms": sync_s * 1e3,
                "async_ms": async_s * 1e3,
                "stored": dir_bytes(root),
            }
        )
    live = sum(
        len(k) + len(NUMPY_COLUMNS.serialize(v)) + 8
        for kg in range(KEY_GROUPS)
        for k, v in backend.scan(kg, "window-chunks")
    )
    restore_ms = []
    for _ in range(3):
        fresh = HeapKeyedStateBackend("tier-1m")
        fresh.register(StateDescriptor("window-chunks", NUMPY_COLUMNS))
        started = time.perf_counter()
        fresh.restore(handles, storage)
        restore_ms.append((time.perf_counter() - started) * 1e3)
        assert sum(1 for kg in range(KEY_GROUPS) for _ in fresh.scan(kg, "window-chunks")) == sum(
            1 for kg in range(KEY_GROUPS) for _ in backend.scan(kg, "window-chunks")
        )
    steady = per_round[4:]  # after the first rounds
    shutil.rmtree(root)
    return {
        "state_mb": state_mb,
        "mode": "incremental" if incremental else "full",
        "live_bytes": live,
        "rounds": rounds,
        "written_mean": statistics.mean(r["written"] for r in steady),
        "written_max": max(r["written"] for r in steady),
        "referenced_max": max(r["referenced"] for r in steady),
        "stored_max": max(r["stored"] for r in steady),
        "async_ms_mean": statistics.mean(r["async_ms"] for r in steady),
        "sync_ms_max": max(r["sync_ms"] for r in steady),
        "full_rewrites": sum(1 for r in per_round[1:] if r["written"] >= r["referenced"]),
        "restore_ms_median": statistics.median(restore_ms),
        "per_round": per_round,
    }


def job_run(incremental: bool, series: int, batches: int, every: int, work: Path) -> dict[str, Any]:
    """The whole tier job (watermarks -> 1m -> 1h -> 1d, lateness 3 min) on 4 key groups:
    every series reports every 10 s, a checkpoint every ``every`` batches; figures per
    checkpoint from its ``_metadata`` (size referenced, bytes written), then the last one is
    restored into fresh heap backends (one per operator and key group, as the job does)."""
    import asyncio

    from metricsflow.checkpointing.config import CheckpointConfig
    from metricsflow.runtime.records import RecordBatch, window_key
    from metricsflow.state.serializers import SERIALIZERS
    from metricsflow.testing import CollectedResults, InMemorySource
    from metricsflow.testing.harness import JobRunner

    rng = np.random.default_rng(3)
    base = 1_700_000_000 * 1_000_000_000
    partitions: dict[int, list[Any]] = {}
    for kg in range(KEY_GROUPS):
        keys = tuple(window_key("db", f"cpu,host=h{kg}-{i}", "usage") for i in range(series))
        idx = np.arange(series, dtype=np.int32)
        partitions[kg] = [
            RecordBatch(
                kg,
                keys,
                idx,
                np.full(series, base + b * 10_000_000_000, dtype=np.int64),
                rng.random(series),
            )
            for b in range(batches)
        ]
    root = work / f"job-{'inc' if incremental else 'full'}"
    runner = JobRunner(
        root, "heap", CheckpointConfig(interval_ms=0, num_retained=1, incremental=incremental)
    )
    # fed ``every`` batches at a time: exactly that much new input between two checkpoints
    source = InMemorySource({kg: batches_[:every] for kg, batches_ in partitions.items()})
    rows: list[dict[str, float]] = []

    async def go() -> Any:
        job = runner.job_factory(source, CollectedResults())(None)
        task = asyncio.create_task(job.run())
        last = None
        for b in range(every, batches + 1, every):
            await source.wait_for_position(b)
            last = await job.trigger_checkpoint()
            for kg, elements in partitions.items():  # the readers' lists: they see the rest
                source.partitions[kg].extend(elements[b : b + every])
            rows.append(
                {
                    "size": last.metadata.state_size,
                    "written": last.metadata.written_bytes,
                    "async_ms": last.async_duration_ns / 1e6,
                }
            )
        job.cancel()
        await task
        return last

    started = time.perf_counter()
    last = asyncio.run(go())
    run_s = time.perf_counter() - started
    started = time.perf_counter()
    for entry in last.metadata.keyed:
        backend = HeapKeyedStateBackend(f"{entry.uid}-{entry.handle.key_group}")
        for name, (type_id, _) in json.loads(entry.handle.metadata["serializers"]).items():
            backend.register(StateDescriptor(name, SERIALIZERS.get(type_id)))
        backend.restore([entry.handle], runner.storage)
    restore_ms = (time.perf_counter() - started) * 1e3
    steady = rows[len(rows) // 4 :]
    shutil.rmtree(root)
    return {
        "mode": "incremental" if incremental else "full",
        "series": series * KEY_GROUPS,
        "checkpoints": len(rows),
        "size_mean": statistics.mean(r["size"] for r in steady),
        "written_mean": statistics.mean(r["written"] for r in steady),
        "async_ms_mean": statistics.mean(r["async_ms"] for r in steady),
        "restore_ms": restore_ms,
        "run_s": run_s,
        "per_checkpoint": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 and 32 MB only")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--job", action="store_true", help="the tier job end to end instead")
    parser.add_argument("--series", type=int, default=5000, help="per key group (--job)")
    args = parser.parse_args()
    if args.job:
        work = Path(tempfile.mkdtemp(prefix="mf-heap-job-"))
        results = []
        try:
            for incremental in (False, True):
                r = job_run(incremental, args.series, batches=240, every=6, work=work)
                results.append(r)
                print(
                    f"job {r['mode']:<11} series={r['series']} checkpoints={r['checkpoints']} "
                    f"size={r['size_mean'] / 2**20:6.2f} MiB "
                    f"written/chk={r['written_mean'] / 2**20:6.2f} MiB "
                    f"async={r['async_ms_mean']:6.1f} ms restore={r['restore_ms']:6.1f} ms "
                    f"run={r['run_s']:5.1f} s",
                    flush=True,
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        RESULTS.with_name("heap_checkpoints_job.json").write_text(
            json.dumps({"results": results}, indent=1)
        )
        return
    sizes = [8, 32] if args.quick else [8, 32, 128]
    work = Path(tempfile.mkdtemp(prefix="mf-heap-chk-"))
    results = []
    try:
        for state_mb in sizes:
            for incremental in (False, True):
                results.append(run(state_mb, incremental, args.rounds, work))
                r = results[-1]
                print(
                    f"{r['state_mb']:>4} MB {r['mode']:<11} "
                    f"live={r['live_bytes'] / 2**20:6.1f} MiB "
                    f"written/chk={r['written_mean'] / 2**20:6.2f} MiB "
                    f"(max {r['written_max'] / 2**20:6.2f}) "
                    f"referenced<={r['referenced_max'] / 2**20:6.1f} MiB "
                    f"stored<={r['stored_max'] / 2**20:6.1f} MiB "
                    f"async={r['async_ms_mean']:7.1f} ms sync<={r['sync_ms_max']:5.1f} ms "
                    f"full_rewrites={r['full_rewrites']} restore={r['restore_ms_median']:7.1f} ms",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
