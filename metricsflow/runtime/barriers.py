"""Barrier alignment for a task with several inputs (Flink's ``SingleCheckpointBarrierHandler``).

The handler is a small state machine, free of I/O, driven by the task's input gate:

- :class:`WaitingForFirstBarrier`: no checkpoint is being collected.
- :class:`CollectingBarriers`: barrier *n* arrived on some inputs and not yet on all.
  In ``EXACTLY_ONCE`` mode an input that delivered barrier *n* is **blocked** (the gate stops
  reading it) until every input delivered *n*: everything the task processes before its
  snapshot is then exactly what precedes barrier *n* on every input (alignment). In
  ``AT_LEAST_ONCE`` mode nothing is blocked; records after barrier *n* on a fast input are
  processed before the snapshot and so are replayed after a restore (duplicates, no loss).

When the last input delivers *n*, the handler unblocks everything and tells the task to
snapshot (``trigger_checkpoint``). A newer barrier *m > n* while collecting *n* cancels *n*
(``abort_checkpoint`` with ``CHECKPOINT_SUBSUMED``) and starts collecting *m*; an abort from the
coordinator, a change of the input set, cancels it too. An input that ended (end of
partition) or was removed no longer needs to deliver barriers.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from typing import Protocol

from metricsflow.checkpointing.base import CheckpointFailureReason
from metricsflow.checkpointing.protocol import CheckpointBarrier, CheckpointingMode

logger = logging.getLogger(__name__)


class BarrierHandlerActions(Protocol):
    """What the handler asks of its task's input gate and snapshot logic."""

    def block_channel(self, channel: int) -> None: ...

    def unblock_all(self) -> None: ...

    def trigger_checkpoint(self, barrier: CheckpointBarrier, alignment_ns: int) -> None: ...

    def abort_checkpoint(self, checkpoint_id: int, reason: CheckpointFailureReason) -> None: ...


@dataclass(slots=True)
class _Context:
    mode: CheckpointingMode
    actions: BarrierHandlerActions
    live_channels: set[int]
    clock_ns: int = 0
    #: highest checkpoint id triggered or aborted: barriers up to it are stale
    last_handled_id: int = 0

    @property
    def blocking(self) -> bool:
        return self.mode is CheckpointingMode.EXACTLY_ONCE


class BarrierHandlerState(abc.ABC):
    """One state of the alignment state machine; every event returns the next state."""

    @abc.abstractmethod
    def barrier_received(
        self, ctx: _Context, channel: int, barrier: CheckpointBarrier
    ) -> BarrierHandlerState: ...

    def inputs_changed(self, ctx: _Context) -> BarrierHandlerState:
        return self

    def abort(self, ctx: _Context, checkpoint_id: int) -> BarrierHandlerState:
        return self

    @property
    def pending_checkpoint_id(self) -> int | None:
        return None


class WaitingForFirstBarrier(BarrierHandlerState):
    def barrier_received(
        self, ctx: _Context, channel: int, barrier: CheckpointBarrier
    ) -> BarrierHandlerState:
        if barrier.checkpoint_id <= ctx.last_handled_id:
            logger.debug(
                "stale barrier ignored checkpoint_id=%d channel=%d", barrier.checkpoint_id, channel
            )
            return self
        collecting = CollectingBarriers(barrier, started_ns=ctx.clock_ns)
        return collecting.barrier_received(ctx, channel, barrier)

    def __repr__(self) -> str:
        return "WaitingForFirstBarrier()"


@dataclass(slots=True, repr=True)
class CollectingBarriers(BarrierHandlerState):
    barrier: CheckpointBarrier
    started_ns: int
    received: set[int] = field(default_factory=set)

    @property
    def pending_checkpoint_id(self) -> int | None:
        return self.barrier.checkpoint_id

    def barrier_received(
        self, ctx: _Context, channel: int, barrier: CheckpointBarrier
    ) -> BarrierHandlerState:
        current = self.barrier.checkpoint_id
        if barrier.checkpoint_id < current:
            return self  # stale: belongs to a checkpoint that was cancelled
        if barrier.checkpoint_id > current:
            logger.info(
                "newer barrier cancels alignment checkpoint_id=%d newer_id=%d",
                current,
                barrier.checkpoint_id,
            )
            waiting = self._cancel(ctx, CheckpointFailureReason.CHECKPOINT_SUBSUMED)
            return waiting.barrier_received(ctx, channel, barrier)
        self.received.add(channel)
        if ctx.blocking and not self._complete(ctx):
            ctx.actions.block_channel(channel)
        return self._maybe_trigger(ctx)

    def inputs_changed(self, ctx: _Context) -> BarrierHandlerState:
        self.received &= ctx.live_channels
        return self._maybe_trigger(ctx)

    def abort(self, ctx: _Context, checkpoint_id: int) -> BarrierHandlerState:
        if checkpoint_id < self.barrier.checkpoint_id:
            return self
        return self._cancel(ctx, None)

    def _complete(self, ctx: _Context) -> bool:
        return ctx.live_channels <= self.received

    def _maybe_trigger(self, ctx: _Context) -> BarrierHandlerState:
        if not self._complete(ctx):
            return self
        ctx.last_handled_id = self.barrier.checkpoint_id
        if ctx.blocking:
            ctx.actions.unblock_all()
        ctx.actions.trigger_checkpoint(self.barrier, max(0, ctx.clock_ns - self.started_ns))
        return WaitingForFirstBarrier()

    def _cancel(self, ctx: _Context, reason: CheckpointFailureReason | None) -> BarrierHandlerState:
        ctx.last_handled_id = max(ctx.last_handled_id, self.barrier.checkpoint_id)
        if ctx.blocking:
            ctx.actions.unblock_all()
        if reason is not None:
            ctx.actions.abort_checkpoint(self.barrier.checkpoint_id, reason)
        return WaitingForFirstBarrier()


class CheckpointBarrierHandler:
    """Drives the state machine for one task; ``channels`` are the task's input indexes."""

    def __init__(
        self,
        mode: CheckpointingMode,
        channels: set[int],
        actions: BarrierHandlerActions,
    ) -> None:
        self._ctx = _Context(mode=mode, actions=actions, live_channels=set(channels))
        self.state: BarrierHandlerState = WaitingForFirstBarrier()

    @property
    def mode(self) -> CheckpointingMode:
        return self._ctx.mode

    @property
    def live_channels(self) -> frozenset[int]:
        return frozenset(self._ctx.live_channels)

    @property
    def pending_checkpoint_id(self) -> int | None:
        return self.state.pending_checkpoint_id

    def barrier_received(self, channel: int, barrier: CheckpointBarrier, now_ns: int) -> None:
        self._ctx.clock_ns = now_ns
        if channel not in self._ctx.live_channels:
            return
        self.state = self.state.barrier_received(self._ctx, channel, barrier)

    def channel_finished(self, channel: int, now_ns: int) -> None:
        """The input ended (end of partition) or was removed: it owes no more barriers."""
        self._ctx.clock_ns = now_ns
        self._ctx.live_channels.discard(channel)
        self.state = self.state.inputs_changed(self._ctx)

    def channel_added(self, channel: int, now_ns: int) -> None:
        """A new input (key group assigned): an alignment in progress cannot include it."""
        self._ctx.clock_ns = now_ns
        self._ctx.live_channels.add(channel)
        pending = self.state.pending_checkpoint_id
        if pending is not None:
            self.state = self.state.abort(self._ctx, pending)
            self._ctx.actions.abort_checkpoint(
                pending, CheckpointFailureReason.NOT_ALL_REQUIRED_TASKS_RUNNING
            )

    def abort(self, checkpoint_id: int) -> None:
        """The coordinator aborted ``checkpoint_id`` (timeout, decline): stop aligning it."""
        self._ctx.last_handled_id = max(self._ctx.last_handled_id, checkpoint_id)
        self.state = self.state.abort(self._ctx, checkpoint_id)
