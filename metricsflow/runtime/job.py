"""``Job``: runs a :class:`~metricsflow.runtime.graph.JobGraph` on asyncio, with checkpoints.

::

    job = Job(graph, storage=FsCheckpointStorage(dir), state_backend_factory=factory,
              checkpoint_config=CheckpointConfig(interval_ms=1000), restore=plan)
    await job.run()                       # until every source ended, or a failure (raised)
    await job.trigger_savepoint(root)     # meanwhile, from another coroutine
    await job.assign_key_groups({7}, plan) / await job.revoke_key_groups({3})
    job.cancel()

Each key group's source task and the sink task are asyncio tasks on one event loop; the
asynchronous parts of snapshots run in a thread pool while processing goes on. Any task's
exception fails the whole job: every task is stopped, the thread pool drained (no snapshot
file is written after ``run`` returns), and the exception re-raised; restart it from the latest
completed checkpoint (restart.py). Checkpoint ids continue after the largest ``chk-<n>``
directory found in the storage, so a restarted job never reuses an id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from metricsflow.checkpointing.base import CheckpointFailureReason
from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.coordinator import (
    CheckpointCoordinator,
    CompletedCheckpoint,
    max_checkpoint_id_in,
)
from metricsflow.checkpointing.protocol import CheckpointBarrier
from metricsflow.checkpointing.recovery import CheckpointRecovery, KeyGroupRestore, RestorePlan
from metricsflow.checkpointing.retention import RetentionGuard
from metricsflow.checkpointing.savepoints import (
    StorageFactory,
    check_state_claimed,
    default_storage_factory,
    new_savepoint_location,
)
from metricsflow.checkpointing.shared_registry import remove_unreferenced_shared_files
from metricsflow.errors import CheckpointError, ConfigurationError
from metricsflow.runtime.base import Operator, OperatorContext, StateInitializationContext
from metricsflow.runtime.graph import InputGate, JobGraph, StateBackendFactory
from metricsflow.runtime.isolation import FailureIsolation
from metricsflow.runtime.managed_state import (
    ManagedStateBackend,
    NoKeyedStateBackend,
    SnapshotPolicy,
)
from metricsflow.runtime.task import (
    SINK_TASK_ID,
    OperatorChain,
    OperatorRestore,
    SinkTask,
    SourceTask,
    TaskEnvironment,
)
from metricsflow.state.base import KeyedStateBackend
from metricsflow.state.handles import CheckpointStorage
from metricsflow.time.base import Clock, SystemClock

logger = logging.getLogger(__name__)


class Job:
    """One running instance of a job graph (see the module docstring)."""

    def __init__(
        self,
        graph: JobGraph,
        *,
        storage: CheckpointStorage,
        state_backend_factory: StateBackendFactory,
        checkpoint_config: CheckpointConfig | None = None,
        clock: Clock | None = None,
        restore: RestorePlan | None = None,
        savepoint_root: str | None = None,
        savepoint_storage_factory: StorageFactory = default_storage_factory,
        async_threads: int = 2,
        processing_time_interval_ms: int = 200,
        retention_guard: RetentionGuard | None = None,
        checkpoint_properties: Mapping[str, str] | None = None,
        isolation: FailureIsolation | None = None,
    ) -> None:
        self.graph = graph
        self.storage = storage
        self.config = checkpoint_config or CheckpointConfig()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.restore_plan = restore or RestorePlan()
        self.savepoint_root = savepoint_root
        self._savepoint_storage_factory = savepoint_storage_factory
        self._backend_factory = state_backend_factory
        self._async_threads = async_threads
        self._pt_interval_ns = processing_time_interval_ms * 1_000_000
        self.isolation = isolation
        """Failure isolation (runtime/isolation.py); ``None``: any failure fails the job."""
        self.sink: Operator = graph.sink_factory()
        self._sources: dict[int, SourceTask] = {}
        self._runners: dict[int, asyncio.Task[None]] = {}
        self._gate = InputGate()
        self._sink_task: SinkTask | None = None
        self._sink_ready = asyncio.Event()
        self._failure: asyncio.Future[BaseException] | None = None
        self._cancelled: asyncio.Event | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._env: TaskEnvironment | None = None
        self._running = False
        self.coordinator = CheckpointCoordinator(
            self.config,
            storage,
            self,
            clock=self.clock,
            start_checkpoint_id=1,
            properties={"job": graph.name, **(checkpoint_properties or {})},
            retention_guard=retention_guard,
        )

    # -- CheckpointParticipants --------------------------------------------------------------
    def tasks_to_ack(self) -> frozenset[str] | None:
        if not self._running or self._sink_task is None or not self._sources:
            return None
        return frozenset(t.task_id for t in self._sources.values()) | {SINK_TASK_ID}

    def trigger_sources(self, barrier: CheckpointBarrier) -> None:
        for task in self._sources.values():
            task.trigger_checkpoint(barrier)

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        for task in self._sources.values():
            task.notify_checkpoint_complete(checkpoint_id)
        if self._sink_task is not None:
            self._sink_task.notify_checkpoint_complete(checkpoint_id)

    def notify_checkpoint_aborted(self, checkpoint_id: int) -> None:
        for task in self._sources.values():
            task.notify_checkpoint_aborted(checkpoint_id)
        if self._sink_task is not None:
            self._sink_task.notify_checkpoint_aborted(checkpoint_id)

    def fail_job(self, error: BaseException) -> None:
        if self._failure is not None and not self._failure.done():
            logger.error("job failing job=%s error=%r", self.graph.name, error)
            self._failure.set_result(error)

    # -- public API ----------------------------------------------------------------------------
    @property
    def key_groups(self) -> frozenset[int]:
        return frozenset(self._sources)

    def source_task(self, key_group: int) -> SourceTask:
        return self._sources[key_group]

    async def wait_until_ready(self) -> None:
        """Return once ``run`` has set up the sink task: from then on the job takes key groups
        (:meth:`assign_key_groups`). Never returns if ``run`` fails before that point; wait
        for it together with the task that runs the job."""
        await self._sink_ready.wait()

    async def trigger_checkpoint(self) -> CompletedCheckpoint:
        return await self.coordinator.trigger_checkpoint()

    async def trigger_savepoint(self, root: str | None = None) -> CompletedCheckpoint:
        """Take a savepoint into a new directory under ``root`` (or ``savepoint_root``)."""
        target_root = root or self.savepoint_root
        if target_root is None:
            raise ConfigurationError("trigger_savepoint needs a root directory (savepoint_root)")
        location = new_savepoint_location(target_root, self.coordinator.next_checkpoint_id)
        storage = self._savepoint_storage_factory(location)
        return await self.coordinator.trigger_savepoint(storage, location)

    async def stop_with_savepoint(self, root: str | None = None) -> CompletedCheckpoint:
        savepoint = await self.trigger_savepoint(root)
        self.cancel()
        return savepoint

    def cancel(self) -> None:
        """Stop the job; ``run`` returns normally."""
        if self._cancelled is not None:
            self._cancelled.set()

    async def assign_key_groups(
        self, key_groups: Iterable[int], restore: RestorePlan | None = None
    ) -> None:
        """Start processing new key groups (rebalance), each restored from ``restore`` or
        from the newest valid completed checkpoint in this job's storage that holds it."""
        new = frozenset(key_groups) - self.key_groups
        if not new:
            return
        plan = restore or CheckpointRecovery(self.storage).plan(new)
        self._check_claimed(plan)
        self.coordinator.abort_pending_checkpoints(
            CheckpointFailureReason.NOT_ALL_REQUIRED_TASKS_RUNNING
        )
        for kg in sorted(new):
            self._start_key_group(kg, plan.get(kg))
        handles = [
            h
            for kg in new
            if (r := plan.get(kg))
            for h in r.metadata.operator_for(self.sink.uid, kg)
        ]
        self.sink.on_key_groups_assigned(
            new, StateInitializationContext(bool(handles), (), handles)
        )
        logger.info("key groups assigned job=%s key_groups=%s", self.graph.name, sorted(new))

    async def revoke_key_groups(self, key_groups: Iterable[int]) -> None:
        """Stop processing key groups; returns once their tasks stopped."""
        gone = frozenset(key_groups) & self.key_groups
        if not gone:
            return
        self.coordinator.abort_pending_checkpoints(
            CheckpointFailureReason.NOT_ALL_REQUIRED_TASKS_RUNNING
        )
        for kg in sorted(gone):
            await self._stop_key_group(kg)
        self.sink.on_key_groups_revoked(gone)
        logger.info("key groups revoked job=%s key_groups=%s", self.graph.name, sorted(gone))

    # -- running -------------------------------------------------------------------------------
    def _check_claimed(self, plan: RestorePlan) -> None:
        uids = self.graph.uids(self.sink.uid)
        for metadata, _storage in plan.sources():
            check_state_claimed(
                metadata, uids, allow_non_restored_state=plan.allow_non_restored_state
            )

    async def _adopt_own_checkpoints(self) -> None:
        """Every valid checkpoint an earlier process left in our own storage is managed again
        (retention by count and by partition, shared-file refcounts), whether or not we
        restore from it, so that it is deleted in time; then ``shared/`` files none of them
        references (a checkpoint cut short by a crash) are deleted."""
        valid = await asyncio.to_thread(CheckpointRecovery(self.storage).valid_checkpoints)
        for meta in valid:
            if not meta.is_savepoint:
                self.coordinator.add_restored_checkpoint(
                    CompletedCheckpoint(meta, self.storage, f"chk-{meta.checkpoint_id}")
                )
        referenced = self.coordinator.shared_registry.referenced_paths()
        try:
            await asyncio.to_thread(remove_unreferenced_shared_files, self.storage, referenced)
        except CheckpointError:
            logger.exception("removing unreferenced shared files failed job=%s", self.graph.name)

    def _make_backend(
        self, op: Operator, key_group: int, policy: SnapshotPolicy
    ) -> KeyedStateBackend:
        if not op.is_stateful:
            return NoKeyedStateBackend(op.uid)
        return ManagedStateBackend(
            self._backend_factory(op.uid, key_group), uid=op.uid, key_group=key_group, policy=policy
        )

    def _start_key_group(self, key_group: int, restore: KeyGroupRestore | None) -> None:
        assert self._env is not None
        assert self._sink_task is not None
        policy = SnapshotPolicy(self.coordinator.storage_for, self.coordinator.incremental_for)
        operators = list(self.graph.chain_factory(key_group))
        chain = OperatorChain(key_group, operators, self.graph.sink_taps)
        contexts = [
            OperatorContext(
                op.uid,
                frozenset({key_group}),
                self._make_backend(op, key_group, policy),
                self.storage,
            )
            for op in operators
        ]
        restores = [
            OperatorRestore()
            if restore is None
            else OperatorRestore(
                keyed=restore.metadata.keyed_for(op.uid, key_group),
                operator=restore.metadata.operator_for(op.uid, key_group),
                storage=restore.storage,
            )
            for op in operators
        ]
        position = None
        if restore is not None:
            handles = restore.metadata.operator_for(self.graph.source.uid, key_group)
            position = handles[0].data if handles else None
        chain.initialize(contexts, restores)
        channel = self._gate.add_channel(key_group, self.graph.channel_capacity)
        task = SourceTask(
            self._env,
            key_group,
            self.graph.source.uid,
            self.graph.source.create_reader(key_group),
            chain,
            channel.put,
            position,
        )
        self._sources[key_group] = task
        self._sink_task.add_input(key_group)
        self._runners[key_group] = asyncio.create_task(
            self._supervise(task.run(), f"source-{key_group}"), name=f"source-{key_group}"
        )

    async def _stop_key_group(self, key_group: int) -> None:
        runner = self._runners.pop(key_group, None)
        task = self._sources.pop(key_group, None)
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        if task is not None:
            await task.wait_async_parts()
            task.close()
        self._gate.remove_channel(key_group)
        if self._sink_task is not None:
            self._sink_task.remove_input(key_group)

    async def _supervise(self, coro: Coroutine[object, object, None], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            logger.error("task failed job=%s task=%s error=%r", self.graph.name, name, exc)
            self.fail_job(exc)

    async def run(self) -> None:
        """Run until every key group ended (bounded sources) or ``cancel()``; raise the first
        failure of any task."""
        loop = asyncio.get_running_loop()
        self._failure = loop.create_future()
        self._cancelled = asyncio.Event()
        self._pool = ThreadPoolExecutor(self._async_threads, thread_name_prefix="snapshot")
        self._check_claimed(self.restore_plan)
        self.coordinator.continue_checkpoint_ids_after(
            max(max_checkpoint_id_in(self.storage), self.restore_plan.max_checkpoint_id)
        )
        await self._adopt_own_checkpoints()
        self._env = TaskEnvironment(
            mode=self.config.mode,
            responder=self.coordinator,
            async_executor=self._pool,
            clock=self.clock,
            fail_job=self.fail_job,
            processing_time_interval_ns=self._pt_interval_ns,
            isolation=self.isolation,
        )
        sink_runner: asyncio.Task[None] | None = None
        try:
            self._setup_sink()
            assert self._sink_task is not None
            for kg in sorted(self.graph.key_groups):
                self._start_key_group(kg, self.restore_plan.get(kg))
            self._running = True
            sink_runner = asyncio.create_task(
                self._supervise(self._sink_task.run(), SINK_TASK_ID), name="sink"
            )
            self.coordinator.start()
            logger.info(
                "job running job=%s key_groups=%d restored=%d next_checkpoint_id=%d",
                self.graph.name,
                len(self._sources),
                len(self.restore_plan.key_groups),
                self.coordinator.next_checkpoint_id,
            )
            waiters: list[asyncio.Future[object]] = [
                asyncio.ensure_future(self._sink_task.done.wait()),
                asyncio.ensure_future(self._cancelled.wait()),
            ]
            failure: asyncio.Future[object] = self._failure  # type: ignore[assignment]
            await asyncio.wait([*waiters, failure], return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
        finally:
            await self._shutdown(sink_runner)
        if self._failure.done():
            raise self._failure.result()
        logger.info("job finished job=%s", self.graph.name)

    def _setup_sink(self) -> None:
        sink = self.sink
        key_groups = frozenset(self.graph.key_groups)
        backend: KeyedStateBackend = NoKeyedStateBackend(sink.uid)
        sink.setup(OperatorContext(sink.uid, key_groups, backend, self.storage))
        handles = [
            h
            for kg, r in self.restore_plan.key_groups.items()
            for h in r.metadata.operator_for(sink.uid, kg)
        ]
        sink.initialize_state(StateInitializationContext(bool(handles), (), handles))
        sink.open()
        assert self._env is not None
        self._sink_task = SinkTask(self._env, sink, self._gate)
        self._sink_ready.set()

    async def _shutdown(self, sink_runner: asyncio.Task[None] | None) -> None:
        self._running = False
        cancelled = self._cancelled is not None and self._cancelled.is_set()
        await self.coordinator.stop_triggering()
        runners = list(self._runners.values()) + ([sink_runner] if sink_runner else [])
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        for task in self._sources.values():
            await task.wait_async_parts()
        if self._sink_task is not None:
            await self._sink_task.wait_async_parts()
        if self._pool is not None:
            pool = self._pool
            await asyncio.to_thread(pool.shutdown, True)
        await self.coordinator.shutdown()
        for task in self._sources.values():
            try:
                task.close()
            except Exception:
                logger.exception("closing task failed task=%s", task.task_id)
        try:
            self.sink.close()
        except Exception:
            logger.exception("closing sink failed")
        if cancelled and not self.config.retain_on_cancellation:
            self.coordinator.discard_all_retained()
            await self.coordinator.shutdown()
