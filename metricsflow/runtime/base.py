"""The operator contract and its lifecycle (Flink's ``StreamOperator``, made small).

Lifecycle, the same whether a job starts fresh, recovers from a failure or resumes from a
savepoint (seed-digest.md, "Task lifecycle"):

    setup(ctx) -> initialize_state(ctx) -> open()
      -> { process_batch | process_watermark | snapshot_state | notify_checkpoint_complete }*
      -> finish(output) -> close()

Operators are chained inside a task and called directly (no queue between chained operators);
tasks are connected by bounded channels carrying ``StreamElement``s (records.py). An operator
emits through the ``Output`` it is given. Every stateful operator has a stable ``uid``: its
state in checkpoints and savepoints is keyed by it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from metricsflow.checkpointing.protocol import CheckpointBarrier
from metricsflow.runtime.records import (
    AggregateBatch,
    RawLinesBatch,
    RecordBatch,
    SideOutput,
    Watermark,
)
from metricsflow.state.base import AsyncSnapshot, KeyedStateBackend
from metricsflow.state.handles import CheckpointStorage, KeyGroupStateHandle, OperatorStateHandle


class Output(abc.ABC):
    """Where an operator sends what it produces (the next chained operator or a channel)."""

    @abc.abstractmethod
    def emit(self, element: RecordBatch | AggregateBatch | RawLinesBatch) -> None: ...

    @abc.abstractmethod
    def emit_watermark(self, watermark: Watermark) -> None: ...

    def emit_side(self, tag: str, element: SideOutput) -> None:  # noqa: B027
        """A side output (e.g. ``"late"`` for points beyond the allowed lateness)."""


@dataclass(frozen=True, slots=True)
class OperatorContext:
    """What an operator gets at ``setup``: its identity and its state backend."""

    uid: str
    key_groups: frozenset[int]
    state_backend: KeyedStateBackend
    storage: CheckpointStorage


@dataclass(frozen=True, slots=True)
class StateInitializationContext:
    """Restored state for this operator (empty lists when starting fresh)."""

    is_restored: bool
    keyed: Sequence[KeyGroupStateHandle]
    operator: Sequence[OperatorStateHandle]


@dataclass(slots=True)
class OperatorSnapshot:
    """The result of an operator's synchronous snapshot phase.

    ``keyed`` is run asynchronously (persisted off the processing path); ``operator`` state is
    small and captured synchronously. The task acknowledges the checkpoint with both.
    """

    keyed: AsyncSnapshot | None
    operator: Sequence[OperatorStateHandle]


class Operator(abc.ABC):
    """A step of the job graph. Subclasses override what they need."""

    def __init__(self, uid: str) -> None:
        self.uid = uid

    @property
    def is_stateful(self) -> bool:
        return False

    def setup(self, ctx: OperatorContext) -> None:  # noqa: B027
        """Called once before anything else."""

    def initialize_state(self, ctx: StateInitializationContext) -> None:  # noqa: B027
        """Restore state (or start empty). Called after setup, before open."""

    def open(self) -> None:  # noqa: B027
        """Start processing."""

    @abc.abstractmethod
    def process_batch(
        self, batch: RecordBatch | AggregateBatch | RawLinesBatch, output: Output
    ) -> None: ...

    def process_watermark(self, watermark: Watermark, output: Output) -> None:
        """Default: forward it."""
        output.emit_watermark(watermark)

    def prepare_snapshot_pre_barrier(self, checkpoint_id: int, output: Output) -> None:  # noqa: B027
        """Last chance to emit before the barrier is forwarded (e.g. flush a buffer)."""

    def snapshot_state(self, barrier: CheckpointBarrier) -> OperatorSnapshot:
        """Synchronous part of checkpoint ``barrier.checkpoint_id``; keep it short."""
        return OperatorSnapshot(keyed=None, operator=())

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:  # noqa: B027
        """Checkpoint ``checkpoint_id`` is complete: side effects may be committed now."""

    def notify_checkpoint_aborted(self, checkpoint_id: int) -> None:  # noqa: B027
        """Checkpoint ``checkpoint_id`` failed; drop anything kept for it."""

    def on_key_groups_revoked(self, key_groups: frozenset[int]) -> None:  # noqa: B027
        """These key groups moved to another worker; stop using their state."""

    def on_key_groups_assigned(  # noqa: B027
        self, key_groups: frozenset[int], ctx: StateInitializationContext
    ) -> None:
        """New key groups arrived (rebalance), with their restored state, if any."""

    def finish(self, output: Output) -> None:  # noqa: B027
        """End of input: emit what is final (bounded runs, stop-with-savepoint drains)."""

    def close(self) -> None:  # noqa: B027
        """Release resources."""
