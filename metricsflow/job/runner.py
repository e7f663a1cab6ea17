"""Runs the downsampling job in one worker process: source, job, sink, rebalances.

Start order: the sink opens (its writer thread), the :class:`~metricsflow.runtime.job.Job`
starts with no key groups, then the Kafka consumer joins the group. Every assignment restores
the new key groups from the newest state anywhere in the cluster
(:class:`~metricsflow.job.recovery.ClusterRecovery`) and starts them; every revocation stops
them, then **fences** them in the sink (``InfluxDBSink.fence``): their queued writes are
dropped (the next owner replays them from the checkpoint), a write in flight is awaited
(bounded by the HTTP timeout), and nothing of them is sent afterwards, so that no late write
of this worker can land after the next owner's (docs/operations.md, "Hand-over").

**Restarts happen in-process** (Flink's restart strategies, ``metricsflow.runtime.restart``):
when the job fails (a task's exception, too many failed checkpoints, a sink that died), the
runner waits the strategy's delay, builds a new job and a new sink, and restores the key groups
it still owns from the newest checkpoints (``ClusterRecovery``), while the Kafka consumer stays
a member of the group. Exiting instead would make the group rebalance twice (leave, re-join):
with the eager protocol every worker would stop, flush and restore *all* its partitions, for a
failure that concerns one worker. Only when the strategy refuses (failures too frequent) does
``run`` raise and the process exit non-zero, for the supervisor (systemd, Kubernetes) to
restart it with its own back-off.

**A record no operator can process does not stop the job** (``runtime/isolation.py``): the
job's :class:`~metricsflow.runtime.isolation.FailureIsolation` (kept in
``<checkpoint_dir>/<worker_id>/failure-isolation.json``) turns such a failure into a
:class:`~metricsflow.runtime.isolation.RecordProcessingError`; the runner restarts at once,
without asking the restart strategy, and the replay isolates the record, dead-letters it to
``<topic>.dlq`` and skips it (``isolation_restarts``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.coordinator import CompletedCheckpoint
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.errors import ConfigurationError, MetricsflowError
from metricsflow.job.graph import SOURCE_UID, DownsamplingJobConfig, JobMetrics, build_graph
from metricsflow.job.lock import WorkerIdLock
from metricsflow.job.recovery import ClusterRecovery
from metricsflow.model.partition import partition_for
from metricsflow.runtime.isolation import FailureIsolation, RecordProcessingError
from metricsflow.runtime.job import Job
from metricsflow.runtime.records import split_window_key
from metricsflow.runtime.restart import (
    FailureRateRestartStrategy,
    FixedDelayRestartStrategy,
    NoRestartStrategy,
    RestartStrategy,
)
from metricsflow.sinks.corrections import CorrectionService
from metricsflow.sinks.deadletter import LatePointsFile
from metricsflow.sinks.influxdb import InfluxDBSink, InfluxDBSinkConfig
from metricsflow.sources.kafka import KafkaSource, KafkaSourceConfig
from metricsflow.state.config import StateBackendConfig
from metricsflow.windows.corrections import CorrectionMailbox
from metricsflow.windows.operator import TierWindowOperator

logger = logging.getLogger(__name__)


class JobStatus(enum.StrEnum):
    """The state of a worker's job, as the runner drives it (Flink's ``JobStatus``, with the
    states this runner has). A ``str`` enum: it is reported by name (``/health``, ``/jobs``).

    ``CREATED`` -> ``RUNNING`` -> ``FINISHED`` (bounded input ended) | ``STOPPED`` (stopped
    with a savepoint) | ``FAILED`` (the restart strategy gave up, or the runner was
    cancelled) | ``RESTARTING`` (waiting the strategy's delay) -> ``RUNNING`` again.
    ``FINISHED``, ``STOPPED`` and ``FAILED`` are terminal.
    """

    CREATED = "CREATED"
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"
    FINISHED = "FINISHED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        return not JOB_STATUS_TRANSITIONS[self]


#: Every allowed change of :class:`JobStatus`; anything else is a bug in the runner.
JOB_STATUS_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.CREATED: frozenset({JobStatus.RUNNING, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.FINISHED, JobStatus.STOPPED, JobStatus.FAILED, JobStatus.RESTARTING}
    ),
    JobStatus.RESTARTING: frozenset({JobStatus.RUNNING, JobStatus.FAILED}),
    JobStatus.FINISHED: frozenset(),
    JobStatus.STOPPED: frozenset(),
    JobStatus.FAILED: frozenset(),
}


class JobStatusTransitionError(MetricsflowError):
    """The runner tried a change of :class:`JobStatus` that the state machine does not allow."""

    def __init__(self, current: JobStatus, target: JobStatus) -> None:
        super().__init__(f"job status cannot go from {current.value} to {target.value}")
        self.current = current
        self.target = target


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    worker_id: str
    checkpoint_dir: Path
    savepoint_dir: Path
    late_dir: Path
    source: KafkaSourceConfig
    sink: InfluxDBSinkConfig
    job: DownsamplingJobConfig = field(default_factory=DownsamplingJobConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    state_backend: StateBackendConfig = field(default_factory=StateBackendConfig)
    from_savepoint: str | None = None
    allow_non_restored_state: bool = False
    allow_empty_start: bool = False
    """Start a partition with no checkpoint from nothing even if its group committed offsets."""
    restart_strategy: str = "failure-rate"
    """``failure-rate``, ``fixed-delay`` or ``none`` (fail the process at the first failure)."""
    restart_delay_s: float = 2.0
    restart_attempts: int = 3
    """``fixed-delay``: restarts in the life of the process."""
    restart_max_failures_per_interval: int = 3
    restart_failure_rate_interval_s: float = 300.0

    def build_restart_strategy(self) -> RestartStrategy:
        if self.restart_strategy == "failure-rate":
            return FailureRateRestartStrategy(
                self.restart_max_failures_per_interval,
                self.restart_failure_rate_interval_s,
                self.restart_delay_s,
            )
        if self.restart_strategy == "fixed-delay":
            return FixedDelayRestartStrategy(self.restart_attempts, self.restart_delay_s)
        if self.restart_strategy == "none":
            return NoRestartStrategy()
        raise ConfigurationError(
            f"unknown restart strategy {self.restart_strategy!r} (failure-rate, fixed-delay, none)"
        )


class DownsamplingRunner:
    """One worker's job (module docstring). ``await run()`` until stopped or failed."""

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.source = KafkaSource(SOURCE_UID, config.source)
        self.late = LatePointsFile(
            config.late_dir,
            scope=config.source.topic,
            max_bytes=config.sink.dead_letter_max_bytes,
            max_files=config.sink.dead_letter_max_files,
        )
        root = config.checkpoint_dir / config.worker_id
        self.lock = WorkerIdLock(root, config.worker_id)
        self.storage = FsCheckpointStorage(str(root))
        self.recovery = ClusterRecovery(
            config.checkpoint_dir,
            SOURCE_UID,
            own_root=root,
            savepoint=config.from_savepoint,
            allow_non_restored_state=config.allow_non_restored_state,
            allow_empty_start=config.allow_empty_start,
        )
        self.restart_strategy = config.build_restart_strategy()
        self.isolation = FailureIsolation(root / "failure-isolation.json")
        self.isolation_restarts = 0
        self.restarts = 0
        self.last_failure = ""
        self.sink = InfluxDBSink(config.sink)
        self.metrics = JobMetrics.for_tiers(config.job.tiers)
        self.mailbox = CorrectionMailbox()
        self.corrections = CorrectionService(
            config.sink, self.sink, self.mailbox, field_kinds=config.job.field_kinds
        )
        self.job = self._build_job()
        self.started_ns = time.time_ns()
        self._state = JobStatus.CREATED
        self._stopping = False
        self._job_running = False
        self._lock = asyncio.Lock()

    @property
    def state(self) -> JobStatus:
        return self._state

    def _transition_to(self, target: JobStatus) -> None:
        """Move the state machine to ``target`` (staying put is allowed)."""
        if target is self._state:
            return
        if target not in JOB_STATUS_TRANSITIONS[self._state]:
            raise JobStatusTransitionError(self._state, target)
        logger.info("job status %s -> %s", self._state.value, target.value)
        self._state = target

    def _build_job(self) -> Job:
        """A job around ``self.sink`` (a new one after a failure: the old one is closed)."""
        sink, corrections = self.sink, self.corrections
        self.source.admission = lambda: sink.has_capacity() and corrections.has_capacity()
        graph = build_graph(
            self.config.job,
            self.source,
            self.sink,
            on_late=self.late.write,
            on_correction=corrections.submit,
            corrections=self.mailbox,
            metrics=self.metrics,
        )
        backend = self.config.state_backend
        return Job(
            graph,
            storage=self.storage,
            state_backend_factory=lambda uid, kg: backend.build(f"{uid}-{kg}"),
            checkpoint_config=self.config.checkpoint,
            savepoint_root=str(self.config.savepoint_dir),
            retention_guard=self.recovery,
            checkpoint_properties=self.recovery.properties(()),
            isolation=self.isolation,
        )

    def _replace_job(self) -> None:
        old_stats = self.sink.stats
        self.corrections.close()
        self.sink = InfluxDBSink(self.config.sink)
        self.sink.stats = old_stats  # counters stay monotonic across restarts
        old_stats.blocked = False
        # requests of the failed job are dropped: the restored operators ask again
        old_correction_stats = self.corrections.stats
        self.mailbox = CorrectionMailbox()
        self.corrections = CorrectionService(
            self.config.sink, self.sink, self.mailbox, field_kinds=self.config.job.field_kinds
        )
        self.corrections.stats = old_correction_stats
        self.job = self._build_job()

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Run the job, restarting it in-process after failures (module docstring); return
        when it is stopped or cancelled, raise when the restart strategy gives up."""
        source_started = False
        job_task: asyncio.Task[None] | None = None
        try:
            while True:
                self.sink.open()
                self.corrections.open()
                job_task = asyncio.create_task(self.job.run(), name="job")
                ready = asyncio.ensure_future(self.job.wait_until_ready())
                await asyncio.wait([ready, job_task], return_when=asyncio.FIRST_COMPLETED)
                ready.cancel()
                self._job_running = not job_task.done()
                self._transition_to(JobStatus.RUNNING)
                try:
                    if not source_started and not job_task.done():
                        await self.source.start(self)
                        source_started = True
                    elif not job_task.done():
                        await self._assign_owned_key_groups()
                    await job_task
                    if self._state is JobStatus.RUNNING:
                        self._transition_to(JobStatus.FINISHED)
                    return
                except Exception as exc:
                    self._job_running = False
                    if not job_task.done():
                        self.job.cancel()
                        await asyncio.gather(job_task, return_exceptions=True)
                    if self._state is JobStatus.STOPPED:
                        raise  # stopped with a savepoint: nothing to restart
                    if isinstance(exc, RecordProcessingError) and not self._stopping:
                        # failure isolation: restore and replay at once, not counted
                        self.isolation_restarts += 1
                        self.last_failure = repr(exc)
                        self._transition_to(JobStatus.RESTARTING)
                        logger.warning(
                            "job failed on records, restarting to isolate them "
                            "isolation_restarts=%d error=%r",
                            self.isolation_restarts,
                            exc,
                        )
                        async with self._lock:
                            self._replace_job()
                        continue
                    if self._stopping or not self.restart_strategy.can_restart(time.monotonic()):
                        self._transition_to(JobStatus.FAILED)
                        logger.error(
                            "job failed, not restarting restarts=%d error=%r", self.restarts, exc
                        )
                        raise
                    self.restarts += 1
                    self.last_failure = repr(exc)
                    self._transition_to(JobStatus.RESTARTING)
                    delay = self.restart_strategy.delay_s
                    logger.warning(
                        "job failed, restarting in-process restart=%d delay_s=%.1f error=%r",
                        self.restarts,
                        delay,
                        exc,
                    )
                    await asyncio.sleep(delay)
                    async with self._lock:
                        self._replace_job()
        except BaseException:
            if not self._state.is_terminal:
                self._transition_to(JobStatus.FAILED)
            raise
        finally:
            self._stopping = True
            self._job_running = False
            if job_task is not None and not job_task.done():
                self.job.cancel()
                await asyncio.gather(job_task, return_exceptions=True)
            await self.source.stop()
            self.corrections.close()
            self.sink.close(flush=False)
            self.lock.release()

    async def _assign_owned_key_groups(self) -> None:
        """After a restart: restore what the consumer still owns from the newest state."""
        async with self._lock:
            owned = self.source.assigned
            if owned:
                await self._restore(owned)
            logger.info(
                "job restarted in-process key_groups=%s restarts=%d", sorted(owned), self.restarts
            )

    async def stop_with_savepoint(self) -> CompletedCheckpoint:
        """Take a savepoint, then stop the job (``run`` returns)."""
        savepoint = await self.job.stop_with_savepoint()
        self._transition_to(JobStatus.STOPPED)
        return savepoint

    def cancel(self) -> None:
        self.job.cancel()

    # ------------------------------------------------------------------ AssignmentListener
    async def on_assigned(self, key_groups: frozenset[int]) -> None:
        if self._stopping:
            return
        async with self._lock:
            if not self._job_running:
                return  # restarting: the new job takes source.assigned when it starts
            try:
                self.sink.unfence(key_groups)
                await self._restore(key_groups)
            except Exception as exc:  # aiokafka would only log it: fail the job instead
                logger.exception("assigning key groups failed key_groups=%s", sorted(key_groups))
                self.job.fail_job(exc)

    async def on_revoked(self, key_groups: frozenset[int]) -> None:
        if self._stopping:
            return
        async with self._lock:
            if not self._job_running:
                return  # restarting: nothing runs, nothing to hand over
            await self.job.revoke_key_groups(key_groups)
            self._record_generations()
            self.mailbox.drop_key_groups(key_groups)
            # A barrier in the sink: only after it returns does aiokafka re-join the group, and
            # the next owner is assigned only when every member re-joined.
            await asyncio.to_thread(self.sink.fence, key_groups)

    async def _restore(self, key_groups: frozenset[int]) -> None:
        """Restore and start ``key_groups`` from the newest state in the cluster (refusing an
        empty start of a partition that was checkpointed once, ``job/recovery.py``)."""
        committed = await self.source.committed_offsets(key_groups)
        plan = await asyncio.to_thread(self.recovery.plan, key_groups, committed)
        await self.job.assign_key_groups(key_groups, plan)
        self._record_generations()

    def _record_generations(self) -> None:
        """Checkpoints record the restore generation of every key group they hold."""
        for name, value in self.recovery.properties(self.job.key_groups).items():
            self.job.coordinator.set_property(name, value)

    # ------------------------------------------------------------------ introspection
    def partition_count(self) -> int | None:
        return self.source.partition_count()

    def window_operators(self, key_group: int) -> list[TierWindowOperator]:
        task = self.job.source_task(key_group)
        return [op for op in task.chain.operators if isinstance(op, TierWindowOperator)]

    def queryable_state(self, db: str, series_key: str) -> dict[str, Any]:
        """The in-progress aggregates of one series (every window still held in state)."""
        count = self.partition_count()
        if count is None:
            raise LookupError("the worker has no partition metadata yet")
        kg = partition_for(series_key, count)
        if kg not in self.job.key_groups:
            raise LookupError(f"series is in partition {kg}, not owned by this worker")
        tiers: dict[str, list[dict[str, Any]]] = {}
        for op in self.window_operators(kg):
            batch = op.current_aggregates(kg)
            rows: list[dict[str, Any]] = []
            if batch is not None:
                for i, k in enumerate(batch.key_idx.tolist()):
                    k_db, k_series, k_field = split_window_key(batch.keys[k])
                    if k_db != db or k_series != series_key:
                        continue
                    n = int(batch.count[i])
                    rows.append(
                        {
                            "field": k_field,
                            "window_start_ns": int(batch.window_start_ns[i]),
                            "count": n,
                            "sum": float(batch.sum[i]),
                            "min": float(batch.min[i]),
                            "max": float(batch.max[i]),
                            "mean": float(batch.sum[i]) / n if n else None,
                            "first": float(batch.first[i]),
                            "last": float(batch.last[i]),
                        }
                    )
            tiers[op.tier.name] = rows
        return {"db": db, "series_key": series_key, "key_group": kg, "tiers": tiers}
