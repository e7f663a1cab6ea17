"""``CheckpointCoordinator``: triggers checkpoints, collects acknowledgements, completes them.

One coordinator per job (per worker). Checkpoint *n*:

1. **Trigger** (on the interval, read from a :class:`~metricsflow.time.base.Clock`, or by hand):
   pre-flight checks (max concurrent, min pause, every task running), a new monotonic id (it
   continues after a restore), a :class:`PendingCheckpoint` in ``pending_checkpoints``; every
   source task records its position and injects barrier *n* into its stream.
2. **Acknowledge**: every task acknowledges with the state handles of its snapshot once its
   asynchronous part is persisted; or declines (the checkpoint is aborted).
3. **Complete**: when every task acknowledged, ``chk-<n>/_metadata`` is written atomically
   (a savepoint's ``_metadata`` goes to the root of its own directory), shared files are
   registered, older pending checkpoints are subsumed, checkpoints beyond ``num_retained`` are
   discarded (their directory, and shared files no retained checkpoint references), and
   ``notify_checkpoint_complete`` reaches every task: only then may side effects (offset
   commits) happen.
4. **Failure**: a timeout aborts with ``CHECKPOINT_EXPIRED``; a decline with its reason. Failures
   that count (not subsumption or pre-flight) increase a consecutive-failure counter; more
   than ``tolerable_failed_checkpoints`` fails the job. A completed checkpoint resets it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from metricsflow.checkpointing.base import CheckpointFailureReason
from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.metadata import (
    METADATA_FILE,
    CheckpointMetadata,
    KeyedStateEntry,
    checkpoint_dir,
    encode_metadata,
    metadata_path,
    shared_checkpoint_dir,
)
from metricsflow.checkpointing.protocol import (
    CheckpointBarrier,
    CheckpointOptions,
    CheckpointType,
    TaskAcknowledgement,
)
from metricsflow.checkpointing.retention import PartitionRetention, RetentionGuard
from metricsflow.checkpointing.shared_registry import SharedStateRegistry, delete_shared_files
from metricsflow.errors import CheckpointError
from metricsflow.state.handles import CheckpointStorage
from metricsflow.time.base import Clock, SystemClock

logger = logging.getLogger(__name__)

#: Failures that are not counted against ``tolerable_failed_checkpoints`` (as in Flink).
UNCOUNTED_FAILURES = frozenset(
    {
        CheckpointFailureReason.CHECKPOINT_SUBSUMED,
        CheckpointFailureReason.TOO_MANY_CONCURRENT_CHECKPOINTS,
        CheckpointFailureReason.MINIMUM_TIME_BETWEEN_CHECKPOINTS,
        CheckpointFailureReason.NOT_ALL_REQUIRED_TASKS_RUNNING,
        CheckpointFailureReason.CHECKPOINT_COORDINATOR_SHUTDOWN,
        CheckpointFailureReason.JOB_FAILOVER_REGION,
    }
)

#: Aborted savepoints whose storage is remembered for the cleanup of late acknowledgements.
ABORTED_SAVEPOINTS_REMEMBERED = 16


class CheckpointFailedError(CheckpointError):
    """A checkpoint or savepoint was aborted; ``reason`` says why."""

    def __init__(self, checkpoint_id: int, reason: CheckpointFailureReason, detail: str = ""):
        suffix = f": {detail}" if detail else ""
        super().__init__(
            f"checkpoint {checkpoint_id} failed ({reason.name}: {reason.value}){suffix}",
            retriable=reason is not CheckpointFailureReason.CORRUPT_CHECKPOINT,
        )
        self.checkpoint_id = checkpoint_id
        self.reason = reason


class CheckpointParticipants(Protocol):
    """The job's side of the coordinator: its tasks."""

    def tasks_to_ack(self) -> frozenset[str] | None:
        """Ids of every task that must acknowledge; ``None`` if not all are running."""

    def trigger_sources(self, barrier: CheckpointBarrier) -> None: ...

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None: ...

    def notify_checkpoint_aborted(self, checkpoint_id: int) -> None: ...

    def fail_job(self, error: BaseException) -> None: ...


@dataclass(slots=True)
class PendingCheckpoint:
    checkpoint_id: int
    options: CheckpointOptions
    trigger_clock_ns: int
    trigger_timestamp_ns: int
    tasks_to_ack: frozenset[str]
    storage: CheckpointStorage
    location: str
    future: asyncio.Future[CompletedCheckpoint]
    acks: dict[str, TaskAcknowledgement] = field(default_factory=dict)
    finalizing: bool = False

    @property
    def is_savepoint(self) -> bool:
        return self.options.checkpoint_type is CheckpointType.SAVEPOINT

    @property
    def fully_acknowledged(self) -> bool:
        return self.tasks_to_ack <= self.acks.keys()


@dataclass(frozen=True, slots=True)
class CompletedCheckpoint:
    """A completed checkpoint or savepoint: its metadata and where it lives."""

    metadata: CheckpointMetadata
    storage: CheckpointStorage
    location: str
    duration_ns: int = 0
    sync_duration_ns: int = 0
    async_duration_ns: int = 0
    alignment_duration_ns: int = 0

    @property
    def checkpoint_id(self) -> int:
        return self.metadata.checkpoint_id

    @property
    def is_savepoint(self) -> bool:
        return self.metadata.is_savepoint

    @property
    def state_size(self) -> int:
        return self.metadata.state_size


@dataclass(frozen=True, slots=True)
class CheckpointStats:
    """One line of the checkpoint history (for the REST API and metrics)."""

    checkpoint_id: int
    status: str  # "completed" | "failed"
    is_savepoint: bool
    trigger_timestamp_ns: int
    duration_ns: int
    state_size: int = 0
    written_bytes: int = 0
    sync_duration_ns: int = 0
    async_duration_ns: int = 0
    alignment_duration_ns: int = 0
    failure_reason: str | None = None


class CheckpointCoordinator:
    """Coordinates the checkpoints of one job (see the module docstring)."""

    def __init__(
        self,
        config: CheckpointConfig,
        storage: CheckpointStorage,
        participants: CheckpointParticipants,
        *,
        clock: Clock | None = None,
        shared_registry: SharedStateRegistry | None = None,
        start_checkpoint_id: int = 1,
        properties: Mapping[str, str] | None = None,
        history_size: int = 100,
        tick_s: float | None = None,
        retention_guard: RetentionGuard | None = None,
    ) -> None:
        self.config = config
        self.storage = storage
        self.participants = participants
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.shared_registry = shared_registry or SharedStateRegistry()
        self.properties = dict(properties or {})
        self.retention_guard = retention_guard
        self.retention = PartitionRetention(retention_guard)
        self.pending_checkpoints: dict[int, PendingCheckpoint] = {}
        self.completed_checkpoints: list[CompletedCheckpoint] = []
        self.history: collections.deque[CheckpointStats] = collections.deque(maxlen=history_size)
        self.consecutive_failures = 0
        self._next_id = start_checkpoint_id
        self._last_completion_clock_ns: int | None = None
        self._next_periodic_ns: int | None = None
        self._shutdown = False
        self._periodic_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()
        #: storages of recently aborted savepoints, where their late acknowledgements' files are
        self._aborted_savepoints: dict[int, CheckpointStorage] = {}
        interval_s = config.interval_ms / 1000
        self._tick_s = tick_s if tick_s is not None else min(max(interval_s / 4, 0.001), 0.05)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def next_checkpoint_id(self) -> int:
        return self._next_id

    def continue_checkpoint_ids_after(self, checkpoint_id: int) -> None:
        """Number the next checkpoint after ``checkpoint_id`` (the newest id found in storage or
        in the restored state), so that ids stay unique and monotonic across restores; the
        counter never goes backwards (Flink's ``CheckpointIDCounter.setCount``)."""
        self._next_id = max(self._next_id, checkpoint_id + 1)

    def add_restored_checkpoint(self, completed: CompletedCheckpoint) -> None:
        """Adopt a checkpoint of this storage found at start (recovery): it is retained and
        its shared files registered, so that retention and refcounts continue correctly."""
        if completed.is_savepoint:
            return
        self.shared_registry.register(completed.checkpoint_id, completed.metadata.shared_handles())
        self.completed_checkpoints.append(completed)
        self.completed_checkpoints.sort(key=lambda c: c.checkpoint_id)
        self.continue_checkpoint_ids_after(completed.checkpoint_id)
        self._trim_retained()

    def start(self) -> None:
        """Start periodic triggering (a no-op when ``interval_ms`` is 0)."""
        if self.config.interval_ms > 0 and self._periodic_task is None:
            self._next_periodic_ns = self.clock.now_ns() + self.config.interval_ns
            self._periodic_task = asyncio.create_task(self._periodic(), name="checkpoint-timer")

    async def stop_triggering(self) -> None:
        """No new checkpoints from now on (pending ones may still complete)."""
        self._shutdown = True
        if self._periodic_task is not None:
            self._periodic_task.cancel()
            await asyncio.gather(self._periodic_task, return_exceptions=True)
            self._periodic_task = None

    async def shutdown(self) -> None:
        """Stop triggering; abort every pending checkpoint (``CHECKPOINT_COORDINATOR_SHUTDOWN``)."""
        await self.stop_triggering()
        if self._background:  # let checkpoints whose metadata is being written complete
            await asyncio.gather(*self._background, return_exceptions=True)
        for pending in list(self.pending_checkpoints.values()):
            self._abort(pending, CheckpointFailureReason.CHECKPOINT_COORDINATOR_SHUTDOWN)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    @property
    def pinned(self) -> dict[int, tuple[CompletedCheckpoint, frozenset[int]]]:
        """Checkpoints kept past ``num_retained`` as the newest holder of handed-over key
        groups, by id, with those key groups."""
        return self.retention.pinned

    def latest_completed_checkpoint(self) -> CompletedCheckpoint | None:
        return self.completed_checkpoints[-1] if self.completed_checkpoints else None

    # -- triggering --------------------------------------------------------------------------
    async def trigger_checkpoint(self) -> CompletedCheckpoint:
        """Trigger a checkpoint now (min pause and concurrency limits apply) and await it."""
        return await asyncio.shield(self._trigger(CheckpointType.CHECKPOINT, self.storage, ""))

    async def trigger_savepoint(
        self, storage: CheckpointStorage, location: str
    ) -> CompletedCheckpoint:
        """Trigger a savepoint into ``storage`` (its own directory) and await it."""
        return await asyncio.shield(self._trigger(CheckpointType.SAVEPOINT, storage, location))

    def _trigger(
        self, kind: CheckpointType, storage: CheckpointStorage, location: str
    ) -> asyncio.Future[CompletedCheckpoint]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CompletedCheckpoint] = loop.create_future()
        now = self.clock.now_ns()
        reason = self._preflight(kind, now)
        if reason is not None:
            future.set_exception(CheckpointFailedError(self._next_id, reason, "not triggered"))
            return future
        tasks = self.participants.tasks_to_ack()
        if not tasks:
            reason = CheckpointFailureReason.NOT_ALL_REQUIRED_TASKS_RUNNING
            future.set_exception(CheckpointFailedError(self._next_id, reason, "not triggered"))
            return future
        checkpoint_id = self._next_id
        self._next_id += 1
        options = CheckpointOptions(checkpoint_type=kind, mode=self.config.mode)
        pending = PendingCheckpoint(
            checkpoint_id=checkpoint_id,
            options=options,
            trigger_clock_ns=now,
            trigger_timestamp_ns=time.time_ns(),
            tasks_to_ack=tasks,
            storage=storage,
            location=location or checkpoint_dir(checkpoint_id),
            future=future,
        )
        self.pending_checkpoints[checkpoint_id] = pending
        logger.info(
            "checkpoint triggered checkpoint_id=%d type=%s tasks=%d",
            checkpoint_id,
            kind.value,
            len(tasks),
        )
        self.participants.trigger_sources(
            CheckpointBarrier(checkpoint_id, pending.trigger_timestamp_ns, options)
        )
        return future

    def _preflight(self, kind: CheckpointType, now: int) -> CheckpointFailureReason | None:
        if self._shutdown:
            return CheckpointFailureReason.CHECKPOINT_COORDINATOR_SHUTDOWN
        if kind is CheckpointType.SAVEPOINT:
            return None
        in_flight = sum(1 for p in self.pending_checkpoints.values() if not p.is_savepoint)
        if in_flight >= self.config.max_concurrent_checkpoints:
            return CheckpointFailureReason.TOO_MANY_CONCURRENT_CHECKPOINTS
        last = self._last_completion_clock_ns
        if last is not None and now - last < self.config.min_pause_ns:
            return CheckpointFailureReason.MINIMUM_TIME_BETWEEN_CHECKPOINTS
        return None

    async def _periodic(self) -> None:
        while not self._shutdown:
            now = self.clock.now_ns()
            self.expire_overdue(now)
            due = self._next_periodic_ns
            if (
                due is not None
                and now >= due
                and self._preflight(CheckpointType.CHECKPOINT, now) is None
            ):
                self._next_periodic_ns = now + self.config.interval_ns
                future = self._trigger(CheckpointType.CHECKPOINT, self.storage, "")
                future.add_done_callback(_consume)
            await asyncio.sleep(self._tick_s)

    def expire_overdue(self, now_ns: int | None = None) -> None:
        """Abort pending checkpoints older than the timeout (``CHECKPOINT_EXPIRED``)."""
        now = self.clock.now_ns() if now_ns is None else now_ns
        for pending in list(self.pending_checkpoints.values()):
            if not pending.finalizing and now - pending.trigger_clock_ns > self.config.timeout_ns:
                self._abort(pending, CheckpointFailureReason.CHECKPOINT_EXPIRED)

    # -- acknowledgements --------------------------------------------------------------------
    def acknowledge_checkpoint(
        self, task_id: str, checkpoint_id: int, ack: TaskAcknowledgement
    ) -> None:
        pending = self.pending_checkpoints.get(checkpoint_id)
        if pending is None:
            logger.debug(
                "late acknowledgement discarded task=%s checkpoint_id=%d", task_id, checkpoint_id
            )
            if all(c.checkpoint_id != checkpoint_id for c in self.completed_checkpoints):
                # the checkpoint was aborted before this task's files were written: drop them
                # (its own files: shared ones it only references belong to older checkpoints)
                own = shared_checkpoint_dir(checkpoint_id) + "/"
                paths = [h.path for _, kg_handle in ack.keyed for h in kg_handle.private] + [
                    h.path
                    for _, kg_handle in ack.keyed
                    for h in kg_handle.shared
                    if h.path.startswith(own)
                ]
                storage = self._aborted_savepoints.get(checkpoint_id, self.storage)
                self._spawn(self._cleanup(storage, paths, checkpoint_id))
            return
        if task_id not in pending.tasks_to_ack:
            logger.warning(
                "acknowledgement from unexpected task task=%s checkpoint_id=%d",
                task_id,
                checkpoint_id,
            )
            return
        pending.acks[task_id] = ack
        if pending.fully_acknowledged and not pending.finalizing:
            pending.finalizing = True
            self._spawn(self._complete(pending))

    def decline_checkpoint(
        self,
        task_id: str,
        checkpoint_id: int,
        reason: CheckpointFailureReason,
        cause: BaseException | None = None,
    ) -> None:
        pending = self.pending_checkpoints.get(checkpoint_id)
        if pending is None:
            return
        detail = f"task={task_id}" + (f" cause={cause!r}" if cause is not None else "")
        self._abort(pending, reason, detail)

    def abort_pending_checkpoints(self, reason: CheckpointFailureReason) -> None:
        """E.g. the set of key groups changed: in-flight checkpoints can no longer complete."""
        for pending in list(self.pending_checkpoints.values()):
            self._abort(pending, reason)

    def storage_for(self, checkpoint_id: int) -> CheckpointStorage:
        pending = self.pending_checkpoints.get(checkpoint_id)
        return pending.storage if pending is not None else self.storage

    def incremental_for(self, checkpoint_id: int) -> bool:
        pending = self.pending_checkpoints.get(checkpoint_id)
        if pending is not None and pending.is_savepoint:
            return False
        return self.config.incremental

    # -- completion --------------------------------------------------------------------------
    async def _complete(self, pending: PendingCheckpoint) -> None:
        acks = list(pending.acks.values())
        keyed = tuple(KeyedStateEntry(uid, handle) for ack in acks for uid, handle in ack.keyed)
        metadata = CheckpointMetadata(
            checkpoint_id=pending.checkpoint_id,
            checkpoint_type=pending.options.checkpoint_type,
            mode=pending.options.mode,
            trigger_timestamp_ns=pending.trigger_timestamp_ns,
            completion_timestamp_ns=time.time_ns(),
            key_groups=frozenset(kg for ack in acks for kg in ack.key_groups),
            keyed=keyed,
            operator=tuple(h for ack in acks for h in ack.operator),
            properties=self.properties,
        )
        if pending.is_savepoint and metadata.shared_handles():
            self._abort(
                pending,
                CheckpointFailureReason.FINALIZE_CHECKPOINT_FAILURE,
                "a savepoint must not reference shared files (backend ignored incremental=False)",
            )
            return
        path = METADATA_FILE if pending.is_savepoint else metadata_path(pending.checkpoint_id)
        try:
            await asyncio.to_thread(pending.storage.write_atomic, path, encode_metadata(metadata))
        except Exception as exc:
            logger.exception(
                "checkpoint metadata write failed checkpoint_id=%d", pending.checkpoint_id
            )
            self._abort(pending, CheckpointFailureReason.FINALIZE_CHECKPOINT_FAILURE, repr(exc))
            return
        if self.pending_checkpoints.get(pending.checkpoint_id) is not pending:
            # aborted while the metadata was written (e.g. key groups revoked): the abort's
            # cleanup may have run before the write ended; delete again, or it looks complete
            await self._cleanup(pending.storage, _files_of(pending), pending.checkpoint_id)
            return
        del self.pending_checkpoints[pending.checkpoint_id]
        now = self.clock.now_ns()
        completed = CompletedCheckpoint(
            metadata=metadata,
            storage=pending.storage,
            location=pending.location,
            duration_ns=max(0, now - pending.trigger_clock_ns),
            sync_duration_ns=max((a.sync_duration_ns for a in acks), default=0),
            async_duration_ns=max((a.async_duration_ns for a in acks), default=0),
            alignment_duration_ns=max((a.alignment_duration_ns for a in acks), default=0),
        )
        if not pending.is_savepoint:
            self.shared_registry.register(pending.checkpoint_id, metadata.shared_handles())
            self.completed_checkpoints.append(completed)
            self.consecutive_failures = 0
            self._last_completion_clock_ns = now
            for older in list(self.pending_checkpoints.values()):
                if older.checkpoint_id < pending.checkpoint_id and not older.is_savepoint:
                    self._abort(older, CheckpointFailureReason.CHECKPOINT_SUBSUMED)
            self._trim_retained()
        self.history.append(
            CheckpointStats(
                checkpoint_id=completed.checkpoint_id,
                status="completed",
                is_savepoint=completed.is_savepoint,
                trigger_timestamp_ns=pending.trigger_timestamp_ns,
                duration_ns=completed.duration_ns,
                state_size=completed.state_size,
                written_bytes=metadata.written_bytes,
                sync_duration_ns=completed.sync_duration_ns,
                async_duration_ns=completed.async_duration_ns,
                alignment_duration_ns=completed.alignment_duration_ns,
            )
        )
        logger.info(
            "checkpoint completed checkpoint_id=%d type=%s location=%s size=%d written=%d "
            "duration_ms=%.1f sync_ms=%.2f async_ms=%.1f alignment_ms=%.2f",
            completed.checkpoint_id,
            pending.options.checkpoint_type.value,
            completed.location,
            completed.state_size,
            metadata.written_bytes,
            completed.duration_ns / 1e6,
            completed.sync_duration_ns / 1e6,
            completed.async_duration_ns / 1e6,
            completed.alignment_duration_ns / 1e6,
        )
        self.participants.notify_checkpoint_complete(pending.checkpoint_id)
        if not pending.future.done():
            pending.future.set_result(completed)

    def set_property(self, name: str, value: str) -> None:
        """A property recorded in the metadata of checkpoints completed from now on."""
        self.properties[name] = value

    def _trim_retained(self) -> None:
        """Discard checkpoints beyond ``num_retained``, except the newest holder of a key
        group handed over to another worker (``checkpointing/retention.py``)."""
        while len(self.completed_checkpoints) > self.config.num_retained:
            old = self.completed_checkpoints.pop(0)
            if not self.retention.pin_if_sole_holder(old, self.completed_checkpoints):
                self._spawn(self._discard(old))
        release = self.retention.release(self.completed_checkpoints, self._discard)
        if release is not None:
            self._spawn(release)

    async def _discard(self, old: CompletedCheckpoint) -> None:
        unused = self.shared_registry.release(old.checkpoint_id)

        def delete() -> None:
            self.storage.delete(checkpoint_dir(old.checkpoint_id))
            delete_shared_files(self.storage, unused)

        try:
            await asyncio.to_thread(delete)
            logger.info(
                "checkpoint discarded checkpoint_id=%d shared_files_deleted=%d",
                old.checkpoint_id,
                len(unused),
            )
        except Exception:
            logger.exception("discarding checkpoint failed checkpoint_id=%d", old.checkpoint_id)

    def discard_all_retained(self) -> None:
        """Job cancelled without ``retain_on_cancellation``: delete every retained checkpoint."""
        while self.completed_checkpoints:
            self._spawn(self._discard(self.completed_checkpoints.pop(0)))

    # -- failures ----------------------------------------------------------------------------
    def _abort(
        self, pending: PendingCheckpoint, reason: CheckpointFailureReason, detail: str = ""
    ) -> None:
        if self.pending_checkpoints.get(pending.checkpoint_id) is not pending:
            return
        del self.pending_checkpoints[pending.checkpoint_id]
        now = self.clock.now_ns()
        log = logger.debug if reason in UNCOUNTED_FAILURES else logger.warning
        log(
            "checkpoint aborted checkpoint_id=%d reason=%s detail=%s",
            pending.checkpoint_id,
            reason.name,
            detail or "-",
        )
        self.history.append(
            CheckpointStats(
                checkpoint_id=pending.checkpoint_id,
                status="failed",
                is_savepoint=pending.is_savepoint,
                trigger_timestamp_ns=pending.trigger_timestamp_ns,
                duration_ns=max(0, now - pending.trigger_clock_ns),
                failure_reason=reason.name,
            )
        )
        self.participants.notify_checkpoint_aborted(pending.checkpoint_id)
        if not pending.future.done():
            pending.future.set_exception(
                CheckpointFailedError(pending.checkpoint_id, reason, detail)
            )
        self._spawn(self._cleanup(pending.storage, _files_of(pending), pending.checkpoint_id))
        if pending.is_savepoint:
            self._aborted_savepoints[pending.checkpoint_id] = pending.storage
            if len(self._aborted_savepoints) > ABORTED_SAVEPOINTS_REMEMBERED:
                del self._aborted_savepoints[min(self._aborted_savepoints)]
        if reason in UNCOUNTED_FAILURES or pending.is_savepoint:
            return
        self.consecutive_failures += 1
        tolerable = self.config.tolerable_failed_checkpoints
        if tolerable >= 0 and self.consecutive_failures > tolerable:
            self.participants.fail_job(
                CheckpointError(
                    f"exceeded tolerable_failed_checkpoints={tolerable}: "
                    f"{self.consecutive_failures} consecutive checkpoint failures, last "
                    f"checkpoint_id={pending.checkpoint_id} reason={reason.name}"
                )
            )

    async def _cleanup(
        self, storage: CheckpointStorage, paths: list[str], checkpoint_id: int
    ) -> None:
        def delete() -> None:
            for path in paths:
                storage.delete(path)

        try:
            await asyncio.to_thread(delete)
        except Exception:
            logger.warning("cleanup of failed checkpoint failed checkpoint_id=%d", checkpoint_id)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _files_of(pending: PendingCheckpoint) -> list[str]:
    """What an aborted checkpoint may have written: its directory (and a savepoint's
    ``_metadata`` at the root of its own storage)."""
    if pending.is_savepoint:
        return [checkpoint_dir(pending.checkpoint_id), METADATA_FILE]
    return [checkpoint_dir(pending.checkpoint_id), shared_checkpoint_dir(pending.checkpoint_id)]


def _consume(future: asyncio.Future[CompletedCheckpoint]) -> None:
    if not future.cancelled():
        future.exception()


def max_checkpoint_id_in(storage: CheckpointStorage) -> int:
    """The largest ``chk-<n>`` directory present (complete or not): ids continue after it."""
    best = 0
    for name in storage.list_dir(""):
        if name.startswith("chk-") and name[4:].isdigit():
            best = max(best, int(name[4:]))
    return best
