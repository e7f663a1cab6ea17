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
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metricsflow.errors import StateError
from metricsflow.state import heap_segments, snapshot_format
from metricsflow.state.base import AsyncSnapshot, KeyedStateBackend, StateDescriptor
from metricsflow.state.handles import CheckpointStorage, KeyGroupStateHandle
from metricsflow.state.serializers import ColumnarChunk

log = logging.getLogger(__name__)

_MISSING: Any = object()
#: compact dead markers once they outnumber this share of the sorted list
_DEAD_COMPACT_RATIO = 0.25


class _SortedMap:
    __slots__ = ("data", "dead", "pending", "shared", "sorted_keys", "touched")

    def __init__(
        self, data: dict[bytes, Any] | None = None, sorted_keys: list[bytes] | None = None
    ):
        self.data: dict[bytes, Any] = data if data is not None else {}
        self.sorted_keys: list[bytes] = sorted_keys if sorted_keys is not None else []
        self.pending: set[bytes] = set()
        self.dead: set[bytes] = set()
        self.shared = False
        #: keys written or deleted since the last incremental snapshot; ``None``: not tracked
        #: (no incremental snapshot taken yet, so the next one rewrites the map anyway)
        self.touched: set[bytes] | None = None

    def own(self) -> None:
        """Copy-on-write: stop sharing the containers a snapshot still reads."""
        self.data = self.data.copy()
        self.pending = self.pending.copy()
        self.dead = self.dead.copy()
        self.shared = False

    def put(self, key: bytes, value: Any) -> None:
        if self.shared:
            self.own()
        if self.touched is not None:
            self.touched.add(key)
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
        if self.touched is not None:
            self.touched.add(key)
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
        if self.touched is not None:
            self.touched.update(doomed)
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


@dataclass(slots=True)
class _Tracking:
    """Incremental snapshots of one key group: the layout of the last completed checkpoint
    (the base), the keys touched per snapshot taken since, and layouts awaiting completion."""

    base: heap_segments.Layout | None = None
    since_base: list[tuple[int, dict[str, set[bytes] | None]]] = field(default_factory=list)
    layouts: dict[int, heap_segments.Layout] = field(default_factory=dict)


#: snapshots not followed by a completed checkpoint after which the next one is a full rewrite
#: (bounds the touched-key sets kept while checkpoints keep failing)
_MAX_UNCONFIRMED = 16

_Captured = tuple[int, list[tuple[StateDescriptor[Any], _SortedMap]]]
_CapturedIncremental = tuple[int, list[heap_segments.CapturedState], heap_segments.Layout | None]


class _HeapAsyncSnapshot(AsyncSnapshot):
    def __init__(
        self,
        backend: HeapKeyedStateBackend,
        checkpoint_id: int,
        captured: list[_Captured],
        incremental: list[_CapturedIncremental],
        storage: CheckpointStorage,
    ) -> None:
        self._backend = backend
        self._checkpoint_id = checkpoint_id
        self._captured = captured
        self._incremental = incremental
        self._storage = storage

    def run(self) -> list[KeyGroupStateHandle]:
        started = time.perf_counter()
        backend, owner = self._backend.name, self._backend.owner
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
            blob = snapshot_format.encode(key_group, self._checkpoint_id, backend, sections)
            path = snapshot_path(self._checkpoint_id, owner, key_group)
            file_handle = self._storage.write_file(path, blob)
            handles.append(full_snapshot_handle(key_group, backend, file_handle, sections))
        written = sum(h.size for h in handles)
        compacted = 0
        for key_group, captured_states, base in self._incremental:
            result = heap_segments.write_segments(
                backend=backend,
                owner=owner,
                key_group=key_group,
                checkpoint_id=self._checkpoint_id,
                states=captured_states,
                base=base,
                storage=self._storage,
                segment_bytes=self._backend.segment_bytes,
            )
            self._backend._record_layout(self._checkpoint_id, key_group, result.layout)
            handles.append(result.handle)
            written += result.written_bytes
            compacted += result.compacted
        log.debug(
            "heap snapshot persisted checkpoint_id=%d owner=%s key_groups=%d bytes=%d "
            "written_bytes=%d full_rewrites=%d duration_ms=%.1f",
            self._checkpoint_id,
            owner,
            len(handles),
            sum(h.size for h in handles),
            written,
            compacted,
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


def read_sections(
    handle: KeyGroupStateHandle, storage: CheckpointStorage
) -> list[snapshot_format.StateSection]:
    """The state sections of a handle in the canonical format: a full snapshot file, or the
    segments of an incremental heap checkpoint (both backends restore either)."""
    if handle.metadata.get("kind") == heap_segments.KIND:
        return heap_segments.read_segment_sections(handle, storage)
    return list(read_full_snapshot(handle, storage).states)


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
    """Keyed state on the Python heap; snapshots are copy-on-write and asynchronous, and
    incremental ones write only the segments that changed (``heap_segments``)."""

    name = "heap"

    def __init__(
        self, owner: str = "keyed", *, segment_bytes: int = heap_segments.DEFAULT_SEGMENT_BYTES
    ) -> None:
        if segment_bytes < 1:
            raise StateError(f"segment_bytes must be positive, got {segment_bytes!r}")
        self.owner = _sanitize_owner(owner)
        self.segment_bytes = segment_bytes
        self._descriptors: dict[str, StateDescriptor[Any]] = {}
        self._groups: dict[int, dict[str, _SortedMap]] = {}
        self._lock = threading.Lock()
        self._tracking: dict[int, _Tracking] = {}
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
        with self._lock:
            self._tracking.pop(key_group, None)
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
        captured: list[_Captured] = []
        captured_incremental: list[_CapturedIncremental] = []
        for key_group in sorted(set(key_groups)):
            if incremental:
                captured_incremental.append(self._capture_incremental(checkpoint_id, key_group))
                continue
            states: list[tuple[StateDescriptor[Any], _SortedMap]] = []
            for name, smap in sorted(self._groups.get(key_group, {}).items()):
                if not smap.data:
                    continue
                states.append((self._descriptors[name], self._capture_view(smap)))
            captured.append((key_group, states))
        return _HeapAsyncSnapshot(self, checkpoint_id, captured, captured_incremental, storage)

    @staticmethod
    def _capture_view(smap: _SortedMap) -> _SortedMap:
        view = _SortedMap(smap.data, smap.sorted_keys)
        view.pending, view.dead = smap.pending, smap.dead
        smap.shared = True
        return view

    def _capture_incremental(self, checkpoint_id: int, key_group: int) -> _CapturedIncremental:
        with self._lock:
            track = self._tracking.setdefault(key_group, _Tracking())
            if len(track.since_base) >= _MAX_UNCONFIRMED:  # checkpoints keep failing
                track.base, track.since_base = None, []
            base = track.base
            history = list(track.since_base)
        touched_now: dict[str, set[bytes] | None] = {}
        states: list[heap_segments.CapturedState] = []
        for name, smap in sorted(self._groups.get(key_group, {}).items()):
            touched_now[name] = smap.touched
            smap.touched = set()
            if not smap.data:
                continue
            view = self._capture_view(smap)
            since: list[set[bytes]] | None = []
            for _, per_state in (*history, (checkpoint_id, touched_now)):
                keys = per_state.get(name)
                if keys is None or since is None:
                    since = None
                    break
                since.append(keys)
            serializer = self._descriptors[name].serializer
            states.append(
                heap_segments.CapturedState(
                    name,
                    serializer.type_id,
                    serializer.version,
                    serializer.serialize,
                    heap_segments.StateView(view.data, view.ordered),
                    None if base is None or since is None else tuple(since),
                )
            )
        with self._lock:
            if self._tracking.get(key_group) is track:
                track.since_base.append((checkpoint_id, touched_now))
        return key_group, states, base

    def _record_layout(
        self, checkpoint_id: int, key_group: int, layout: heap_segments.Layout
    ) -> None:
        with self._lock:
            track = self._tracking.get(key_group)
            if track is not None:
                track.layouts[checkpoint_id] = layout

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Base the next incremental snapshots on this checkpoint's segments."""
        with self._lock:
            for track in self._tracking.values():
                layout = track.layouts.pop(checkpoint_id, None)
                for older in [c for c in track.layouts if c < checkpoint_id]:
                    del track.layouts[older]
                if layout is None:
                    continue
                track.base = layout
                track.since_base = [e for e in track.since_base if e[0] > checkpoint_id]

    def restore(self, handles: Sequence[KeyGroupStateHandle], storage: CheckpointStorage) -> None:
        for handle in handles:
            sections = read_sections(handle, storage)
            parts: dict[str, tuple[dict[bytes, Any], list[bytes]]] = {}
            for section in sections:
                descriptor = check_section(self._descriptors, section)
                deserialize = descriptor.serializer.deserialize
                version = section.serializer_version
                data, keys = parts.setdefault(section.name, ({}, []))
                keys.extend(k for k, _ in section.entries)
                data.update((k, deserialize(v, version)) for k, v in section.entries)
            self._groups[handle.key_group] = {
                name: _SortedMap(data, keys) for name, (data, keys) in parts.items()
            }
            with self._lock:  # the next incremental snapshot writes everything, into our root
                self._tracking.pop(handle.key_group, None)
            log.info(
                "key group restored backend=heap owner=%s key_group=%d from_backend=%s "
                "kind=%s states=%d",
                self.owner,
                handle.key_group,
                handle.backend,
                handle.metadata.get("kind", "full"),
                len(parts),
            )

    def close(self) -> None:
        self._groups.clear()
        self._descriptors.clear()
        self._closed = True
