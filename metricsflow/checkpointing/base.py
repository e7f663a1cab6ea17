"""Checkpointing contracts: why a checkpoint fails.

State handles and :class:`~metricsflow.state.handles.CheckpointStorage` live with the state
backends (:mod:`metricsflow.state.handles`); the protocol's messages (barriers, options,
acknowledgements) in :mod:`metricsflow.checkpointing.protocol`.
"""

from __future__ import annotations

import enum


class CheckpointFailureReason(enum.Enum):
    """Every way a checkpoint can fail (names as in Flink where Flink has the concept)."""

    CHECKPOINT_EXPIRED = "checkpoint expired before completing (timeout)"
    CHECKPOINT_DECLINED = "an operator declined the checkpoint"
    CHECKPOINT_ASYNC_EXCEPTION = "the asynchronous part of a snapshot failed"
    CHECKPOINT_SUBSUMED = "a newer checkpoint completed first"
    TOO_MANY_CONCURRENT_CHECKPOINTS = "too many checkpoints are in progress"
    MINIMUM_TIME_BETWEEN_CHECKPOINTS = "the minimum pause since the last checkpoint has not passed"
    NOT_ALL_REQUIRED_TASKS_RUNNING = "not every task is running"
    IO_EXCEPTION = "writing checkpoint data or metadata failed"
    FINALIZE_CHECKPOINT_FAILURE = "writing the checkpoint metadata failed"
    CHECKPOINT_COORDINATOR_SHUTDOWN = "the checkpoint coordinator was shut down"
    JOB_FAILOVER_REGION = "the job failed and is restarting"
    CORRUPT_CHECKPOINT = "checkpoint data is missing, torn or fails its checksum"
