"""The contract of a sink, and the operator that puts any sink at the end of a job graph.

A :class:`Sink` receives the raw tier (:class:`RawLinesBatch`) and the downsampled tiers
(:class:`AggregateBatch`) and writes them to an external system. Its guarantees:

* **Idempotent overwrite.** Writing the same element twice leaves the external system as if
  it had been written once (InfluxDB: same series key + timestamp replaces the fields), so a
  replay after a failure rewrites identical points: exactly-once *results* end to end.
* **Bounded.** :meth:`Sink.has_capacity` turns ``False`` when the sink's buffers are full;
  :class:`SinkOperator` then makes the sink task *await* (``wait_for_capacity``) before taking
  the next element, so a slow or absent external system fills the bounded channels and stops
  the sources without ever blocking the event loop (Kafka heartbeats, checkpoints and the REST
  API go on). ``write_*`` may still block past a hard limit, as a last resort for callers that
  do not await.
* **Flush on checkpoint.** :meth:`Sink.flush` returns only when everything written before the
  call is acknowledged by the external system. :class:`SinkOperator` calls it in
  ``snapshot_state``, i.e. before the sink acknowledges checkpoint *n*: a checkpoint is never
  complete while output that precedes its barrier could still be lost.
* **No silent loss.** Data the external system rejects for good (not retriable) is counted,
  logged and written to a dead-letter destination; retriable failures are retried forever,
  visibly (log + metric), and block the sink meanwhile.
"""

from __future__ import annotations

import abc
import asyncio
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from metricsflow.checkpointing.protocol import CheckpointBarrier
from metricsflow.errors import SerializationError
from metricsflow.runtime.base import (
    Operator,
    OperatorSnapshot,
    Output,
    StateInitializationContext,
)
from metricsflow.runtime.records import (
    AggregateBatch,
    CorrectionRequest,
    RawLinesBatch,
    RecordBatch,
    SideOutput,
    Watermark,
)
from metricsflow.state.base import AsyncSnapshot
from metricsflow.state.handles import KeyGroupStateHandle, OperatorStateHandle


@dataclass
class SinkStats:
    """Counters of one sink (monotonic; exported by the worker's ``/metrics``)."""

    points_in: int = 0
    """Points handed to the sink (raw points + tier rows)."""
    points_written: int = 0
    """Points acknowledged by the external system."""
    requests: int = 0
    request_failures_retriable: int = 0
    retries: int = 0
    dead_letter_points: dict[str, int] = field(default_factory=dict)
    """Points rejected for good, by reason (``field_type_conflict``, ``beyond_retention``...)."""
    flushes: int = 0
    last_error: str = ""
    blocked: bool = False
    """True while the sink is retrying (the external system is unavailable)."""
    hard_limit_waits: int = 0
    """Writes that blocked their caller past the hard limit (0 in the job: it awaits capacity)."""
    beyond_retention_points: dict[str, int] = field(default_factory=dict)
    """Points not sent because their tier's retention policy would drop them, by tier."""
    fenced_points: int = 0
    """Points of revoked partitions dropped instead of sent (their next owner replays them)."""
    unconfirmed_writes: int = 0
    """Writes of revoked partitions whose outcome InfluxDB never confirmed (see fencing)."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_dead_letters(self, reason: str, count: int) -> None:
        with self.lock:
            self.dead_letter_points[reason] = self.dead_letter_points.get(reason, 0) + count

    def add_beyond_retention(self, tier: str, count: int) -> None:
        with self.lock:
            self.beyond_retention_points[tier] = self.beyond_retention_points.get(tier, 0) + count

    def add_fenced(self, count: int) -> None:
        with self.lock:
            self.fenced_points += count


class Sink(abc.ABC):
    """Writes the raw tier and the downsampled tiers somewhere (see the module docstring)."""

    stats: SinkStats

    @abc.abstractmethod
    def open(self) -> None:
        """Connect and prepare (e.g. create databases); may block until the system is up."""

    @abc.abstractmethod
    def write_raw(self, batch: RawLinesBatch) -> None:
        """Buffer raw points; blocks while the buffers are full."""

    @abc.abstractmethod
    def write_aggregates(self, batch: AggregateBatch) -> None:
        """Buffer tier rows; blocks while the buffers are full."""

    async def write_aggregates_async(self, batch: AggregateBatch) -> None:
        """:meth:`write_aggregates` for a caller on the event loop: a sink whose encoding is
        long overrides it to pause (``await``) between slices, with the same result."""
        self.write_aggregates(batch)

    @abc.abstractmethod
    def flush(self, timeout_s: float | None = None) -> None:
        """Return once everything written before this call is acknowledged.

        Raises ``TimeoutError`` if that takes longer than ``timeout_s``.
        """

    def flush_marker(self) -> int:
        """Seal what is buffered now and return a marker for :meth:`wait_flushed` (cheap,
        non-blocking: the synchronous phase of a checkpoint)."""
        self.flush()
        return 0

    def wait_flushed(self, marker: int, timeout_s: float | None = None) -> None:  # noqa: B027
        """Block until everything sealed up to ``marker`` is acknowledged (runs in the
        asynchronous phase of a checkpoint, off the event loop)."""

    def has_capacity(self) -> bool:
        """``False`` while the sink is saturated: sources should stop reading for a while.
        Must turn ``True`` again by itself (as the external system catches up) or when the
        sink failed (so that the next write raises instead of waiting forever)."""
        return True

    @abc.abstractmethod
    def close(self, *, flush: bool = True) -> None:
        """Stop; with ``flush`` first write what is buffered, else abandon it."""


LATE_SEQ_VERSION = 1
_LATE_SEQ = struct.Struct(">Bq")


def decode_late_seq(data: bytes) -> int:
    """The sink's operator state: one version byte, then a big-endian int64 count."""
    if len(data) != _LATE_SEQ.size or data[0] != LATE_SEQ_VERSION:
        raise SerializationError(
            f"unknown sink state format (version byte {data[:1]!r}, {len(data)} bytes; this "
            f"version reads version {LATE_SEQ_VERSION})"
        )
    return int(_LATE_SEQ.unpack(data)[1])


class _FlushSnapshot(AsyncSnapshot):
    """The asynchronous part of the sink's snapshot: wait until the output that preceded the
    barrier is acknowledged by the external system. Holds no state (no handles)."""

    def __init__(self, sink: Sink, marker: int, timeout_s: float | None) -> None:
        self.sink = sink
        self.marker = marker
        self.timeout_s = timeout_s

    def run(self) -> list[KeyGroupStateHandle]:
        self.sink.wait_flushed(self.marker, self.timeout_s)
        return []


class SinkOperator(Operator):
    """The last operator of a job: hands every element to a :class:`Sink`.

    ``snapshot_state`` seals the sink's buffers (synchronous, cheap) and returns an
    asynchronous part that waits until they are acknowledged, so the acknowledgement of
    checkpoint *n* implies that all output before barrier *n* is durable in the external
    system, without blocking the event loop while InfluxDB answers. Points beyond the allowed
    lateness arrive as side output ``"late"``: counted in :attr:`late_points` and handed to
    ``on_late`` (the job writes them to the late-points file, for audit; the raw tier has
    them, and their windows are corrected).

    Its only state, per key group, is the number of late points emitted so far (operator
    state, checkpointed): ``on_late(batch, first_seq)`` numbers them, so that a replay after a
    restore hands over the same numbers again and the late-points file can skip what it has
    already written.
    Correction requests (side output ``"correct"``) go to ``on_correction``, after every
    element that preceded them (docs/windows.md, "Corrections").
    """

    def __init__(
        self,
        uid: str,
        sink: Sink,
        *,
        flush_timeout_s: float | None = None,
        on_late: Callable[[RecordBatch, int], None] | None = None,
        on_correction: Callable[[CorrectionRequest], None] | None = None,
    ) -> None:
        super().__init__(uid)
        self.sink = sink
        self.flush_timeout_s = flush_timeout_s
        self.on_late = on_late
        self.on_correction = on_correction
        self.late_points = 0
        self.late_seq: dict[int, int] = {}
        """Late points emitted so far, per key group (checkpointed)."""

    def initialize_state(self, ctx: StateInitializationContext) -> None:
        self._restore_late_seq(ctx.operator)

    def on_key_groups_assigned(
        self, key_groups: frozenset[int], ctx: StateInitializationContext
    ) -> None:
        for kg in key_groups:
            self.late_seq[kg] = 0
        self._restore_late_seq(ctx.operator)

    def on_key_groups_revoked(self, key_groups: frozenset[int]) -> None:
        for kg in key_groups:
            self.late_seq.pop(kg, None)

    def _restore_late_seq(self, handles: Sequence[OperatorStateHandle]) -> None:
        for handle in handles:
            if handle.uid == self.uid:
                self.late_seq[handle.key_group] = decode_late_seq(handle.data)

    def open(self) -> None:
        self.sink.open()

    capacity_poll_interval_s: float = 0.02

    async def wait_for_capacity(self) -> None:
        """Return once the sink has room (the sink task awaits this before every element)."""
        # capacity is freed by the sink's own (writer) thread: poll it
        while not self.sink.has_capacity():  # noqa: ASYNC110
            await asyncio.sleep(self.capacity_poll_interval_s)

    def process_batch(
        self, batch: RecordBatch | AggregateBatch | RawLinesBatch, output: Output
    ) -> None:
        if isinstance(batch, RawLinesBatch):
            self.sink.write_raw(batch)
        elif isinstance(batch, AggregateBatch):
            self.sink.write_aggregates(batch)
        # RecordBatch: numeric columns are not a sink's business (the raw tier comes as lines)

    async def process_batch_async(
        self, batch: RecordBatch | AggregateBatch | RawLinesBatch, output: Output
    ) -> None:
        """What the sink task calls (``AsyncBatchProcessor``): tier rows are encoded in
        slices that let the event loop run in between (Kafka heartbeats); the rest as
        :meth:`process_batch`."""
        if isinstance(batch, AggregateBatch):
            await self.sink.write_aggregates_async(batch)
        else:
            self.process_batch(batch, output)

    def process_watermark(self, watermark: Watermark, output: Output) -> None:
        """The end of the graph: watermarks stop here."""

    def process_side_output(self, tag: str, element: SideOutput) -> None:
        if isinstance(element, CorrectionRequest):
            # everything that preceded the request in its channel is in the sink already
            if self.on_correction is not None:
                self.on_correction(element)
        elif tag == "late":
            self.late_points += len(element)
            first = self.late_seq.get(element.key_group, 0)
            self.late_seq[element.key_group] = first + len(element)
            if self.on_late is not None:
                self.on_late(element, first)

    def snapshot_state(self, barrier: CheckpointBarrier) -> OperatorSnapshot:
        marker = self.sink.flush_marker()
        counters = tuple(
            OperatorStateHandle(self.uid, kg, _LATE_SEQ.pack(LATE_SEQ_VERSION, seq))
            for kg, seq in sorted(self.late_seq.items())
        )
        return OperatorSnapshot(
            keyed=_FlushSnapshot(self.sink, marker, self.flush_timeout_s), operator=counters
        )

    def finish(self, output: Output) -> None:
        self.sink.flush(self.flush_timeout_s)

    def close(self) -> None:
        self.sink.close(flush=False)
