"""Doubles for the unit tests of ``CheckpointCoordinator`` (test_coordinator*.py).

No job, no tasks: :class:`Participants` records what the coordinator asks of the tasks
(barriers, notifications, job failures) and a test plays the tasks' part (acknowledge,
decline). Time is a ``ManualClock``; the periodic timer is waited on through the clock
(:class:`WatchedClock`: the coordinator reads it on every tick), never with sleep-then-assert.
State files and ``_metadata`` go to a real ``FsCheckpointStorage`` in a temporary directory,
wrapped (:class:`RecordingStorage`) to record what was written and deleted and, for some
tests, to hold or fail the metadata write.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.coordinator import (
    CheckpointCoordinator,
    CheckpointFailedError,
    CompletedCheckpoint,
)
from metricsflow.checkpointing.metadata import (
    METADATA_FILE,
    checkpoint_dir,
    metadata_path,
)
from metricsflow.checkpointing.protocol import (
    CheckpointBarrier,
    TaskAcknowledgement,
)
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.state.handles import (
    CheckpointStorage,
    KeyGroupStateHandle,
    OperatorStateHandle,
    StreamStateHandle,
)
from metricsflow.time.base import ManualClock

MS = 1_000_000
WAIT_S = 5.0  # bound on an awaited event that must happen; never a measured delay
TASKS = frozenset({"source-0", "source-1", "sink"})
MANUAL = CheckpointConfig(interval_ms=0)


# -- doubles ---------------------------------------------------------------------------------


class Participants:
    """The job's side: records barriers, notifications and job failures, with awaitables."""

    def __init__(self, tasks: frozenset[str] | None = TASKS) -> None:
        self.tasks: frozenset[str] | None = tasks
        self.barriers: list[CheckpointBarrier] = []
        self.completed: list[int] = []
        self.aborted: list[int] = []
        self.failures: list[BaseException] = []
        self.metadata_seen_at_completion: list[bool] = []
        self.storage: CheckpointStorage | None = None
        self._changed = asyncio.Event()

    def tasks_to_ack(self) -> frozenset[str] | None:
        return self.tasks

    def trigger_sources(self, barrier: CheckpointBarrier) -> None:
        self.barriers.append(barrier)
        self._changed.set()

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        if self.storage is not None:
            durable = self.storage.exists(metadata_path(checkpoint_id))
            self.metadata_seen_at_completion.append(durable)
        self.completed.append(checkpoint_id)
        self._changed.set()

    def notify_checkpoint_aborted(self, checkpoint_id: int) -> None:
        self.aborted.append(checkpoint_id)
        self._changed.set()

    def fail_job(self, error: BaseException) -> None:
        self.failures.append(error)
        self._changed.set()

    async def barrier(self, count: int = 1) -> CheckpointBarrier:
        """Wait until ``count`` barriers were injected in all; return the last one."""
        await self.until(lambda: len(self.barriers) >= count)
        return self.barriers[count - 1]

    async def aborted_checkpoint(self, checkpoint_id: int) -> None:
        await self.until(lambda: checkpoint_id in self.aborted)

    async def until(self, condition: Callable[[], bool]) -> None:

        async def wait() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), WAIT_S)


class RecordingStorage(FsCheckpointStorage):
    """A real local storage that records metadata writes and deletes; it can hold the
    metadata write until released (``hold_metadata``) or make it fail (``fail_metadata``)."""

    def __init__(self, root: Path) -> None:
        super().__init__(str(root))
        self.atomic_writes: list[str] = []
        self.deleted: list[str] = []
        self.fail_metadata = False
        self.hold_metadata = False
        self.metadata_started = threading.Event()
        self.release_metadata = threading.Event()
        self._deletions: dict[str, threading.Event] = {}
        self._deletions_lock = threading.Lock()

    def deletion(self, relative_path: str) -> threading.Event:
        """Set once a ``delete`` of ``relative_path`` returned."""
        with self._deletions_lock:
            return self._deletions.setdefault(relative_path, threading.Event())

    def write_atomic(self, relative_path: str, data: bytes) -> None:
        if relative_path.rsplit("/", 1)[-1] != METADATA_FILE:  # a state file (write_file)
            super().write_atomic(relative_path, data)
            return
        self.metadata_started.set()
        if self.hold_metadata:
            assert self.release_metadata.wait(WAIT_S), "metadata write never released"
        if self.fail_metadata:
            raise OSError(f"disk full writing {relative_path}")
        super().write_atomic(relative_path, data)
        self.atomic_writes.append(relative_path)

    def delete(self, relative_path: str) -> None:
        self.deleted.append(relative_path)
        super().delete(relative_path)
        self.deletion(relative_path).set()


class WatchedClock(ManualClock):
    """A ManualClock that lets a test wait until the coordinator looked at it again."""

    def __init__(self, start_ns: int = 0) -> None:
        super().__init__(start_ns)
        self.reads = 0
        self._read = asyncio.Event()

    def now_ns(self) -> int:
        self.reads += 1
        self._read.set()
        return super().now_ns()

    async def ticks(self, count: int = 2) -> None:
        """Wait for ``count`` more readings: with two, the periodic timer finished at least
        one whole round at the current time (it reads the clock once per round)."""
        target = self.reads + count

        async def wait() -> None:
            while self.reads < target:
                self._read.clear()
                await self._read.wait()

        await asyncio.wait_for(wait(), WAIT_S)


def state_ack(
    storage: CheckpointStorage,
    checkpoint_id: int,
    task: str,
    key_group: int,
    *,
    shared: Sequence[StreamStateHandle] = (),
    sync_ns: int = 0,
    async_ns: int = 0,
    alignment_ns: int = 0,
) -> TaskAcknowledgement:
    """What a task acknowledges after persisting one private state file of ``key_group``."""
    private = storage.write_file(
        f"{checkpoint_dir(checkpoint_id)}/{task}/kg-{key_group}", f"{task}@{checkpoint_id}".encode()
    )
    handle = KeyGroupStateHandle(key_group, "heap", 1, private=(private,), shared=tuple(shared))
    return TaskAcknowledgement(
        keyed=((f"op-{task}", handle),),
        operator=(OperatorStateHandle(f"op-{task}", key_group, b"position"),),
        key_groups=frozenset({key_group}),
        sync_duration_ns=sync_ns,
        async_duration_ns=async_ns,
        alignment_duration_ns=alignment_ns,
    )


def acknowledge_all(
    coordinator: CheckpointCoordinator,
    checkpoint_id: int,
    tasks: Sequence[str] = sorted(TASKS),
    storage: CheckpointStorage | None = None,
) -> None:
    store = storage if storage is not None else coordinator.storage
    for index, task in enumerate(tasks):
        ack = state_ack(store, checkpoint_id, task, index)
        coordinator.acknowledge_checkpoint(task, checkpoint_id, ack)


class Setup:
    def __init__(
        self,
        tmp_path: Path,
        config: CheckpointConfig = MANUAL,
        *,
        tasks: frozenset[str] | None = TASKS,
        clock: ManualClock | None = None,
        **kwargs: object,
    ) -> None:
        self.storage = RecordingStorage(tmp_path / "checkpoints")
        self.participants = Participants(tasks)
        self.participants.storage = self.storage
        self.clock = clock if clock is not None else ManualClock(1_000 * MS)
        self.coordinator = CheckpointCoordinator(
            config,
            self.storage,
            self.participants,
            clock=self.clock,
            tick_s=0.001,
            **kwargs,  # type: ignore[arg-type]
        )

    def trigger(self) -> asyncio.Future[CompletedCheckpoint]:
        return asyncio.ensure_future(self.coordinator.trigger_checkpoint())

    async def triggered(self) -> tuple[asyncio.Future[CompletedCheckpoint], int]:
        """Trigger a checkpoint by hand; return its future and id once its barrier is out."""
        count = len(self.participants.barriers) + 1
        future = self.trigger()
        barrier = await self.participants.barrier(count)
        return future, barrier.checkpoint_id

    async def complete(self) -> CompletedCheckpoint:
        future, checkpoint_id = await self.triggered()
        acknowledge_all(self.coordinator, checkpoint_id)
        return await asyncio.wait_for(future, WAIT_S)


async def failure_of(future: asyncio.Future[CompletedCheckpoint]) -> CheckpointFailedError:
    with pytest.raises(CheckpointFailedError) as info:
        await asyncio.wait_for(future, WAIT_S)
    return info.value
