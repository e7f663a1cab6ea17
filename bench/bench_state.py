"""State backend benchmark: bytes per active series, snapshot pause and duration vs entries.

    .venv/bin/python bench/bench_state.py            # full run (10k, 100k, 1M entries)
    .venv/bin/python bench/bench_state.py --quick    # 10k and 100k only

Writes ``bench/results/state.json`` and prints a table. The state shape is the tier window
operator's: per active series one in-progress window aggregate (a msgpack dict of count,
sum, min, max, first, last and their timestamps) under ``window_end (8 B BE) | series key``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.state import (
    MSGPACK,
    HeapKeyedStateBackend,
    KeyedStateBackend,
    RocksDBKeyedStateBackend,
    StateDescriptor,
)

RESULTS = Path(__file__).parent / "results" / "state.json"
WINDOW_END_NS = 1_700_000_060_000_000_000
KEY_GROUPS = 8


def series_key(i: int) -> bytes:
    return (
        WINDOW_END_NS.to_bytes(8, "big")
        + f"cpu,host=server-{i:07d},region=eu-west-{i % 4} usage_user".encode()
    )


def aggregate(i: int) -> dict[str, Any]:
    v = float(i % 1000) / 7.0
    ts = 1_700_000_000_000_000_000 + i
    return {
        "count": 12,
        "sum": v * 12,
        "min": v - 1,
        "max": v + 1,
        "first": v,
        "last": v,
        "first_ts": ts,
        "last_ts": ts + 55_000_000_000,
    }


def fill(backend: KeyedStateBackend, n: int) -> None:
    for i in range(n):
        backend.put(i % KEY_GROUPS, "windows", series_key(i), aggregate(i))


def make_backend(kind: str, workdir: str) -> KeyedStateBackend:
    backend: KeyedStateBackend
    if kind == "heap":
        backend = HeapKeyedStateBackend(owner="bench")
    else:
        backend = RocksDBKeyedStateBackend(os.path.join(workdir, "local"), owner="bench")
    backend.register(StateDescriptor("windows", MSGPACK))
    return backend


def bytes_per_series(kind: str, n: int, workdir: str) -> float:
    gc.collect()
    if kind == "heap":
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        backend = make_backend(kind, workdir)
        fill(backend, n)
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
    else:
        rocks = make_backend(kind, workdir)
        assert isinstance(rocks, RocksDBKeyedStateBackend)
        backend = rocks
        fill(backend, n)
        rocks.compact()
        used = rocks.disk_bytes()
    backend.close()
    return used / n


def time_snapshot(kind: str, n: int, workdir: str, *, incremental: bool) -> dict[str, float]:
    backend = make_backend(kind, workdir)
    fill(backend, n)
    storage = FsCheckpointStorage(os.path.join(workdir, f"chk-{kind}-{n}-{incremental}"))
    groups = list(range(KEY_GROUPS))
    gc.collect()
    started = time.perf_counter()
    pending = backend.snapshot(1, groups, storage, incremental=incremental)
    sync_s = time.perf_counter() - started
    first_write_s = 0.0
    if kind == "heap":  # copy-on-write: the first write per map after a snapshot copies it
        started = time.perf_counter()
        for kg in groups:
            backend.put(kg, "windows", b"\xff" * 8, aggregate(0))
        first_write_s = time.perf_counter() - started
    started = time.perf_counter()
    handles = pending.run()
    async_s = time.perf_counter() - started
    backend.notify_checkpoint_complete(1)
    result = {
        "sync_pause_ms": sync_s * 1e3,
        "async_s": async_s,
        "snapshot_bytes": float(sum(h.size for h in handles)),
        "first_writes_after_snapshot_ms": first_write_s * 1e3,
    }
    if kind == "rocksdb" and incremental:  # a second checkpoint after 1 % of the keys changed
        for i in range(0, n, 100):
            backend.put(i % KEY_GROUPS, "windows", series_key(i), aggregate(i + 1))
        started = time.perf_counter()
        pending = backend.snapshot(2, groups, storage, incremental=True)
        result["second_sync_pause_ms"] = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        second = pending.run()
        result["second_async_s"] = time.perf_counter() - started
        first_paths = {s.path for h in handles for s in h.shared}
        result["second_new_bytes"] = float(
            sum(h.size for h in second)
            - sum(s.size for h in second for s in h.shared if s.path in first_paths)
        )
    backend.close()
    shutil.rmtree(storage._root, ignore_errors=True)
    return result


def sorted_map_vs_sortedcontainers(n_batches: int = 200, batch: int = 5_000) -> dict[str, float]:
    """The window-operator access pattern: add a batch of new time-ordered keys, scan the
    fired prefix and delete it. Compares our lazy sorted list with ``SortedDict``."""
    from metricsflow.state.heap import _SortedMap

    def run_ours() -> None:
        m = _SortedMap()
        for b in range(n_batches):
            for i in range(batch):
                m.put((b * batch + i).to_bytes(8, "big"), i)
            stop = ((b - 5) * batch).to_bytes(8, "big") if b > 5 else b"\x00"
            for _ in m.scan(None, stop):
                pass
            m.delete_range(None, stop)

    timings = {"lazy_sorted_list_s": _timed(run_ours)}
    try:
        from sortedcontainers import SortedDict
    except ImportError:
        return timings

    def run_theirs() -> None:
        d: Any = SortedDict()
        for b in range(n_batches):
            for i in range(batch):
                d[(b * batch + i).to_bytes(8, "big")] = i
            stop = ((b - 5) * batch).to_bytes(8, "big") if b > 5 else b"\x00"
            doomed = list(d.irange(maximum=stop, inclusive=(True, False)))
            for k in doomed:
                del d[k]

    timings["sortedcontainers_s"] = _timed(run_theirs)
    return timings


def _timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k and 100k entries only")
    parser.add_argument("--series", type=int, default=100_000, help="series for bytes/series")
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    workdir = tempfile.mkdtemp(prefix="mf-bench-state-")
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "key_groups": KEY_GROUPS,
        "bytes_per_series": {},
        "snapshot": [],
    }
    try:
        for kind in ("heap", "rocksdb"):
            results["bytes_per_series"][kind] = bytes_per_series(kind, args.series, workdir)
        for n in sizes:
            for kind, incremental in (("heap", False), ("rocksdb", True), ("rocksdb", False)):
                row = {"backend": kind, "entries": n, "incremental": incremental}
                row.update(time_snapshot(kind, n, workdir, incremental=incremental))
                results["snapshot"].append(row)
                print(json.dumps(row), flush=True)
        results["sorted_map"] = sorted_map_vs_sortedcontainers()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(results: dict[str, Any]) -> None:
    print(f"\nstate bytes per active series ({results['key_groups']} key groups)")
    for kind, value in results["bytes_per_series"].items():
        label = "tracemalloc" if kind == "heap" else "on disk after compaction"
        print(f"  {kind:8s} {value:8.0f} B   ({label})")
    print("\nsnapshot of N entries: synchronous pause, asynchronous part, size")
    print(
        f"  {'backend':8s} {'mode':12s} {'entries':>9s} {'sync ms':>9s} {'async s':>8s} "
        f"{'MiB':>7s} {'COW ms':>7s}"
    )
    for row in results["snapshot"]:
        mode = "incremental" if row["incremental"] else "full"
        print(
            f"  {row['backend']:8s} {mode:12s} {row['entries']:9d} {row['sync_pause_ms']:9.1f} "
            f"{row['async_s']:8.2f} {row['snapshot_bytes'] / 2**20:7.1f} "
            f"{row['first_writes_after_snapshot_ms']:7.1f}"
        )
        if "second_sync_pause_ms" in row:
            print(
                f"  {'':8s} {'  +1% chg':12s} {'':9s} {row['second_sync_pause_ms']:9.1f} "
                f"{row['second_async_s']:8.2f} {row['second_new_bytes'] / 2**20:7.1f}  (new bytes)"
            )
    if "sorted_map" in results:
        print("\nwindow access pattern (1M keys through, 5k/batch):", results["sorted_map"])
    print(f"\nwritten {RESULTS}")


if __name__ == "__main__":
    main()
