"""The source task asks its reader whether it is idle; only an idle key group follows the clock.

A reader held back (backpressure, broker unreachable) returns ``None`` from ``poll`` just like
a caught-up one; the difference is what ``watermark_status()`` answers. These tests run a real
``Job`` (asyncio tasks, channels, sink task) with a scripted reader and a ``ManualClock``: the
test moves wall-clock time and waits for the reader to be polled again (the source task reads
the clock and ticks its operators after every empty poll), never sleep-then-assert.
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
from metricsflow.time.base import ManualClock
from metricsflow.windows.watermarks import WatermarkAssigner, WatermarkStrategy

MS = 1_000_000
WAIT_S = 10.0  # bound on an awaited event that must happen; never a measured delay
EVENT_TS = 1_000_000 * MS  # far in the past: an idle advance is unmistakable


class ScriptedReader(SourceReader):
    """Hands out its batches, then returns ``None`` and reports ``status``; counts its polls."""

    def __init__(self, batches: list[RecordBatch]) -> None:
        self.batches = batches
        self.status = WatermarkStatus.ACTIVE
        self.polls = 0
        self._polled = asyncio.Event()

    def restore_position(self, position: bytes | None) -> None:
        return None

    async def poll(self) -> SourceElement | None:
        self.polls += 1
        self._polled.set()
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(0.001)  # a caught-up reader's wait for input (the double's pace)
        return None

    async def polled(self, count: int = 2) -> None:
        """Wait for ``count`` more polls: with two, the source task handled one whole empty
        poll (status, clock, operator tick) after the call."""
        target = self.polls + count
        while self.polls < target:
            self._polled.clear()
            await self._polled.wait()

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
        self._received = asyncio.Event()

    async def received(self, count: int) -> None:
        """Wait until ``count`` watermarks reached the sink."""
        while len(self.watermarks) < count:
            self._received.clear()
            await self._received.wait()

    def process_batch(
        self, batch: RecordBatch | AggregateBatch | RawLinesBatch, output: Output
    ) -> None:
        return None

    def process_watermark(self, watermark: Watermark, output: Output) -> None:
        self.watermarks.append(watermark.timestamp_ns)
        self._received.set()


def one_point_batch() -> RecordBatch:
    return RecordBatch(0, ("k",), np.zeros(1, np.int32), np.array([EVENT_TS]), np.ones(1))


async def test_a_reader_held_back_by_backpressure_keeps_its_watermark_until_it_reports_idle(
    tmp_path: Path,
) -> None:
    clock = ManualClock(5_000_000 * MS)
    reader = ScriptedReader([one_point_batch()])
    recorder = WatermarkRecorder()
    graph = JobGraph(
        name="status",
        source=ScriptedSource(reader),
        chain_factory=lambda _kg: [
            WatermarkAssigner("watermarks", WatermarkStrategy(0, idle_timeout_ns=30 * MS), clock)
        ],
        sink_factory=lambda: recorder,
        key_groups=frozenset({0}),
    )
    job = Job(
        graph,
        storage=FsCheckpointStorage(str(tmp_path)),
        state_backend_factory=lambda uid, kg: HeapKeyedStateBackend(f"{uid}-{kg}"),
        checkpoint_config=CheckpointConfig(interval_ms=0),
        clock=clock,
        processing_time_interval_ms=5,
    )
    run = asyncio.create_task(job.run())
    await asyncio.wait_for(recorder.received(1), WAIT_S)
    assert recorder.watermarks == [EVENT_TS]
    clock.advance(300 * MS)  # ten idle timeouts, but the reader says input is waiting
    await asyncio.wait_for(reader.polled(), WAIT_S)
    assert job.source_task(0).watermark_status is WatermarkStatus.ACTIVE
    reader.status = WatermarkStatus.IDLE  # caught up: now the clock may move event time
    await asyncio.wait_for(reader.polled(), WAIT_S)
    assert job.source_task(0).watermark_status is WatermarkStatus.IDLE
    reported = clock.now_ns()
    clock.advance(30 * MS + 50 * MS)  # the idle timeout, then 50 ms more
    await asyncio.wait_for(recorder.received(2), WAIT_S)
    # the watermark jumps to the wall clock (bound 0) once the key group has been idle for
    # the timeout since the IDLE report; counted from the batch, it would have moved while
    # the reader was held back
    assert recorder.watermarks == [EVENT_TS, reported + 80 * MS]
    job.cancel()
    await run
