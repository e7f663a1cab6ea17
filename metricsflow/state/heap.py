"""``HeapKeyedStateBackend``: keyed state as Python objects in memory (the default backend).

Per (key group, state) a ``_SortedMap``: a dict for point access plus a lazily maintained
sorted key list for ordered range scans (window firing scans by time-ordered keys):

- new keys go to a small ``pending`` set and are merged into the sorted list on the next
  ordered access (timsort merges the two sorted runs in linear time; if every new key sorts
  after the existing ones, as time-ordered keys do, it is a plain concatenation);
- point deletes leave a ``dead`` marker in the sorted list, skipped by scans and compacted
  when they pile up; ``delete_range`` slices the list directly.

The sorted list is never mutated in place (only rebound), so a scan iterates a stable list.

**Snapshots are copy-on-write at the map level**: the synchronous part only captures
references to each map's dict and lists and marks the map shared (O(number of maps)); the
first mutation of a shared map copies its dict (values are immutable by contract, so a shallow
copy suffices). The asynchronous part serializes the captured maps into the canonical snapshot
format (``snapshot_format``), one file per key group.
"""

from __future__ import annotations

import bisect
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from metricsflow.errors import StateError
from metricsflow.state import snapshot_format
from metricsflow.state.base import AsyncSnapshot, KeyedStateBackend, StateDescriptor
from metricsflow.state.handles import CheckpointStorage, KeyGroupStateHandle
from metricsflow.state.serializers import ColumnarChunk

log = logging.getLogger(__name__)

_MISSING: Any = object()
#: compact dead markers once they outnumber this share of the sorted list
_DEAD_COMPACT_RATIO = 0.25


class _SortedMap:
    __slots__ = ("data", "dead", "pending", "shared", "sorted_keys")

    def __init__(
        self, data: dict[bytes, Any] | None = None, sorted_keys: list[bytes] | None = None
    ):
        self.data: dict[bytes, Any] = data if data is not None else {}
        self.sorted_keys: list[bytes] = sorted_keys if sorted_keys is not None else []
        self.pending: set[bytes] = set()
        self.dead: set[bytes] = set()
        self.shared = False

    def own(self) -> None:
        """Copy-on-write: stop sharing the containers a snapshot still reads."""
        self.data = self.data.copy()
        self.pending = self.pending.copy()
        self.dead = self.dead.copy()
        self.shared = False

    def put(self, key: bytes, value: Any) -> None:
        if self.shared:
            self.own()
        data = self.data
        if key not in data:
            if key in self.dead:
                self.dead.discard(key)
            else:
                self.pending.add(key)
        data[key] = value

    def delete(self, key: bytes) -> None:
        if key not in self.data:
            return
        if self.shared:
            self.own()
        del self.data[key]
        if key in self.pending:
            self.pending.discard(key)
        else:
            self.dead.add(key)

    def ordered(self) -> list[bytes]:
        """The sorted key list with pending keys merged in (may hold dead keys)."""
        keys = self.sorted_keys
        if self.pending:
            new = sorted(self.pending)
            if not keys or new[0] > keys[-1]:
                keys = keys + new
            else:
                keys = keys + new
                keys.sort()  # timsort: two sorted runs, merged in linear time
            self.pending = set()
        if self.dead and len(self.dead) > _DEAD_COMPACT_RATIO * len(keys):
            dead = self.dead
            keys = [k for k in keys if k not in dead]
            self.dead = set()
        self.sorted_keys = keys
        return keys

    def scan(self, start: bytes | None, stop: bytes | None) -> Iterator[tuple[bytes, Any]]:
        keys = self.ordered()
        lo = 0 if start is None else bisect.bisect_left(keys, start)
        hi = len(keys) if stop is None else bisect.bisect_left(keys, stop)
        data = self.data
        for i in range(lo, hi):
            key = keys[i]
            value = data.get(key, _MISSING)
            if value is not _MISSING:
                yield key, value

    def delete_range(self, start: bytes | None, stop: bytes | None) -> int:
        keys = self.ordered()
        lo = 0 if start is None else bisect.bisect_left(keys, start)
        hi = len(keys) if stop is None else bisect.bisect_left(keys, stop)
        if lo >= hi:
            return 0
        if self.shared:
            self.own()
        data = self.data
        doomed = keys[lo:hi]
        deleted = 0
        for key in doomed:
            if data.pop(key, _MISSING) is not _MISSING:
                deleted += 1
        if self.dead:
            self.dead.difference_update(doomed)
        self.sorted_keys = keys[:lo] + keys[hi:]
        return deleted


def _approx_size(value: Any, depth: int = 0) -> int:
    if isinstance(value, bytes | str):
        return sys.getsizeof(value)
    if isinstance(value, np.ndarray):
        return 112 + int(value.nbytes)
    if isinstance(value, ColumnarChunk):
        return (
            64
            + sum(_approx_size(a) for a in value.columns.values())
            + sum(sys.getsizeof(k) for k in value.keys)
        )
    if depth < 3 and isinstance(value, dict):
        return sys.getsizeof(value) + sum(
            _approx_size(k, depth + 1) + _approx_size(v, depth + 1) for k, v in value.items()
        )
    if depth < 3 and isinstance(value, list | tuple):
        return sys.getsizeof(value) + sum(_approx_size(v, depth + 1) for v in value)
    return sys.getsizeof(value)


def _sanitize_owner(owner: str) -> str:
    if not owner or any(c in owner for c in "/\\") or owner in (".", ".."):
        raise StateError(f"state backend owner must be a plain path segment, got {owner!r}")
    return owner


def snapshot_path(checkpoint_id: int, owner: str, key_group: int) -> str:
    """Where a full snapshot file of one key group lives, relative to the storage root."""
    return f"chk-{checkpoint_id}/{owner}/kg-{key_group}.mfks"


class _HeapAsyncSnapshot(AsyncSnapshot):
    def __init__(
        self,
        backend_name: str,
        owner: str,
        checkpoint_id: int,
        captured: list[tuple[int, list[tuple[StateDescriptor[Any], _SortedMap]]]],
        storage: CheckpointStorage,
    ) -> None:
        self._backend_name = backend_name
        self._owner = owner
        self._checkpoint_id = checkpoint_id
        self._captured = captured
        self._storage = storage

    def run(self) -> list[KeyGroupStateHandle]:
        started = time.perf_counter()
        handles: list[KeyGroupStateHandle] = []
        for key_group, states in self._captured:
            sections = []
            for descriptor, view in states:
                keys = view.ordered()
                data = view.data
                serialize = descriptor.serializer.serialize
                entries = [(k, serialize(data[k])) for k in keys if k in data]
                sections.append(
                    snapshot_format.StateSection(
                        descriptor.name,
                        descriptor.serializer.type_id,
                        descriptor.serializer.version,
                        entries,
                    )
                )
            blob = snapshot_format.encode(
                key_group, self._checkpoint_id, self._backend_name, sections
            )
            path = snapshot_path(self._checkpoint_id, self._owner, key_group)
            file_handle = self._storage.write_file(path, blob)
            handles.append(
                full_snapshot_handle(key_group, self._backend_name, file_handle, sections)
            )
        log.info(
            "heap snapshot persisted checkpoint_id=%d owner=%s key_groups=%d bytes=%d "
            "duration_ms=%.1f",
            self._checkpoint_id,
            self._owner,
            len(handles),
            sum(h.size for h in handles),
            (time.perf_counter() - started) * 1e3,
        )
        return handles


def full_snapshot_handle(
    key_group: int,
    backend: str,
    file_handle: Any,
    sections: Sequence[snapshot_format.StateSection],
) -> KeyGroupStateHandle:
    """The handle of a full (canonical-format, self-contained) key-group snapshot."""
    serializers = {s.name: [s.type_id, s.serializer_version] for s in sections}
    return KeyGroupStateHandle(
        key_group=key_group,
        backend=backend,
        format_version=snapshot_format.FORMAT_VERSION,
        private=(file_handle,),
        metadata={"kind": "full", "serializers": json.dumps(serializers, sort_keys=True)},
    )


def read_full_snapshot(
    handle: KeyGroupStateHandle, storage: CheckpointStorage
) -> snapshot_format.KeyGroupSnapshot:
    """Read and verify the canonical snapshot file of a full key-group handle."""
    if handle.metadata.get("kind", "full") != "full" or len(handle.private) != 1 or handle.shared:
        raise StateError(
            f"key group {handle.key_group} handle is not a full snapshot in the canonical "
            f"format (kind={handle.metadata.get('kind')!r}, backend={handle.backend!r}); "
            "restore it into the backend that wrote it, or take a savepoint (full snapshot)"
        )
    if handle.format_version not in snapshot_format.SUPPORTED_FORMAT_VERSIONS:
        raise StateError(
            f"key group {handle.key_group} snapshot format version {handle.format_version!r} "
            f"is not supported (reads {snapshot_format.SUPPORTED_FORMAT_VERSIONS!r})"
        )
    file_handle = handle.private[0]
    snap = snapshot_format.decode(storage.read_file(file_handle), source=file_handle.path)
    if snap.key_group != handle.key_group:
        raise StateError(
            f"snapshot file {file_handle.path!r} holds key group {snap.key_group}, "
            f"the handle says {handle.key_group}"
        )
    return snap


def check_section(
    descriptors: dict[str, StateDescriptor[Any]], section: snapshot_format.StateSection
) -> StateDescriptor[Any]:
    """The registered descriptor that can read ``section``, or ``StateError`` saying why not."""
    descriptor = descriptors.get(section.name)
    if descriptor is None:
        raise StateError(
            f"snapshot holds state {section.name!r}, which is not registered "
            f"(registered: {sorted(descriptors)!r})"
        )
    if descriptor.serializer.type_id != section.type_id:
        raise StateError(
            f"state {section.name!r} was written with serializer {section.type_id!r}, "
            f"but is registered with {descriptor.serializer.type_id!r}"
        )
    return descriptor


class HeapKeyedStateBackend(KeyedStateBackend):
    """Keyed state on the Python heap; snapshots are full, copy-on-write, asynchronous."""

    name = "heap"

    def __init__(self, owner: str = "keyed") -> None:
        self.owner = _sanitize_owner(owner)
        self._descriptors: dict[str, StateDescriptor[Any]] = {}
        self._groups: dict[int, dict[str, _SortedMap]] = {}
        self._closed = False

    # -- registration ----------------------------------------------------------------------
    def register(self, descriptor: StateDescriptor[Any]) -> None:
        existing = self._descriptors.get(descriptor.name)
        if existing is not None and existing.serializer.type_id != descriptor.serializer.type_id:
            raise StateError(
                f"state {descriptor.name!r} is already registered with serializer "
                f"{existing.serializer.type_id!r}, not {descriptor.serializer.type_id!r}"
            )
        self._descriptors[descriptor.name] = descriptor

    def _check(self, state: str) -> None:
        if state not in self._descriptors:
            if self._closed:
                raise StateError(f"state backend {self.name!r} is closed")
            raise StateError(f"state {state!r} is not registered")

    def _map(self, key_group: int, state: str) -> _SortedMap | None:
        group = self._groups.get(key_group)
        return None if group is None else group.get(state)

    def _map_for_write(self, key_group: int, state: str) -> _SortedMap:
        group = self._groups.get(key_group)
        if group is None:
            group = self._groups[key_group] = {}
        smap = group.get(state)
        if smap is None:
            self._check(state)
            smap = group[state] = _SortedMap()
        return smap

    # -- access ----------------------------------------------------------------------------
    def get(self, key_group: int, state: str, key: bytes) -> Any | None:
        smap = self._map(key_group, state)
        if smap is None:
            self._check(state)
            return None
        return smap.data.get(key)

    def put(self, key_group: int, state: str, key: bytes, value: Any) -> None:
        if value is None:
            raise StateError(f"state {state!r} cannot hold None (key {key!r}); delete instead")
        self._map_for_write(key_group, state).put(key, value)

    def delete(self, key_group: int, state: str, key: bytes) -> None:
        smap = self._map(key_group, state)
        if smap is None:
            self._check(state)
            return
        smap.delete(key)

    def scan(
        self, key_group: int, state: str, start: bytes | None = None, stop: bytes | None = None
    ) -> Iterator[tuple[bytes, Any]]:
        smap = self._map(key_group, state)
        if smap is None:
            self._check(state)
            return iter(())
        return smap.scan(start, stop)

    def delete_range(
        self, key_group: int, state: str, start: bytes | None = None, stop: bytes | None = None
    ) -> int:
        smap = self._map(key_group, state)
        if smap is None:
            self._check(state)
            return 0
        return smap.delete_range(start, stop)

    def key_groups(self) -> frozenset[int]:
        return frozenset(
            kg for kg, group in self._groups.items() if any(m.data for m in group.values())
        )

    def drop_key_group(self, key_group: int) -> None:
        self._groups.pop(key_group, None)
        log.info("key group dropped backend=heap owner=%s key_group=%d", self.owner, key_group)

    def size_bytes(self, key_group: int | None = None) -> int:
        groups = (
            list(self._groups.values()) if key_group is None else [self._groups.get(key_group, {})]
        )
        total = 0
        for group in groups:
            for smap in group.values():
                n = len(smap.data)
                if not n:
                    continue
                sample = [v for _, v in zip(range(32), smap.data.items(), strict=False)]
                per_entry = sum(_approx_size(k) + _approx_size(v) for k, v in sample) / len(sample)
                total += int(n * (per_entry + 100))  # + dict slot, sorted-list slot
        return total

    # -- snapshots -------------------------------------------------------------------------
    def snapshot(
        self,
        checkpoint_id: int,
        key_groups: Sequence[int],
        storage: CheckpointStorage,
        *,
        incremental: bool = True,
    ) -> AsyncSnapshot:
        captured: list[tuple[int, list[tuple[StateDescriptor[Any], _SortedMap]]]] = []
        for key_group in sorted(set(key_groups)):
            states: list[tuple[StateDescriptor[Any], _SortedMap]] = []
            for name, smap in sorted(self._groups.get(key_group, {}).items()):
                if not smap.data:
                    continue
                view = _SortedMap(smap.data, smap.sorted_keys)
                view.pending, view.dead = smap.pending, smap.dead
                smap.shared = True
                states.append((self._descriptors[name], view))
            captured.append((key_group, states))
        return _HeapAsyncSnapshot(self.name, self.owner, checkpoint_id, captured, storage)

    def restore(self, handles: Sequence[KeyGroupStateHandle], storage: CheckpointStorage) -> None:
        for handle in handles:
            snap = read_full_snapshot(handle, storage)
            group: dict[str, _SortedMap] = {}
            for section in snap.states:
                descriptor = check_section(self._descriptors, section)
                deserialize = descriptor.serializer.deserialize
                version = section.serializer_version
                keys = [k for k, _ in section.entries]
                data = {k: deserialize(v, version) for k, v in section.entries}
                group[section.name] = _SortedMap(data, keys)
            self._groups[handle.key_group] = group
            log.info(
                "key group restored backend=heap owner=%s key_group=%d from_backend=%s "
                "checkpoint_id=%d states=%d",
                self.owner,
                handle.key_group,
                snap.backend,
                snap.checkpoint_id,
                len(group),
            )

    def close(self) -> None:
        self._groups.clear()
        self._descriptors.clear()
        self._closed = True
