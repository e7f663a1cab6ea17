"""Checkpoint benchmark: synchronous pause and asynchronous duration of a checkpoint of the
full job (source -> watermarks -> tiers 1m/1h/1d -> sink) as state grows to 1M series.

    .venv/bin/python bench/bench_checkpoint.py            # 10k, 100k, 1M series
    .venv/bin/python bench/bench_checkpoint.py --quick    # 10k, 100k

Each size: one batch per key group holding one point per series (all in one open 1m window),
then one checkpoint triggered by hand. "sync pause" is the longest synchronous snapshot phase
of any task (processing is stopped only for that long); "async" the longest asynchronous
part; "total" trigger to completion. Writes ``bench/results/checkpoint.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.runtime.job import Job
from metricsflow.runtime.records import RecordBatch, window_key
from metricsflow.state.config import StateBackendConfig
from metricsflow.testing import CollectedResults, InMemorySource
from metricsflow.testing.jobs import backend_factory, tier_job_graph

RESULTS = Path(__file__).parent / "results" / "checkpoint.json"
KEY_GROUPS = 4
T0 = 1_700_000_000_000_000_000


def _batches(series: int) -> dict[int, list[Any]]:
    per_kg = series // KEY_GROUPS
    parts: dict[int, list[Any]] = {}
    for kg in range(KEY_GROUPS):
        keys = tuple(window_key("db", f"cpu,host=h{kg}-{i}", "v") for i in range(per_kg))
        parts[kg] = [
            RecordBatch(
                kg,
                keys,
                np.arange(per_kg, dtype=np.int32),
                np.full(per_kg, T0 + 1_000_000_000, np.int64),
                np.arange(per_kg, dtype=np.float64),
            )
        ]
    return parts


async def _measure(series: int, backend: str, root: Path) -> dict[str, Any]:
    source = InMemorySource(_batches(series))
    graph = tier_job_graph(source, CollectedResults())
    job = Job(
        graph,
        storage=FsCheckpointStorage(str(root / "checkpoints")),
        state_backend_factory=backend_factory(
            StateBackendConfig(backend=backend, local_dir=str(root / "local"))  # type: ignore[arg-type]
        ),
        checkpoint_config=CheckpointConfig(interval_ms=0),
    )
    task = asyncio.create_task(job.run())
    for _ in range(6000):  # wait (up to 5 min) until every key group read its batch
        ready = len(job.key_groups) == KEY_GROUPS and all(
            job.source_task(kg).reader.index >= 1  # type: ignore[attr-defined]
            for kg in job.key_groups
        )
        if ready:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    completed = await job.trigger_checkpoint()
    total = time.perf_counter() - started
    job.cancel()
    await task
    return {
        "series": series,
        "backend": backend,
        "sync_pause_ms": completed.sync_duration_ns / 1e6,
        "async_ms": completed.async_duration_ns / 1e6,
        "total_ms": total * 1e3,
        "state_bytes": completed.state_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    rows = []
    for backend in ("heap", "rocksdb"):
        for series in sizes:
            root = Path(tempfile.mkdtemp(prefix="mf-bench-chk-"))
            try:
                rows.append(asyncio.run(_measure(series, backend, root)))
            finally:
                shutil.rmtree(root, ignore_errors=True)
            r = rows[-1]
            print(
                f"{r['backend']:8} {r['series']:>9} series  sync pause {r['sync_pause_ms']:8.2f} ms"
                f"  async {r['async_ms']:9.1f} ms  total {r['total_ms']:9.1f} ms"
                f"  state {r['state_bytes'] / 1e6:8.1f} MB"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"machine": platform.machine(), "python": platform.python_version(), "rows": rows},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
