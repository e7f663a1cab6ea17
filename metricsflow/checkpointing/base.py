"""Checkpointing contracts: state handles, checkpoint storage, failure reasons.

Vocabulary follows Flink: a *state handle* points at persisted state; an operator's
acknowledgement of checkpoint *n* carries its handles; the coordinator completes checkpoint
*n* when every acknowledgement is in and writes ``chk-<n>/_metadata`` atomically.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


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


@dataclass(frozen=True, slots=True)
class StreamStateHandle:
    """One persisted file: where it is (relative to the checkpoint storage root, so that a
    savepoint directory can be moved), how big it is, and its SHA-256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class KeyGroupStateHandle:
    """The state of one operator's backend for one key group in one checkpoint.

    ``private`` files belong to this checkpoint alone; ``shared`` files (incremental RocksDB
    checkpoints) may be referenced by several retained checkpoints and are reference-counted.
    ``backend`` and ``format_version`` say how to read them.
    """

    key_group: int
    backend: str
    format_version: int
    private: tuple[StreamStateHandle, ...] = ()
    shared: tuple[StreamStateHandle, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(h.size for h in self.private) + sum(h.size for h in self.shared)


@dataclass(frozen=True, slots=True)
class OperatorStateHandle:
    """Non-keyed state of one operator (e.g. a source's offsets) as a small blob per key group."""

    uid: str
    key_group: int
    data: bytes


class CheckpointStorage(abc.ABC):
    """Where checkpoints and savepoints live: a local directory or any fsspec URL.

    Layout (Flink's): ``<root>/chk-<id>/`` per checkpoint, ``<root>/shared/`` for files that
    incremental checkpoints share, ``<root>/chk-<id>/_metadata`` written last and atomically.
    Savepoints are self-contained directories (no ``shared/`` references).
    """

    @abc.abstractmethod
    def write_file(self, relative_path: str, data: bytes) -> StreamStateHandle:
        """Write ``data`` durably under the root; return its handle (with checksum)."""

    @abc.abstractmethod
    def read_file(self, handle: StreamStateHandle) -> bytes:
        """Read a file and verify its size and checksum (``CheckpointError`` if they differ)."""

    @abc.abstractmethod
    def read_bytes(self, relative_path: str) -> bytes:
        """Read a file there is no handle for (``chk-<id>/_metadata``); no checksum to verify."""

    @abc.abstractmethod
    def exists(self, relative_path: str) -> bool: ...

    @abc.abstractmethod
    def delete(self, relative_path: str) -> None:
        """Delete a file or a directory tree; missing paths are not an error."""

    @abc.abstractmethod
    def write_atomic(self, relative_path: str, data: bytes) -> None:
        """Write a file so that readers see all of it or nothing (temp, fsync, rename)."""

    @abc.abstractmethod
    def list_dir(self, relative_path: str) -> Sequence[str]:
        """Names (not paths) directly under a directory; empty if it does not exist."""
