"""``CollectingSink``: a sink operator for tests that behaves like a real, idempotent sink.

What it receives is first **buffered** (like a client's write buffer) and becomes durable in
its :class:`CollectedResults` only when flushed: in the asynchronous part of every checkpoint
(so a checkpoint is acknowledged only once everything before its barrier is durable), at the
end of input, and whenever the buffer exceeds ``flush_every`` elements. A crash loses the
buffer, exactly as a killed process loses unsent writes.

Durable results keep, for tier results, the **last version per (tier, key, window)** (an
overwrite, as InfluxDB does for a point with the same series and timestamp), and also the list
of every element, so that tests can assert on duplicates and re-emissions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from metricsflow.checkpointing.protocol import CheckpointBarrier
from metricsflow.runtime.base import Operator, OperatorSnapshot, Output
from metricsflow.runtime.records import (
    AggregateBatch,
    RawLinesBatch,
    RecordBatch,
    SideOutput,
    Watermark,
)
from metricsflow.state.base import AsyncSnapshot
from metricsflow.state.handles import KeyGroupStateHandle
from metricsflow.testing.sources import SimulatedCrashError

SinkElement = RecordBatch | AggregateBatch | RawLinesBatch


@dataclass(frozen=True, slots=True)
class AggregateRow:
    count: int
    sum: float
    min: float
    max: float
    first_ts_ns: int
    first: float
    last_ts_ns: int
    last: float


@dataclass
class CollectedResults:
    """The durable side of a :class:`CollectingSink` (survives job restarts)."""

    latest: dict[tuple[str, str, int], AggregateRow] = field(default_factory=dict)
    elements: list[SinkElement] = field(default_factory=list)
    side_outputs: dict[str, list[RecordBatch]] = field(default_factory=dict)
    watermarks: dict[int, int] = field(default_factory=dict)
    flushes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def apply(self, elements: Iterable[SinkElement | tuple[str, RecordBatch]]) -> None:
        with self._lock:
            self.flushes += 1
            for element in elements:
                if isinstance(element, tuple):
                    self.side_outputs.setdefault(element[0], []).append(element[1])
                    continue
                self.elements.append(element)
                if isinstance(element, AggregateBatch):
                    self._overwrite(element)

    def _overwrite(self, b: AggregateBatch) -> None:
        for i in range(len(b)):
            key = (b.tier, b.keys[int(b.key_idx[i])], int(b.window_start_ns[i]))
            self.latest[key] = AggregateRow(
                int(b.count[i]),
                float(b.sum[i]),
                float(b.min[i]),
                float(b.max[i]),
                int(b.first_ts_ns[i]),
                float(b.first[i]),
                int(b.last_ts_ns[i]),
                float(b.last[i]),
            )

    def raw_points(self) -> list[tuple[int, str, int, float]]:
        """Every raw point received (``(key group, key, ts, value)``), duplicates included."""
        with self._lock:
            return [
                (b.key_group, b.keys[int(b.key_idx[i])], int(b.ts_ns[i]), float(b.values[i]))
                for b in self.elements
                if isinstance(b, RecordBatch)
                for i in range(len(b))
            ]

    def tier(self, name: str) -> dict[tuple[str, int], AggregateRow]:
        with self._lock:
            return {(k, w): row for (t, k, w), row in self.latest.items() if t == name}


class _Flush(AsyncSnapshot):
    """One flush; flushes apply in the order they were taken (each waits for the one before:
    the async parts of two checkpoints may run on two threads at once)."""

    def __init__(
        self,
        results: CollectedResults,
        buffer: list[SinkElement | tuple[str, RecordBatch]],
        crash: bool,
        previous: threading.Event | None,
    ) -> None:
        self._results = results
        self._buffer = buffer
        self._crash = crash
        self._previous = previous
        self.done = threading.Event()

    def run(self) -> list[KeyGroupStateHandle]:
        try:
            if self._previous is not None:
                self._previous.wait()
            if self._crash:
                raise SimulatedCrashError("simulated crash in the sink's asynchronous flush")
            self._results.apply(self._buffer)
            return []
        finally:
            self.done.set()


class CollectingSink(Operator):
    """See the module docstring. Pass the same ``results`` to the sink of a restarted job.

    ``crash_in_flush_of``: checkpoint ids whose asynchronous flush raises
    :class:`SimulatedCrashError` (each once): a crash after the synchronous phase.
    """

    def __init__(
        self,
        uid: str = "sink",
        results: CollectedResults | None = None,
        *,
        flush_every: int | None = None,
        crash_in_flush_of: Iterable[int] = (),
    ) -> None:
        super().__init__(uid)
        self.results = results if results is not None else CollectedResults()
        self.flush_every = flush_every
        self.crash_in_flush_of = set(crash_in_flush_of)
        self._buffer: list[SinkElement | tuple[str, RecordBatch]] = []
        self._last_flush: threading.Event | None = None

    def process_batch(self, batch: SinkElement, output: Output) -> None:
        self._buffer.append(batch)
        if self.flush_every is not None and len(self._buffer) >= self.flush_every:
            self._flush_now()

    def process_watermark(self, watermark: Watermark, output: Output) -> None:
        self.results.watermarks[watermark.key_group] = watermark.timestamp_ns

    def process_side_output(self, tag: str, element: SideOutput) -> None:
        if isinstance(element, RecordBatch):  # correction requests need an InfluxDB
            self._buffer.append((tag, element))

    def _flush_now(self) -> None:
        buffer, self._buffer = self._buffer, []
        if self._last_flush is not None:
            self._last_flush.wait()
        self.results.apply(buffer)

    def snapshot_state(self, barrier: CheckpointBarrier) -> OperatorSnapshot:
        buffer, self._buffer = self._buffer, []
        crash = barrier.checkpoint_id in self.crash_in_flush_of
        self.crash_in_flush_of.discard(barrier.checkpoint_id)
        flush = _Flush(self.results, buffer, crash, self._last_flush)
        self._last_flush = flush.done
        return OperatorSnapshot(keyed=flush, operator=())

    def finish(self, output: Output) -> None:
        self._flush_now()
