"""The barrier alignment state machine (exactly-once blocks, at-least-once tracks)."""

from __future__ import annotations

from metricsflow.checkpointing.base import CheckpointFailureReason
from metricsflow.checkpointing.protocol import CheckpointBarrier, CheckpointingMode
from metricsflow.runtime.barriers import (
    CheckpointBarrierHandler,
    CollectingBarriers,
    WaitingForFirstBarrier,
)


class Recorder:
    def __init__(self) -> None:
        self.blocked: set[int] = set()
        self.triggered: list[int] = []
        self.aborted: list[tuple[int, CheckpointFailureReason]] = []

    def block_channel(self, channel: int) -> None:
        self.blocked.add(channel)

    def unblock_all(self) -> None:
        self.blocked.clear()

    def trigger_checkpoint(self, barrier: CheckpointBarrier, alignment_ns: int) -> None:
        self.triggered.append(barrier.checkpoint_id)

    def abort_checkpoint(self, checkpoint_id: int, reason: CheckpointFailureReason) -> None:
        self.aborted.append((checkpoint_id, reason))


def _handler(
    mode: CheckpointingMode, channels: int = 3
) -> tuple[CheckpointBarrierHandler, Recorder]:
    recorder = Recorder()
    return CheckpointBarrierHandler(mode, set(range(channels)), recorder), recorder


def test_exactly_once_blocks_each_input_that_delivered_the_barrier_until_all_did() -> None:
    handler, rec = _handler(CheckpointingMode.EXACTLY_ONCE)
    handler.barrier_received(0, CheckpointBarrier(1, 0), 0)
    assert isinstance(handler.state, CollectingBarriers)
    assert rec.blocked == {0}
    handler.barrier_received(2, CheckpointBarrier(1, 0), 5)
    assert rec.blocked == {0, 2}
    assert rec.triggered == []
    handler.barrier_received(1, CheckpointBarrier(1, 0), 9)
    assert rec.triggered == [1]
    assert rec.blocked == set()
    assert isinstance(handler.state, WaitingForFirstBarrier)


def test_at_least_once_never_blocks_and_triggers_on_the_last_barrier() -> None:
    handler, rec = _handler(CheckpointingMode.AT_LEAST_ONCE)
    for channel in (1, 0):
        handler.barrier_received(channel, CheckpointBarrier(4, 0), 0)
        assert rec.blocked == set()
    assert rec.triggered == []
    handler.barrier_received(2, CheckpointBarrier(4, 0), 0)
    assert rec.triggered == [4]


def test_a_newer_barrier_cancels_the_alignment_in_progress() -> None:
    handler, rec = _handler(CheckpointingMode.EXACTLY_ONCE)
    handler.barrier_received(0, CheckpointBarrier(1, 0), 0)
    handler.barrier_received(1, CheckpointBarrier(2, 0), 0)
    assert rec.aborted == [(1, CheckpointFailureReason.CHECKPOINT_SUBSUMED)]
    assert rec.blocked == {1}
    handler.barrier_received(2, CheckpointBarrier(1, 0), 0)  # stale: ignored
    handler.barrier_received(0, CheckpointBarrier(2, 0), 0)
    handler.barrier_received(2, CheckpointBarrier(2, 0), 0)
    assert rec.triggered == [2]


def test_an_abort_from_the_coordinator_unblocks_inputs_and_later_barriers_are_ignored() -> None:
    handler, rec = _handler(CheckpointingMode.EXACTLY_ONCE)
    handler.barrier_received(0, CheckpointBarrier(3, 0), 0)
    handler.abort(3)
    assert rec.blocked == set()
    assert isinstance(handler.state, WaitingForFirstBarrier)
    handler.barrier_received(1, CheckpointBarrier(3, 0), 0)
    assert isinstance(handler.state, WaitingForFirstBarrier)
    assert rec.triggered == []


def test_an_input_that_ended_no_longer_owes_barriers() -> None:
    handler, rec = _handler(CheckpointingMode.EXACTLY_ONCE)
    handler.barrier_received(0, CheckpointBarrier(1, 0), 0)
    handler.barrier_received(1, CheckpointBarrier(1, 0), 0)
    handler.channel_finished(2, 0)
    assert rec.triggered == [1]


def test_an_input_added_during_alignment_aborts_that_checkpoint() -> None:
    handler, rec = _handler(CheckpointingMode.EXACTLY_ONCE, channels=2)
    handler.barrier_received(0, CheckpointBarrier(1, 0), 0)
    handler.channel_added(5, 0)
    assert rec.aborted == [(1, CheckpointFailureReason.NOT_ALL_REQUIRED_TASKS_RUNNING)]
    assert rec.blocked == set()
