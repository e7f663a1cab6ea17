"""Tasks: a key group's source task (reader + operator chain) and the multi-input sink task.

Checkpoint *n* in a **source task** (between two batches, never inside one):
  record the reader's position -> ``prepare_snapshot_pre_barrier`` on every chained operator
  (head to tail) -> ``snapshot_state`` on each (the *synchronous* phase: short) -> barrier *n*
  into the channel -> processing goes on while the asynchronous parts persist the captured
  state in a worker thread -> acknowledgement with the handles.
In the **sink task** the same happens once barrier *n* arrived on every input (alignment,
barriers.py); the sink's asynchronous part makes everything before the barrier durable
(flush) before it acknowledges.

Wall clock and backpressure: after every ``poll`` that returned nothing, a source task asks its
reader for its :class:`~metricsflow.runtime.source.WatermarkStatus` and tells the chain when it
changes (``WatermarkStatusListener``: the watermark assigner), so only a reader that has
nothing to read lets its watermark follow the clock. The sink task awaits its operator's
``wait_for_capacity`` (``BackpressureAwaitable``) before every element: a slow sink fills the
bounded channels and stops the sources without blocking the event loop.

An exception from processing fails the job; an exception in a snapshot declines the checkpoint
(the job goes on), unless it is a :class:`FatalTaskError`, which always fails the job. With
failure isolation (``TaskEnvironment.isolation``, ``runtime/isolation.py``) an exception while
the chain processes an element the reader can attribute to source positions fails the job with
a :class:`~metricsflow.runtime.isolation.RecordProcessingError` instead: those positions are
replayed one record at a time after the restore, and a record that fails alone is
dead-lettered and skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from metricsflow.checkpointing.base import CheckpointFailureReason
from metricsflow.checkpointing.protocol import (
    CheckpointBarrier,
    CheckpointingMode,
    TaskAcknowledgement,
)
from metricsflow.errors import MetricsflowError
from metricsflow.runtime.barriers import CheckpointBarrierHandler
from metricsflow.runtime.base import (
    Operator,
    OperatorContext,
    Output,
    StateInitializationContext,
)
from metricsflow.runtime.graph import ChannelElement, InputGate, SideOutputElement
from metricsflow.runtime.isolation import FailureIsolation, RecordProcessingError
from metricsflow.runtime.managed_state import ManagedStateBackend
from metricsflow.runtime.records import (
    AggregateBatch,
    EndOfPartition,
    RawLinesBatch,
    RecordBatch,
    SideOutput,
    Watermark,
)
from metricsflow.runtime.source import SourceReader, WatermarkStatus
from metricsflow.state.base import AsyncSnapshot
from metricsflow.state.handles import CheckpointStorage, KeyGroupStateHandle, OperatorStateHandle
from metricsflow.time.base import Clock

logger = logging.getLogger(__name__)

SINK_TASK_ID = "sink"


def source_task_id(key_group: int) -> str:
    return f"source-{key_group}"


class FatalTaskError(MetricsflowError):
    """Raised anywhere in a task (also in a snapshot's asynchronous part): fails the job."""


class CheckpointResponder(Protocol):
    def acknowledge_checkpoint(
        self, task_id: str, checkpoint_id: int, ack: TaskAcknowledgement
    ) -> None: ...

    def decline_checkpoint(
        self,
        task_id: str,
        checkpoint_id: int,
        reason: CheckpointFailureReason,
        cause: BaseException | None = None,
    ) -> None: ...


@runtime_checkable
class ProcessingTimeCallback(Protocol):
    """Operators with wall-clock behaviour (idle watermarks) are ticked by their task."""

    def on_processing_time(self, now_ns: int, output: Output) -> None: ...


@runtime_checkable
class WatermarkStatusListener(Protocol):
    """Operators told whether their key group's source has input (the watermark assigner):
    the source task calls this whenever the status changes, before the element or tick that
    follows the change."""

    def on_watermark_status(
        self, key_group: int, status: WatermarkStatus, now_ns: int, output: Output
    ) -> None: ...


@runtime_checkable
class BackpressureAwaitable(Protocol):
    """A sink operator that can say, without blocking the event loop, when it has room for
    more input. The sink task awaits it before every element, so a slow external system
    slows the job down (channels fill, sources stop reading) while heartbeats, checkpoints
    and the REST API keep running."""

    async def wait_for_capacity(self) -> None: ...


@runtime_checkable
class AsyncBatchProcessor(Protocol):
    """A sink operator whose processing of one element may be long (encoding a big batch):
    the sink task awaits this instead of ``process_batch``, so the operator can let the event
    loop run (Kafka heartbeats) between slices. Elements are still taken one at a time, in
    channel order."""

    async def process_batch_async(
        self, batch: RecordBatch | AggregateBatch | RawLinesBatch, output: Output
    ) -> None: ...


@runtime_checkable
class SideOutputConsumer(Protocol):
    """A sink operator that accepts side outputs (e.g. ``"late"`` points)."""

    def process_side_output(self, tag: str, element: SideOutput) -> None: ...


@dataclass(slots=True)
class TaskEnvironment:
    """What every task of a job shares."""

    mode: CheckpointingMode
    responder: CheckpointResponder
    async_executor: Executor
    clock: Clock
    fail_job: Callable[[BaseException], None]
    processing_time_interval_ns: int = 200_000_000
    isolation: FailureIsolation | None = None


@dataclass(frozen=True, slots=True)
class OperatorRestore:
    """State for one operator of one key group (empty when starting fresh)."""

    keyed: Sequence[KeyGroupStateHandle] = ()
    operator: Sequence[OperatorStateHandle] = ()
    storage: CheckpointStorage | None = None


_Snapshot = tuple[list[tuple[str, AsyncSnapshot]], list[OperatorStateHandle]]


def _run_async_parts(
    parts: list[tuple[str, AsyncSnapshot]],
) -> list[tuple[str, KeyGroupStateHandle]]:
    return [(uid, handle) for uid, part in parts for handle in part.run()]


class _ChainOutput(Output):
    def __init__(self, chain: OperatorChain, index: int) -> None:
        self._chain = chain
        self._index = index
        self._tap = False
        self._next: Operator | None = None
        self._next_output: Output | None = None

    def wire(self, tap: bool, nxt: Operator | None, nxt_output: Output | None) -> None:
        self._tap = tap
        self._next = nxt
        self._next_output = nxt_output

    def emit(self, element: RecordBatch | AggregateBatch | RawLinesBatch) -> None:
        if self._tap:
            self._chain.pending_out.append(element)
        if self._next is not None and self._next_output is not None:
            self._next.process_batch(element, self._next_output)

    def emit_watermark(self, watermark: Watermark) -> None:
        if self._next is not None and self._next_output is not None:
            self._next.process_watermark(watermark, self._next_output)
        else:
            self._chain.pending_out.append(watermark)

    def emit_side(self, tag: str, element: SideOutput) -> None:
        self._chain.pending_out.append(SideOutputElement(tag, element))


class OperatorChain:
    """The operators of one key group, called directly; what reaches the end (and the taps)
    collects in ``pending_out`` until the task moves it into the channel."""

    def __init__(
        self,
        key_group: int,
        operators: Sequence[Operator],
        taps: frozenset[str],
    ) -> None:
        self.key_group = key_group
        self.operators = list(operators)
        self.pending_out: list[ChannelElement] = []
        self.outputs = [_ChainOutput(self, i) for i in range(len(self.operators))]
        n = len(self.operators)
        for i, out in enumerate(self.outputs):
            last = i == n - 1
            out.wire(
                last or self.operators[i].uid in taps,
                None if last else self.operators[i + 1],
                None if last else self.outputs[i + 1],
            )
        self.backends: dict[str, ManagedStateBackend] = {}

    def initialize(
        self,
        contexts: Sequence[OperatorContext],
        restores: Sequence[OperatorRestore],
    ) -> None:
        for op, ctx, restore in zip(self.operators, contexts, restores, strict=True):
            op.setup(ctx)
            if isinstance(ctx.state_backend, ManagedStateBackend):
                self.backends[op.uid] = ctx.state_backend
                ctx.state_backend.restore_storage = restore.storage
            backend = self.backends.get(op.uid)
            if restore.keyed and backend is not None:
                # keyed state is restored by the runtime, after setup (where operators
                # register their states) and before initialize_state
                backend.restore(restore.keyed, restore.storage or ctx.storage)
            is_restored = bool(restore.keyed or restore.operator)
            op.initialize_state(
                StateInitializationContext(is_restored, restore.keyed, restore.operator)
            )
        for op in self.operators:
            op.open()

    def process(self, element: RecordBatch | RawLinesBatch | Watermark) -> None:
        if not self.operators:
            self.pending_out.append(element)
        elif isinstance(element, Watermark):
            self.operators[0].process_watermark(element, self.outputs[0])
        else:
            self.operators[0].process_batch(element, self.outputs[0])

    def on_processing_time(self, now_ns: int) -> None:
        for op, out in zip(self.operators, self.outputs, strict=True):
            if isinstance(op, ProcessingTimeCallback):
                op.on_processing_time(now_ns, out)

    def on_watermark_status(self, status: WatermarkStatus, now_ns: int) -> None:
        for op, out in zip(self.operators, self.outputs, strict=True):
            if isinstance(op, WatermarkStatusListener):
                op.on_watermark_status(self.key_group, status, now_ns, out)

    def snapshot(self, barrier: CheckpointBarrier) -> _Snapshot:
        """The synchronous phase for every operator (call after ``prepare``)."""
        parts: list[tuple[str, AsyncSnapshot]] = []
        handles: list[OperatorStateHandle] = []
        for op in self.operators:
            snap = op.snapshot_state(barrier)
            if snap.keyed is not None:
                parts.append((op.uid, snap.keyed))
            handles.extend(snap.operator)
        return parts, handles

    def prepare(self, checkpoint_id: int) -> None:
        for op, out in zip(self.operators, self.outputs, strict=True):
            op.prepare_snapshot_pre_barrier(checkpoint_id, out)

    def finish(self) -> None:
        for op, out in zip(self.operators, self.outputs, strict=True):
            op.finish(out)

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        for op in self.operators:
            op.notify_checkpoint_complete(checkpoint_id)
        for backend in self.backends.values():
            backend.notify_checkpoint_complete(checkpoint_id)

    def notify_checkpoint_aborted(self, checkpoint_id: int) -> None:
        for op in self.operators:
            op.notify_checkpoint_aborted(checkpoint_id)

    def close(self) -> None:
        for op in self.operators:
            try:
                op.close()
            except Exception:
                logger.exception(
                    "operator close failed uid=%s key_group=%d", op.uid, self.key_group
                )
        for backend in self.backends.values():
            try:
                backend.close()
            except Exception:
                logger.exception("state backend close failed key_group=%d", self.key_group)


class _TaskBase:
    task_id: str

    def __init__(self, env: TaskEnvironment) -> None:
        self.env = env
        self._async_parts: set[asyncio.Task[None]] = set()

    def _launch_async_part(
        self,
        barrier: CheckpointBarrier,
        parts: list[tuple[str, AsyncSnapshot]],
        handles: list[OperatorStateHandle],
        key_groups: frozenset[int],
        sync_ns: int,
        alignment_ns: int,
    ) -> None:
        task = asyncio.create_task(
            self._finish_checkpoint(barrier, parts, handles, key_groups, sync_ns, alignment_ns)
        )
        self._async_parts.add(task)
        task.add_done_callback(self._async_parts.discard)

    async def _finish_checkpoint(
        self,
        barrier: CheckpointBarrier,
        parts: list[tuple[str, AsyncSnapshot]],
        handles: list[OperatorStateHandle],
        key_groups: frozenset[int],
        sync_ns: int,
        alignment_ns: int,
    ) -> None:
        cid = barrier.checkpoint_id
        started = time.perf_counter_ns()
        loop = asyncio.get_running_loop()
        try:
            keyed = await loop.run_in_executor(self.env.async_executor, _run_async_parts, parts)
        except FatalTaskError as exc:
            self.env.fail_job(exc)
            return
        except Exception as exc:
            logger.warning(
                "asynchronous snapshot part failed task=%s checkpoint_id=%d error=%r",
                self.task_id,
                cid,
                exc,
            )
            self.env.responder.decline_checkpoint(
                self.task_id, cid, CheckpointFailureReason.CHECKPOINT_ASYNC_EXCEPTION, exc
            )
            return
        ack = TaskAcknowledgement(
            keyed=keyed,
            operator=handles,
            key_groups=key_groups,
            sync_duration_ns=sync_ns,
            async_duration_ns=time.perf_counter_ns() - started,
            alignment_duration_ns=alignment_ns,
        )
        self.env.responder.acknowledge_checkpoint(self.task_id, cid, ack)

    def _decline_sync(self, cid: int, exc: Exception) -> None:
        if isinstance(exc, FatalTaskError):
            raise exc
        logger.warning(
            "synchronous snapshot failed task=%s checkpoint_id=%d error=%r", self.task_id, cid, exc
        )
        self.env.responder.decline_checkpoint(
            self.task_id, cid, CheckpointFailureReason.CHECKPOINT_DECLINED, exc
        )

    async def wait_async_parts(self) -> None:
        if self._async_parts:
            await asyncio.gather(*self._async_parts, return_exceptions=True)


class SourceTask(_TaskBase):
    """Reads one key group and runs its operator chain; output goes to one channel."""

    def __init__(
        self,
        env: TaskEnvironment,
        key_group: int,
        source_uid: str,
        reader: SourceReader,
        chain: OperatorChain,
        channel_put: Callable[[ChannelElement], Awaitable[None]],
        restored_position: bytes | None,
    ) -> None:
        super().__init__(env)
        self.key_group = key_group
        self.task_id = source_task_id(key_group)
        self.source_uid = source_uid
        self.reader = reader
        self.chain = chain
        self._put = channel_put
        self.restored_position = restored_position
        self._barriers: list[CheckpointBarrier] = []
        self._wakeup = asyncio.Event()
        self.finished = False
        self.records_in = 0
        self.last_sync_ns = 0
        self.watermark_status = WatermarkStatus.ACTIVE
        """What the reader last said about its input (``ACTIVE`` until it says ``IDLE``)."""

    def trigger_checkpoint(self, barrier: CheckpointBarrier) -> None:
        """Called by the coordinator: inject barrier *n* before the next batch."""
        self._barriers.append(barrier)
        self._wakeup.set()

    async def _flush(self) -> None:
        out = self.chain.pending_out
        if out:
            self.chain.pending_out = []
            for element in out:
                await self._put(element)

    async def run(self) -> None:
        clock = self.env.clock
        self.reader.restore_position(self.restored_position)
        if self.env.isolation is not None:
            self.reader.isolate(self.env.isolation)
        self.chain.on_watermark_status(WatermarkStatus.ACTIVE, clock.now_ns())
        next_tick = clock.now_ns() + self.env.processing_time_interval_ns
        while True:
            while self._barriers:
                await self._checkpoint(self._barriers.pop(0))
            if self.finished:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            element = await self.reader.poll()
            now = clock.now_ns()
            status = self.reader.watermark_status() if element is None else WatermarkStatus.ACTIVE
            if status is not self.watermark_status:
                self.watermark_status = status
                self.chain.on_watermark_status(status, now)
            if element is None or now >= next_tick:
                next_tick = now + self.env.processing_time_interval_ns
                self.chain.on_processing_time(now)
            if element is None:
                await self._flush()
                continue
            if isinstance(element, EndOfPartition):
                self.chain.finish()
                await self._flush()
                await self._put(EndOfPartition(self.key_group))
                self.finished = True
                logger.info("key group finished key_group=%d", self.key_group)
                continue
            self.records_in += len(element) if isinstance(element, RecordBatch) else 0
            try:
                self.chain.process(element)
            except FatalTaskError:
                raise
            except Exception as exc:
                await self._isolate_failure(exc)
                raise
            await self._flush()

    async def _isolate_failure(self, exc: Exception) -> None:
        """The chain failed on the element last polled: raise a
        :class:`RecordProcessingError` when the reader can say where it came from (suspect
        positions, or one poison record, dead-lettered first); return (the caller re-raises
        ``exc``) when it cannot, when the reader did not isolate a suspect range, or when the
        isolation's budget of dead letters is spent."""
        isolation = self.env.isolation
        span = self.reader.last_range() if isolation is not None else None
        if isolation is None or span is None or len(span) < 1:
            return
        kg = self.key_group
        if len(span) > 1:
            if isolation.suspects.get(kg) == span:
                return  # replayed as a whole again: the reader does not isolate
            isolation.mark_suspect(kg, span)
            raise RecordProcessingError(kg, span, exc, poison=False) from exc
        if not isolation.may_dead_letter():
            logger.error(
                "processing failed on one record, but the dead-letter budget is spent "
                "(failing like any failure) key_group=%d position=%d budget=%d/%.0fs",
                kg,
                span.first,
                isolation.max_poison_per_interval,
                isolation.interval_s,
            )
            return
        error = f"{type(exc).__name__}: {exc}"
        await self.reader.dead_letter(span.first, error)
        isolation.mark_poison(kg, span.first, error)
        logger.error(
            "poison record dead-lettered, every replay skips it key_group=%d position=%d error=%s",
            kg,
            span.first,
            error,
        )
        raise RecordProcessingError(kg, span, exc, poison=True) from exc

    async def _checkpoint(self, barrier: CheckpointBarrier) -> None:
        cid = barrier.checkpoint_id
        started = time.perf_counter_ns()
        try:
            position = self.reader.snapshot_position(cid)
            if not self.finished:
                self.chain.prepare(cid)
        except Exception as exc:
            self._decline_sync(cid, exc)
            return
        await self._flush()
        flushed = time.perf_counter_ns()
        try:
            parts, handles = self.chain.snapshot(barrier)
        except Exception as exc:
            self._decline_sync(cid, exc)
            return
        handles.insert(0, OperatorStateHandle(self.source_uid, self.key_group, position))
        sync_ns = time.perf_counter_ns() - flushed
        self.last_sync_ns = sync_ns
        if not self.finished:
            await self._put(barrier)
        logger.debug(
            "source snapshot taken key_group=%d checkpoint_id=%d sync_ms=%.3f prepare_ms=%.3f",
            self.key_group,
            cid,
            sync_ns / 1e6,
            (flushed - started) / 1e6,
        )
        self._launch_async_part(barrier, parts, handles, frozenset({self.key_group}), sync_ns, 0)

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        self.reader.notify_checkpoint_complete(checkpoint_id)
        self.chain.notify_checkpoint_complete(checkpoint_id)

    def notify_checkpoint_aborted(self, checkpoint_id: int) -> None:
        self._barriers = [b for b in self._barriers if b.checkpoint_id != checkpoint_id]
        self.chain.notify_checkpoint_aborted(checkpoint_id)

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.chain.close()


class _DiscardingOutput(Output):
    def __init__(self) -> None:
        self.dropped = 0

    def emit(self, element: RecordBatch | AggregateBatch | RawLinesBatch) -> None:
        self.dropped += 1

    def emit_watermark(self, watermark: Watermark) -> None:
        return None


class SinkTask(_TaskBase):
    """One operator fed by every key group's channel; aligns barriers across them."""

    def __init__(
        self,
        env: TaskEnvironment,
        operator: Operator,
        gate: InputGate,
    ) -> None:
        super().__init__(env)
        self.task_id = SINK_TASK_ID
        self.operator = operator
        self.gate = gate
        self.handler = CheckpointBarrierHandler(env.mode, set(gate.channels), self)
        self._output = _DiscardingOutput()
        self._ended: set[int] = set()
        self._triggered: list[tuple[CheckpointBarrier, int]] = []
        self.side_outputs_unclaimed = 0
        self.done = asyncio.Event()

    # -- BarrierHandlerActions -----------------------------------------------------------
    def block_channel(self, channel: int) -> None:
        self.gate.block(channel)

    def unblock_all(self) -> None:
        self.gate.unblock_all()

    def trigger_checkpoint(self, barrier: CheckpointBarrier, alignment_ns: int) -> None:
        self._triggered.append((barrier, alignment_ns))

    def abort_checkpoint(self, checkpoint_id: int, reason: CheckpointFailureReason) -> None:
        self.env.responder.decline_checkpoint(self.task_id, checkpoint_id, reason)

    # -- inputs ----------------------------------------------------------------------------
    def add_input(self, key_group: int) -> None:
        self._ended.discard(key_group)
        self.handler.channel_added(key_group, self.env.clock.now_ns())

    def remove_input(self, key_group: int) -> None:
        self._ended.discard(key_group)
        self.handler.channel_finished(key_group, self.env.clock.now_ns())
        self._check_done()

    def _check_done(self) -> None:
        channels = self.gate.channels
        if channels and channels <= self._ended and not self.done.is_set():
            self.operator.finish(self._output)
            self.done.set()

    async def run(self) -> None:
        capacity = (
            self.operator.wait_for_capacity
            if isinstance(self.operator, BackpressureAwaitable)
            else None
        )
        process_async = (
            self.operator.process_batch_async
            if isinstance(self.operator, AsyncBatchProcessor)
            else None
        )
        while True:
            if capacity is not None:
                await capacity()
            key_group, element = await self.gate.next()
            if isinstance(element, CheckpointBarrier):
                now = time.perf_counter_ns()
                self.handler.barrier_received(key_group, element, now)
            elif isinstance(element, EndOfPartition):
                self._ended.add(key_group)
                self.handler.channel_finished(key_group, time.perf_counter_ns())
            elif isinstance(element, Watermark):
                self.operator.process_watermark(element, self._output)
            elif isinstance(element, SideOutputElement):
                if isinstance(self.operator, SideOutputConsumer):
                    self.operator.process_side_output(element.tag, element.element)
                else:
                    self.side_outputs_unclaimed += 1
            elif process_async is not None:
                await process_async(element, self._output)
            else:
                self.operator.process_batch(element, self._output)
            while self._triggered:
                barrier, alignment_ns = self._triggered.pop(0)
                self._checkpoint(barrier, alignment_ns)
            if isinstance(element, EndOfPartition):
                self._check_done()

    def _checkpoint(self, barrier: CheckpointBarrier, alignment_ns: int) -> None:
        cid = barrier.checkpoint_id
        started = time.perf_counter_ns()
        try:
            self.operator.prepare_snapshot_pre_barrier(cid, self._output)
            snap = self.operator.snapshot_state(barrier)
        except Exception as exc:
            self._decline_sync(cid, exc)
            return
        parts = [] if snap.keyed is None else [(self.operator.uid, snap.keyed)]
        sync_ns = time.perf_counter_ns() - started
        self._launch_async_part(
            barrier, parts, list(snap.operator), frozenset(), sync_ns, alignment_ns
        )

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        self.operator.notify_checkpoint_complete(checkpoint_id)

    def notify_checkpoint_aborted(self, checkpoint_id: int) -> None:
        self.handler.abort(checkpoint_id)
        self.operator.notify_checkpoint_aborted(checkpoint_id)

    def close(self) -> None:
        self.operator.close()
