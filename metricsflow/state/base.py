"""The keyed state contract: what every state backend (heap, RocksDB) provides.

State is organized by **key group** (= input partition, docs/architecture.md "Key groups"): one
key group's state can be snapshotted, restored, handed over and dropped alone. Inside a key
group, each registered state (by name) is a **sorted map** from ``bytes`` keys to typed values.
Sorted, because operators lay state out by time (e.g. keys that start with a big-endian window
end) and fire windows with a range scan, the way Flink's timer services do; that is also what
lets the RocksDB backend hold more state than fits in memory.

Values are serialized with explicit, versioned serializers (never pickle), so that a snapshot
written by this version of the code can be read by the next one, and safely.

Values put into state are **immutable by contract**: an operator that wants to change a value
puts a new object. This is what lets the heap backend take a snapshot's synchronous part in
O(number of entries) without copying values (copy-on-write), and persist it asynchronously
while processing goes on.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from metricsflow.state.handles import CheckpointStorage, KeyGroupStateHandle

T = TypeVar("T")


class StateSerializer(Protocol[T]):
    """Explicit, versioned encoding of one value type.

    ``type_id`` is a stable name written into every snapshot (never a class name that could
    change between versions); ``version`` is the format this code writes. ``deserialize`` must
    read every version it was ever written in, or raise ``SerializationError``.
    """

    @property
    def type_id(self) -> str: ...

    @property
    def version(self) -> int: ...

    def serialize(self, value: T) -> bytes: ...

    def deserialize(self, data: bytes, version: int) -> T: ...


@dataclass(frozen=True, slots=True)
class StateDescriptor(Generic[T]):
    """A named state inside every key group, with the serializer of its values."""

    name: str
    serializer: StateSerializer[T]


class AsyncSnapshot(abc.ABC):
    """The asynchronous part of a snapshot: persist what the synchronous part captured.

    ``run`` is called off the processing path (a worker thread); processing goes on meanwhile.
    """

    @abc.abstractmethod
    def run(self) -> list[KeyGroupStateHandle]:
        """Write the captured state to checkpoint storage; one handle per key group."""


class KeyedStateBackend(abc.ABC):
    """Sorted, typed key-value maps per (key group, state name)."""

    #: short stable name: "heap" or "rocksdb"
    name: str

    @abc.abstractmethod
    def register(self, descriptor: StateDescriptor[Any]) -> None:
        """Declare a state; idempotent; a state must be registered before use or restore."""

    @abc.abstractmethod
    def get(self, key_group: int, state: str, key: bytes) -> Any | None: ...

    @abc.abstractmethod
    def put(self, key_group: int, state: str, key: bytes, value: Any) -> None: ...

    @abc.abstractmethod
    def delete(self, key_group: int, state: str, key: bytes) -> None: ...

    @abc.abstractmethod
    def scan(
        self, key_group: int, state: str, start: bytes | None = None, stop: bytes | None = None
    ) -> Iterator[tuple[bytes, Any]]:
        """Entries with ``start <= key < stop`` in ascending key order (``None`` = unbounded).

        The iterator sees the state as it was when iteration began or later; callers must not
        mutate the same state while iterating (collect first, then write).
        """

    @abc.abstractmethod
    def delete_range(
        self, key_group: int, state: str, start: bytes | None = None, stop: bytes | None = None
    ) -> int:
        """Delete the entries with ``start <= key < stop``; return how many were deleted."""

    @abc.abstractmethod
    def key_groups(self) -> frozenset[int]:
        """The key groups that hold any state."""

    @abc.abstractmethod
    def drop_key_group(self, key_group: int) -> None:
        """Forget all state of a key group (its partition was revoked and handed over)."""

    @abc.abstractmethod
    def size_bytes(self, key_group: int | None = None) -> int:
        """Approximate state size, of one key group or all of them (a metric, not exact)."""

    @abc.abstractmethod
    def snapshot(
        self,
        checkpoint_id: int,
        key_groups: Sequence[int],
        storage: CheckpointStorage,
        *,
        incremental: bool = True,
    ) -> AsyncSnapshot:
        """Synchronous part of a snapshot: capture the state of ``key_groups`` consistently,
        quickly (this pauses processing), and return the asynchronous part that persists it.

        ``incremental`` lets a backend that supports it (RocksDB) upload only what is new since
        its previous completed snapshot; the handles then reference shared files.
        """

    @abc.abstractmethod
    def restore(self, handles: Sequence[KeyGroupStateHandle], storage: CheckpointStorage) -> None:
        """Replace the state of each handle's key group with the snapshot it points to."""

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:  # noqa: B027
        """A snapshot this backend took is part of a completed checkpoint (optional hook)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release resources (files, handles). The backend cannot be used afterwards."""
