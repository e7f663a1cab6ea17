"""``SharedStateRegistry``: reference counts of the shared files of incremental checkpoints.

An incremental checkpoint references files under ``shared/`` that earlier checkpoints wrote
(RocksDB's SST files, ``shared/<sha256>.sst``; the heap backend's segment files,
``shared/chk-<n>/...``). A shared file may be deleted only when no *retained* checkpoint
references it. The checkpoint coordinator:

- calls ``register(checkpoint_id, handles)`` when checkpoint *n* completes (it may call it
  several times for one checkpoint, e.g. once per operator; references accumulate);
- calls ``release(checkpoint_id)`` when *n* is subsumed or discarded, and deletes the files
  it returns;
- after a restart, rebuilds the registry with ``SharedStateRegistry.rebuild`` from the
  handles of the checkpoints it still retains (their ``_metadata``).

A checkpoint counts a file once however many of its handles reference it. Savepoints hold
no shared files and are never registered. Thread-safe.

Ordering rule the coordinator keeps (as Flink does): a new checkpoint is registered before
the one it subsumes is released, so that a file both reference never drops to zero.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from collections.abc import Collection, Iterable, Mapping

from metricsflow.state.handles import CheckpointStorage, KeyGroupStateHandle, StreamStateHandle

log = logging.getLogger(__name__)

_SHARED = "shared"


class SharedStateRegistry:
    """Reference-counts shared state files across retained checkpoints."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refcount: dict[str, int] = {}
        self._handles: dict[str, StreamStateHandle] = {}
        self._by_checkpoint: dict[int, set[str]] = {}

    @classmethod
    def rebuild(cls, retained: Mapping[int, Iterable[KeyGroupStateHandle]]) -> SharedStateRegistry:
        """A registry holding the references of the retained checkpoints (after a restart)."""
        registry = cls()
        for checkpoint_id in sorted(retained):
            registry.register(checkpoint_id, retained[checkpoint_id])
        return registry

    def register(self, checkpoint_id: int, handles: Iterable[KeyGroupStateHandle]) -> None:
        """Record that ``checkpoint_id`` references the shared files of ``handles``."""
        with self._lock:
            paths = self._by_checkpoint.setdefault(checkpoint_id, set())
            added = 0
            for handle in handles:
                for shared in handle.shared:
                    if shared.path in paths:
                        continue
                    paths.add(shared.path)
                    self._handles.setdefault(shared.path, shared)
                    self._refcount[shared.path] = self._refcount.get(shared.path, 0) + 1
                    added += 1
        log.debug(
            "shared state registered checkpoint_id=%d new_references=%d", checkpoint_id, added
        )

    def release(self, checkpoint_id: int) -> list[StreamStateHandle]:
        """Drop ``checkpoint_id``'s references; return the files no retained checkpoint needs
        any more (the caller deletes them). Releasing an unknown checkpoint returns ``[]``."""
        with self._lock:
            paths = self._by_checkpoint.pop(checkpoint_id, None)
            if paths is None:
                log.debug(
                    "shared state release of unknown checkpoint checkpoint_id=%d", checkpoint_id
                )
                return []
            unused: list[StreamStateHandle] = []
            for path in sorted(paths):
                count = self._refcount[path] - 1
                if count:
                    self._refcount[path] = count
                else:
                    del self._refcount[path]
                    unused.append(self._handles.pop(path))
        log.debug(  # the coordinator logs the discard (one INFO line)
            "shared state released checkpoint_id=%d references=%d unused_files=%d",
            checkpoint_id,
            len(paths),
            len(unused),
        )
        return unused

    def reference_count(self, path: str) -> int:
        with self._lock:
            return self._refcount.get(path, 0)

    def referenced_paths(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._refcount)

    def checkpoints(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._by_checkpoint)


def delete_shared_files(storage: CheckpointStorage, handles: Iterable[StreamStateHandle]) -> None:
    """Delete shared files no retained checkpoint references (``release``'s answer), and the
    ``shared/chk-<n>/`` directories they leave empty."""
    parents: set[str] = set()
    for handle in handles:
        storage.delete(handle.path)
        parent = posixpath.dirname(handle.path)
        if parent != _SHARED:
            parents.add(parent)
    for parent in sorted(parents):
        if not storage.list_dir(parent):
            storage.delete(parent)


def remove_unreferenced_shared_files(
    storage: CheckpointStorage, referenced: Collection[str]
) -> int:
    """Delete every file under ``shared/`` that is not in ``referenced`` (the registry of the
    retained checkpoints): what checkpoints that never completed (a crash mid-checkpoint, an
    abort whose cleanup did not run) left behind. Call it only while no checkpoint of this
    storage is in flight (at start, before the first trigger). Returns the files deleted."""
    deleted = 0
    for name in storage.list_dir(_SHARED):
        path = f"{_SHARED}/{name}"
        children = storage.list_dir(path)
        if children:  # a shared/chk-<n>/ directory of heap segments
            doomed = [f"{path}/{c}" for c in children if f"{path}/{c}" not in referenced]
            if len(doomed) == len(children):
                storage.delete(path)
            else:
                for child in doomed:
                    storage.delete(child)
            deleted += len(doomed)
        elif path not in referenced:
            storage.delete(path)
            deleted += 1
    if deleted:
        log.info("unreferenced shared files removed files=%d", deleted)
    return deleted
