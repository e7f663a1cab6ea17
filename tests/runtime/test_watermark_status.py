"""The source task asks its reader whether it is idle; only an idle key group follows the clock.

A reader held back (backpressure, broker unreachable) returns ``None`` from ``poll`` just like
a caught-up one; the difference is what ``watermark_status()`` answers. These tests run a real
``Job`` (asyncio tasks, channels, sink task) with a scripted reader and the system clock.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.runtime.base import Operator, Output
from metricsflow.runtime.graph import JobGraph
from metricsflow.runtime.job import Job
from metricsflow.runtime.records import AggregateBatch, RawLinesBatch, RecordBatch, Watermark
from metricsflow.runtime.source import (
    Source,
    SourceElement,
    SourceReader,
    WatermarkStatus,
)
from metricsflow.state.heap import HeapKeyedStateBackend
from metricsflow.windows.watermarks import WatermarkAssigner, WatermarkStrategy

MS = 1_000_000
EVENT_TS = 1_000_000 * MS  # far in the past: an idle advance is unmistakable


class ScriptedReader(SourceReader):
    """Hands out its batches, then returns ``None`` and reports ``status``."""

    def __init__(self, batches: list[RecordBatch]) -> None:
        self.batches = batches
        self.status = WatermarkStatus.ACTIVE

    def restore_position(self, position: bytes | None) -> None:
        return None

    async def poll(self) -> SourceElement | None:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(0.002)
        return None

    def snapshot_position(self, checkpoint_id: int) -> bytes:
        return b""

    def watermark_status(self) -> WatermarkStatus:
        return self.status


class ScriptedSource(Source):
    def __init__(self, reader: ScriptedReader) -> None:
        super().__init__("source")
        self.reader = reader

    def create_reader(self, key_group: int) -> SourceReader:
        return self.reader


class WatermarkRecorder(Operator):
    def __init__(self) -> None:
        super().__init__("sink")
        self.watermarks: list[int] = []

    def process_batch(
        self, batch: RecordBatch | AggregateBatch | RawLinesBatch, output: Output
    ) -> None:
        return None

    def process_watermark(self, watermark: Watermark, output: Output) -> None:
        self.watermarks.append(watermark.timestamp_ns)


def one_point_batch() -> RecordBatch:
    return RecordBatch(0, ("k",), np.zeros(1, np.int32), np.array([EVENT_TS]), np.ones(1))


async def test_a_reader_held_back_by_backpressure_keeps_its_watermark_until_it_reports_idle(
    tmp_path: Path,
) -> None:
    reader = ScriptedReader([one_point_batch()])
    recorder = WatermarkRecorder()
    graph = JobGraph(
        name="status",
        source=ScriptedSource(reader),
        chain_factory=lambda _kg: [
            WatermarkAssigner("watermarks", WatermarkStrategy(0, idle_timeout_ns=30 * MS))
        ],
        sink_factory=lambda: recorder,
        key_groups=frozenset({0}),
    )
    job = Job(
        graph,
        storage=FsCheckpointStorage(str(tmp_path)),
        state_backend_factory=lambda uid, kg: HeapKeyedStateBackend(f"{uid}-{kg}"),
        checkpoint_config=CheckpointConfig(interval_ms=0),
        processing_time_interval_ms=5,
    )
    run = asyncio.create_task(job.run())
    await asyncio.sleep(0.3)  # ten idle timeouts, but the reader says input is waiting
    assert recorder.watermarks == [EVENT_TS]
    assert job.source_task(0).watermark_status is WatermarkStatus.ACTIVE
    reader.status = WatermarkStatus.IDLE  # caught up: now the clock may move event time
    await asyncio.sleep(0.3)
    assert job.source_task(0).watermark_status is WatermarkStatus.IDLE
    assert len(recorder.watermarks) > 1
    assert recorder.watermarks == sorted(recorder.watermarks)
    # the advance started 30 ms after the IDLE report, not 30 ms after the batch
    assert EVENT_TS < recorder.watermarks[-1] <= EVENT_TS + 300 * MS
    job.cancel()
    await run
