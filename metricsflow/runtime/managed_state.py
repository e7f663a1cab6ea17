"""How the runtime hands state backends and storage to operators.

Each operator of each key group's chain gets its own :class:`KeyedStateBackend` (one per
``(uid, key group)``), wrapped in :class:`ManagedStateBackend`, which decides *where* and
*how* snapshots are written, whatever the operator passes:

- into the storage of the checkpoint being taken (the job's checkpoint directory, or the
  savepoint's own directory for a savepoint), under a scope ``<uid>/kg-<n>`` so that the
  files of two operators or key groups can never collide (:class:`ScopedCheckpointStorage`);
- incrementally only for checkpoints of a job configured so; savepoints are always full
  (self-contained);
- restores read from the storage the restored checkpoint or savepoint lives in.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from metricsflow.errors import StateError
from metricsflow.state.base import AsyncSnapshot, KeyedStateBackend, StateDescriptor
from metricsflow.state.handles import CheckpointStorage, KeyGroupStateHandle, StreamStateHandle

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_CHK = re.compile(r"^(chk-\d+)/(.+)$")


def storage_scope(uid: str, key_group: int) -> str:
    return f"{_UNSAFE.sub('_', uid)}/kg-{key_group}"


class ScopedCheckpointStorage(CheckpointStorage):
    """A view of a storage where written paths get a scope inserted:
    ``chk-7/x`` -> ``chk-7/<scope>/x``, ``x`` -> ``<scope>/x``; ``shared/...`` is left as
    is (shared files are content-addressed, refcounted by path across checkpoints).
    Handles carry the full path, so reads through a handle are not remapped."""

    def __init__(self, inner: CheckpointStorage, scope: str) -> None:
        self.inner = inner
        self.scope = scope

    def map_path(self, relative_path: str) -> str:
        path = relative_path.strip("/")
        match = _CHK.match(path)
        if match:
            return f"{match.group(1)}/{self.scope}/{match.group(2)}"
        if path == "shared" or path.startswith("shared/"):
            return path  # content-addressed (named by SHA-256) by the backends: no collisions
        return f"{self.scope}/{path}"

    def write_file(self, relative_path: str, data: bytes) -> StreamStateHandle:
        return self.inner.write_file(self.map_path(relative_path), data)

    def read_file(self, handle: StreamStateHandle) -> bytes:
        return self.inner.read_file(handle)

    def read_bytes(self, relative_path: str) -> bytes:
        return self.inner.read_bytes(self.map_path(relative_path))

    def exists(self, relative_path: str) -> bool:
        return self.inner.exists(self.map_path(relative_path))

    def delete(self, relative_path: str) -> None:
        self.inner.delete(self.map_path(relative_path))

    def write_atomic(self, relative_path: str, data: bytes) -> None:
        self.inner.write_atomic(self.map_path(relative_path), data)

    def list_dir(self, relative_path: str) -> Sequence[str]:
        return self.inner.list_dir(self.map_path(relative_path))


class SnapshotPolicy:
    """Answers, per checkpoint id, where a snapshot goes and whether it may be incremental."""

    def __init__(
        self,
        storage_for: Callable[[int], CheckpointStorage],
        incremental_for: Callable[[int], bool],
    ) -> None:
        self.storage_for = storage_for
        self.incremental_for = incremental_for


class ManagedStateBackend(KeyedStateBackend):
    """Delegates to ``inner``; snapshots and restores go where the runtime says."""

    def __init__(
        self,
        inner: KeyedStateBackend,
        *,
        uid: str,
        key_group: int,
        policy: SnapshotPolicy,
        restore_storage: CheckpointStorage | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.uid = uid
        self.key_group = key_group
        self._policy = policy
        self._scope = storage_scope(uid, key_group)
        self.restore_storage = restore_storage
        self.restored_handles: tuple[KeyGroupStateHandle, ...] | None = None

    def register(self, descriptor: StateDescriptor[Any]) -> None:
        self.inner.register(descriptor)

    def get(self, key_group: int, state: str, key: bytes) -> Any | None:
        return self.inner.get(key_group, state, key)

    def put(self, key_group: int, state: str, key: bytes, value: Any) -> None:
        self.inner.put(key_group, state, key, value)

    def delete(self, key_group: int, state: str, key: bytes) -> None:
        self.inner.delete(key_group, state, key)

    def scan(
        self, key_group: int, state: str, start: bytes | None = None, stop: bytes | None = None
    ) -> Iterator[tuple[bytes, Any]]:
        return self.inner.scan(key_group, state, start, stop)

    def delete_range(
        self, key_group: int, state: str, start: bytes | None = None, stop: bytes | None = None
    ) -> int:
        return self.inner.delete_range(key_group, state, start, stop)

    def key_groups(self) -> frozenset[int]:
        return self.inner.key_groups()

    def drop_key_group(self, key_group: int) -> None:
        self.inner.drop_key_group(key_group)

    def size_bytes(self, key_group: int | None = None) -> int:
        return self.inner.size_bytes(key_group)

    def snapshot(
        self,
        checkpoint_id: int,
        key_groups: Sequence[int],
        storage: CheckpointStorage,
        *,
        incremental: bool = True,
    ) -> AsyncSnapshot:
        target = ScopedCheckpointStorage(self._policy.storage_for(checkpoint_id), self._scope)
        return self.inner.snapshot(
            checkpoint_id,
            key_groups,
            target,
            incremental=self._policy.incremental_for(checkpoint_id),
        )

    def restore(self, handles: Sequence[KeyGroupStateHandle], storage: CheckpointStorage) -> None:
        if self.restored_handles is not None and tuple(handles) == self.restored_handles:
            return
        source = self.restore_storage if self.restore_storage is not None else storage
        self.inner.restore(handles, source)
        self.restored_handles = tuple(handles)

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        self.inner.notify_checkpoint_complete(checkpoint_id)

    def close(self) -> None:
        self.inner.close()


class NoKeyedStateBackend(KeyedStateBackend):
    """Given to operators that declare ``is_stateful = False``: any use is a bug."""

    name = "none"

    def __init__(self, uid: str) -> None:
        self._uid = uid

    def _fail(self) -> StateError:
        return StateError(
            f"operator uid={self._uid!r} declares is_stateful=False but uses keyed state"
        )

    def register(self, descriptor: StateDescriptor[Any]) -> None:
        raise self._fail()

    def get(self, key_group: int, state: str, key: bytes) -> Any | None:
        raise self._fail()

    def put(self, key_group: int, state: str, key: bytes, value: Any) -> None:
        raise self._fail()

    def delete(self, key_group: int, state: str, key: bytes) -> None:
        raise self._fail()

    def scan(
        self, key_group: int, state: str, start: bytes | None = None, stop: bytes | None = None
    ) -> Iterator[tuple[bytes, Any]]:
        raise self._fail()

    def delete_range(
        self, key_group: int, state: str, start: bytes | None = None, stop: bytes | None = None
    ) -> int:
        raise self._fail()

    def key_groups(self) -> frozenset[int]:
        return frozenset()

    def drop_key_group(self, key_group: int) -> None:
        return None

    def size_bytes(self, key_group: int | None = None) -> int:
        return 0

    def snapshot(
        self,
        checkpoint_id: int,
        key_groups: Sequence[int],
        storage: CheckpointStorage,
        *,
        incremental: bool = True,
    ) -> AsyncSnapshot:
        raise self._fail()

    def restore(self, handles: Sequence[KeyGroupStateHandle], storage: CheckpointStorage) -> None:
        if handles:
            raise self._fail()

    def close(self) -> None:
        return None
