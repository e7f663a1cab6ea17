"""State handles and the storage they point into (Flink keeps both with its state backends).

Vocabulary follows Flink: a *state handle* points at persisted state; a state backend writes
its snapshot of a key group through a :class:`CheckpointStorage` and returns the handles; an
operator's acknowledgement of checkpoint *n* carries them
(:class:`~metricsflow.checkpointing.protocol.TaskAcknowledgement`), and the coordinator
completes checkpoint *n* when every acknowledgement is in.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


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
