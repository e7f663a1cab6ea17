"""Heap checkpoints, incremental (segments) vs full: bytes written per checkpoint vs state size.

    .venv/bin/python bench/bench_heap_checkpoints.py            # 8, 32 and 128 MB of state
    .venv/bin/python bench/bench_heap_checkpoints.py --quick    # 8 and 32 MB

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 and 32 MB only")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
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
