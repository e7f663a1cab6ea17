"""``RocksDBKeyedStateBackend``: keyed state in embedded RocksDB (``rocksdict``), beyond memory.

Layout decisions (see docs/state.md):

- **One RocksDB instance per key group** under ``<local_dir>/<owner>/kg-<n>/``, one column
  family per registered state. Handing a key group over is then a matter of its own files:
  a checkpoint of one key group is exactly its instance's SST files (incremental checkpoints
  need that: SSTs of a shared instance would mix key groups), ``drop_key_group`` closes the
  instance and deletes its directory (cheaper than a range delete plus compaction), and
  restoring one key group never touches another's data.
- Memory is bounded across instances, and across every RocksDB backend of the process, by one
  shared LRU **block cache** and one shared **write-buffer manager** (memtables, charged to
  the cache), both sized in ``StateBackendConfig``; glibc's malloc uses one arena and gives
  back what it keeps free after each checkpoint (``metricsflow.state.allocator``).
- The **WAL is disabled**: the local instance is a cache of the state, and checkpoints are
  its durability (as in Flink). A RocksDB checkpoint flushes the memtables first.
- Values are stored serialized with their state's registered serializer (current version).

Snapshots: the synchronous part creates a RocksDB checkpoint per key group (memtable flush +
hard links of the immutable SST files into a local directory: milliseconds). The
asynchronous part then either

- **incremental**: uploads the SST files that are new since the last *completed* checkpoint
  to ``shared/<sha256>.sst`` (content-addressed, skipped if already present) and the small
  metadata files (MANIFEST, CURRENT, OPTIONS...) to ``chk-<n>/<owner>/kg-<k>/``; the handle's
  ``shared`` lists every SST the checkpoint needs (old and new), reference-counted by
  ``SharedStateRegistry``; or
- **full** (savepoints, ``incremental=False``): opens the checkpoint read-only and writes the
  canonical snapshot format, which the heap backend reads too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import rocksdict

from metricsflow.errors import StateError
from metricsflow.state import snapshot_format
from metricsflow.state.allocator import limit_arenas, release_after_checkpoint
from metricsflow.state.base import AsyncSnapshot, KeyedStateBackend, StateDescriptor
from metricsflow.state.handles import CheckpointStorage, KeyGroupStateHandle, StreamStateHandle
from metricsflow.state.heap import (
    _sanitize_owner,
    check_section,
    full_snapshot_handle,
    read_sections,
    snapshot_path,
)

log = logging.getLogger(__name__)

INCREMENTAL_FORMAT_VERSION = 1
_DEFAULT_CF = "default"
_BATCH = 10_000
_POINT_DELETE_LIMIT = 1_000


_MEMORY_LOCK = threading.Lock()
_SHARED_MEMORY: dict[tuple[int, int], tuple[Any, Any]] = {}


def _shared_memory(block_cache_bytes: int, write_buffer_budget_bytes: int) -> tuple[Any, Any]:
    """One block cache and one write-buffer manager per process (per size pair), shared by
    every RocksDB backend: a worker builds a backend per (operator, key group), and the memory
    bound must hold for all of them together."""
    key = (block_cache_bytes, write_buffer_budget_bytes)
    with _MEMORY_LOCK:
        pair = _SHARED_MEMORY.get(key)
        if pair is None:
            cache = rocksdict.Cache(block_cache_bytes)
            wbm = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
                write_buffer_budget_bytes, False, cache
            )
            pair = _SHARED_MEMORY[key] = (cache, wbm)
        return pair


@dataclass(slots=True)
class _Instance:
    path: str
    db: Any
    cfs: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Captured:
    key_group: int
    checkpoint_dir: str | None
    serializers: dict[str, list[Any]]
    base: dict[str, StreamStateHandle]


class RocksDBKeyedStateBackend(KeyedStateBackend):
    """Keyed state in one RocksDB instance per key group; full and incremental snapshots."""

    name = "rocksdb"

    def __init__(
        self,
        local_dir: str | None = None,
        owner: str = "keyed",
        *,
        block_cache_bytes: int = 64 << 20,
        write_buffer_bytes: int = 8 << 20,
        write_buffer_budget_bytes: int = 64 << 20,
        max_open_files: int = 256,
        tune_malloc: bool = True,
        compaction_wait_s: float = 0.25,
    ) -> None:
        self.owner = _sanitize_owner(owner)
        self._temp_root = local_dir is None
        root = local_dir if local_dir is not None else tempfile.mkdtemp(prefix="mf-rocksdb-")
        self._dir = os.path.join(os.path.abspath(root), self.owner)
        if os.path.exists(self._dir):  # the local instance is disposable: checkpoints are truth
            shutil.rmtree(self._dir)
        os.makedirs(self._dir)
        if tune_malloc:  # before RocksDB starts its threads (metricsflow.state.allocator)
            limit_arenas(1)
        self._cache, self._wbm = _shared_memory(block_cache_bytes, write_buffer_budget_bytes)
        self._write_buffer_bytes = write_buffer_bytes
        self._max_open_files = max_open_files
        self._tune_malloc = tune_malloc
        self._compaction_wait_s = compaction_wait_s
        write_opts: Any = rocksdict.WriteOptions()
        write_opts.disable_wal = True  # a property at run time (the stub says a method)
        self._write_opts = write_opts
        self._descriptors: dict[str, StateDescriptor[Any]] = {}
        self._instances: dict[int, _Instance] = {}
        self._lock = threading.Lock()
        self._pending_uploads: dict[int, dict[int, dict[str, StreamStateHandle]]] = {}
        self._confirmed: dict[int, dict[str, StreamStateHandle]] = {}
        self._closed = False

    # -- RocksDB plumbing ------------------------------------------------------------------
    def _options(self) -> Any:
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self._cache)
        table.set_cache_index_and_filter_blocks(True)
        opts.set_block_based_table_factory(table)
        opts.set_write_buffer_size(self._write_buffer_bytes)
        opts.set_write_buffer_manager(self._wbm)
        opts.set_max_open_files(self._max_open_files)
        opts.set_keep_log_file_num(2)
        return opts

    def _kg_dir(self, key_group: int) -> str:
        return os.path.join(self._dir, f"kg-{key_group}")

    def _open(self, key_group: int, path: str, *, read_only: bool = False) -> _Instance:
        opts = self._options()
        names = rocksdict.Rdict.list_cf(path, opts) if os.path.exists(path) else [_DEFAULT_CF]
        access = (
            rocksdict.AccessType.read_only() if read_only else rocksdict.AccessType.read_write()
        )
        db = rocksdict.Rdict(
            path,
            opts,
            column_families={n: self._options() for n in names if n != _DEFAULT_CF},
            access_type=access,
        )
        inst = _Instance(path=path, db=db)
        for name in names:
            if name != _DEFAULT_CF:
                cf = db.get_column_family(name)
                if not read_only:
                    cf.set_write_options(self._write_opts)
                inst.cfs[name] = cf
        return inst

    def _instance(self, key_group: int, *, create: bool) -> _Instance | None:
        inst = self._instances.get(key_group)
        if inst is None and create:
            if self._closed:
                raise StateError("state backend 'rocksdb' is closed")
            path = self._kg_dir(key_group)
            if os.path.exists(path):
                shutil.rmtree(path)
            inst = self._instances[key_group] = self._open(key_group, path)
        return inst

    def _cf(self, key_group: int, state: str, *, create: bool) -> Any | None:
        inst = self._instances.get(key_group)
        if inst is not None:
            cf = inst.cfs.get(state)
            if cf is not None:
                return cf
        self._check(state)
        inst = self._instance(key_group, create=create)
        if inst is None or not create:
            return None
        cf = inst.db.create_column_family(state, self._options())
        cf.set_write_options(self._write_opts)
        inst.cfs[state] = cf
        return cf

    def _close_instance(self, key_group: int) -> None:
        inst = self._instances.pop(key_group, None)
        if inst is not None:
            inst.cfs.clear()
            inst.db.close()
            shutil.rmtree(inst.path, ignore_errors=True)

    # -- registration and access -----------------------------------------------------------
    def register(self, descriptor: StateDescriptor[Any]) -> None:
        existing = self._descriptors.get(descriptor.name)
        if existing is not None and existing.serializer.type_id != descriptor.serializer.type_id:
            raise StateError(
                f"state {descriptor.name!r} is already registered with serializer "
                f"{existing.serializer.type_id!r}, not {descriptor.serializer.type_id!r}"
            )
        if descriptor.name == _DEFAULT_CF:
            raise StateError(f"state name {descriptor.name!r} is reserved by RocksDB")
        self._descriptors[descriptor.name] = descriptor

    def _check(self, state: str) -> None:
        if self._closed:
            raise StateError("state backend 'rocksdb' is closed")
        if state not in self._descriptors:
            raise StateError(f"state {state!r} is not registered")

    def get(self, key_group: int, state: str, key: bytes) -> Any | None:
        cf = self._cf(key_group, state, create=False)
        if cf is None:
            return None
        raw = cf.get(key)
        if raw is None:
            return None
        serializer = self._descriptors[state].serializer
        return serializer.deserialize(raw, serializer.version)

    def put(self, key_group: int, state: str, key: bytes, value: Any) -> None:
        if value is None:
            raise StateError(f"state {state!r} cannot hold None (key {key!r}); delete instead")
        cf = self._cf(key_group, state, create=True)
        assert cf is not None
        cf.put(key, self._descriptors[state].serializer.serialize(value))

    def delete(self, key_group: int, state: str, key: bytes) -> None:
        cf = self._cf(key_group, state, create=False)
        if cf is not None:
            cf.delete(key)

    @staticmethod
    def _read_opts(stop: bytes | None) -> Any:
        ro = rocksdict.ReadOptions()
        if stop is not None:
            ro.set_iterate_upper_bound(stop)
        return ro

    def scan(
        self, key_group: int, state: str, start: bytes | None = None, stop: bytes | None = None
    ) -> Iterator[tuple[bytes, Any]]:
        cf = self._cf(key_group, state, create=False)
        if cf is None or (start is not None and stop is not None and start >= stop):
            return iter(())
        serializer = self._descriptors[state].serializer
        return _deserialized(cf.items(from_key=start, read_opt=self._read_opts(stop)), serializer)

    def delete_range(
        self, key_group: int, state: str, start: bytes | None = None, stop: bytes | None = None
    ) -> int:
        cf = self._cf(key_group, state, create=False)
        if cf is None or (start is not None and stop is not None and start >= stop):
            return 0
        keys: list[bytes] = list(cf.keys(from_key=start, read_opt=self._read_opts(stop)))
        if not keys:
            return 0
        if len(keys) <= _POINT_DELETE_LIMIT:
            for key in keys:
                cf.delete(key)
        else:
            cf.delete_range(start if start is not None else b"", stop or keys[-1] + b"\x00")
        return len(keys)

    def key_groups(self) -> frozenset[int]:
        return frozenset(
            kg
            for kg, inst in self._instances.items()
            if any(next(iter(cf.keys()), None) is not None for cf in inst.cfs.values())
        )

    def drop_key_group(self, key_group: int) -> None:
        self._close_instance(key_group)
        with self._lock:
            self._confirmed.pop(key_group, None)
        log.info("key group dropped backend=rocksdb owner=%s key_group=%d", self.owner, key_group)

    def size_bytes(self, key_group: int | None = None) -> int:
        groups = (
            self._instances.values()
            if key_group is None
            else [i for kg, i in self._instances.items() if kg == key_group]
        )
        total = 0
        for inst in groups:
            for cf in inst.cfs.values():
                total += cf.property_int_value("rocksdb.estimate-live-data-size") or 0
                total += cf.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
        return total

    def compact(self) -> None:
        """Flush memtables and fully compact every instance (benchmarks, tests)."""
        options = rocksdict.CompactOptions()
        options.set_bottommost_level_compaction(rocksdict.BottommostLevelCompaction.force())
        for inst in self._instances.values():
            for cf in inst.cfs.values():
                cf.flush()
                cf.compact_range(None, None, options)

    def disk_bytes(self) -> int:
        """Bytes of the local working directory (SST files, manifests)."""
        total = 0
        for dirpath, _, files in os.walk(self._dir):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
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
        self._settle(
            [i for kg in sorted(set(key_groups)) if (i := self._instances.get(kg)) is not None]
        )
        for key_group in sorted(set(key_groups)):
            inst = self._instances.get(key_group)
            serializers = (
                {
                    name: [
                        self._descriptors[name].serializer.type_id,
                        self._descriptors[name].serializer.version,
                    ]
                    for name in sorted(inst.cfs)
                }
                if inst is not None
                else {}
            )
            checkpoint_dir = None
            if inst is not None:
                checkpoint_dir = os.path.join(
                    self._dir, "snapshots", f"chk-{checkpoint_id}-kg-{key_group}"
                )
                if os.path.exists(checkpoint_dir):
                    shutil.rmtree(checkpoint_dir)
                os.makedirs(os.path.dirname(checkpoint_dir), exist_ok=True)
                rocksdict.Checkpoint(inst.db).create_checkpoint(checkpoint_dir)
            with self._lock:
                base = dict(self._confirmed.get(key_group, {}))
            captured.append(_Captured(key_group, checkpoint_dir, serializers, base))
        return _RocksDBAsyncSnapshot(self, checkpoint_id, captured, storage, incremental)

    def _settle(self, instances: Sequence[_Instance]) -> None:
        """Flush the memtables, then wait (at most ``compaction_wait_s`` in all) for the
        compactions those flushes started: a checkpoint taken right after would reference (and
        upload) level-0 files that the compaction is about to replace, so its size would depend
        on a race (docs/state.md)."""
        if self._compaction_wait_s <= 0 or not instances:
            return
        for inst in instances:
            for cf in inst.cfs.values():
                cf.flush()
        started = time.monotonic()
        deadline = started + self._compaction_wait_s
        while time.monotonic() < deadline and any(_compacting(inst) for inst in instances):
            time.sleep(0.005)
        waited = time.monotonic() - started
        if waited >= self._compaction_wait_s:
            log.info(
                "checkpoint did not wait for compactions to end owner=%s waited_s=%.3f",
                self.owner,
                waited,
            )

    def _record_uploads(
        self, checkpoint_id: int, key_group: int, ssts: dict[str, StreamStateHandle]
    ) -> None:
        with self._lock:
            self._pending_uploads.setdefault(checkpoint_id, {})[key_group] = ssts

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Base the next incremental snapshots on this checkpoint's uploaded SST files."""
        with self._lock:
            done = self._pending_uploads.pop(checkpoint_id, {})
            for key_group, ssts in done.items():
                if key_group in self._instances:
                    self._confirmed[key_group] = ssts
            for older in [c for c in self._pending_uploads if c < checkpoint_id]:
                del self._pending_uploads[older]
        log.debug(
            "checkpoint confirmed backend=rocksdb owner=%s checkpoint_id=%d key_groups=%d",
            self.owner,
            checkpoint_id,
            len(done),
        )
        if self._tune_malloc:
            release_after_checkpoint(checkpoint_id)

    def restore(self, handles: Sequence[KeyGroupStateHandle], storage: CheckpointStorage) -> None:
        for handle in handles:
            kind = handle.metadata.get("kind", "full")
            self._close_instance(handle.key_group)
            with self._lock:
                self._confirmed.pop(handle.key_group, None)
            if kind == "incremental":
                self._restore_incremental(handle, storage)
            else:
                self._restore_full(handle, storage)
            log.info(
                "key group restored backend=rocksdb owner=%s key_group=%d kind=%s from_backend=%s",
                self.owner,
                handle.key_group,
                kind,
                handle.backend,
            )

    def _restore_full(self, handle: KeyGroupStateHandle, storage: CheckpointStorage) -> None:
        """A full snapshot file, or the segments of an incremental heap checkpoint."""
        sections = [
            (check_section(self._descriptors, s), s) for s in read_sections(handle, storage)
        ]
        if not sections:
            return
        for descriptor, section in sections:
            self._cf(handle.key_group, descriptor.name, create=True)
            inst = self._instances[handle.key_group]
            cf_handle = inst.db.get_column_family_handle(descriptor.name)
            serializer = descriptor.serializer
            same = section.serializer_version == serializer.version
            for i in range(0, len(section.entries), _BATCH):
                batch = rocksdict.WriteBatch(raw_mode=True)
                batch.set_default_column_family(cf_handle)
                for key, value in section.entries[i : i + _BATCH]:
                    if not same:
                        value = serializer.serialize(
                            serializer.deserialize(value, section.serializer_version)
                        )
                    batch.put(key, value)
                inst.db.write(batch, self._write_opts)

    def _restore_incremental(self, handle: KeyGroupStateHandle, storage: CheckpointStorage) -> None:
        if handle.backend != self.name:
            raise StateError(
                f"key group {handle.key_group} holds an incremental {handle.backend!r} snapshot, "
                "which only that backend reads"
            )
        if handle.format_version != INCREMENTAL_FORMAT_VERSION:
            raise StateError(
                f"incremental RocksDB snapshot format {handle.format_version!r} is not supported "
                f"(reads {INCREMENTAL_FORMAT_VERSION!r})"
            )
        layout: dict[str, str] = json.loads(handle.metadata["layout"])
        serializers: dict[str, list[Any]] = json.loads(handle.metadata["serializers"])
        for name, (type_id, version) in serializers.items():
            check_section(
                self._descriptors, snapshot_format.StateSection(name, type_id, version, ())
            )
        by_path = {h.path: h for h in (*handle.private, *handle.shared)}
        path = self._kg_dir(handle.key_group)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.makedirs(path)
        for local_name, stored in sorted(layout.items()):
            if os.sep in local_name or local_name.startswith("."):
                raise StateError(f"bad file name in snapshot layout: {local_name!r}")
            data = storage.read_file(by_path[stored])
            with open(os.path.join(path, local_name), "wb") as f:
                f.write(data)
        inst = self._instances[handle.key_group] = self._open(handle.key_group, path)
        for name, (_, version) in serializers.items():
            serializer = self._descriptors[name].serializer
            if version != serializer.version:  # migrate values to the current format
                cf = inst.cfs[name]
                for key, raw in list(cf.items()):
                    cf.put(key, serializer.serialize(serializer.deserialize(raw, version)))

    def close(self) -> None:
        if self._closed:
            return
        for key_group in list(self._instances):
            inst = self._instances.pop(key_group)
            inst.cfs.clear()
            inst.db.close()
        self._closed = True
        shutil.rmtree(self._dir, ignore_errors=True)
        if self._temp_root:
            shutil.rmtree(os.path.dirname(self._dir), ignore_errors=True)


def _deserialized(
    items: Iterator[tuple[bytes, bytes]], serializer: Any
) -> Iterator[tuple[bytes, Any]]:
    deserialize, version = serializer.deserialize, serializer.version
    for key, raw in items:
        yield key, deserialize(raw, version)


class _RocksDBAsyncSnapshot(AsyncSnapshot):
    def __init__(
        self,
        backend: RocksDBKeyedStateBackend,
        checkpoint_id: int,
        captured: list[_Captured],
        storage: CheckpointStorage,
        incremental: bool,
    ) -> None:
        self._backend = backend
        self._checkpoint_id = checkpoint_id
        self._captured = captured
        self._storage = storage
        self._incremental = incremental

    def run(self) -> list[KeyGroupStateHandle]:
        started = time.perf_counter()
        handles: list[KeyGroupStateHandle] = []
        uploaded = 0
        try:
            for cap in self._captured:
                if self._incremental and cap.checkpoint_dir is not None:
                    handle, n = self._upload_incremental(cap)
                    uploaded += n
                else:
                    handle = self._write_full(cap)
                handles.append(handle)
        finally:
            for cap in self._captured:
                if cap.checkpoint_dir is not None:
                    shutil.rmtree(cap.checkpoint_dir, ignore_errors=True)
        log.debug(
            "rocksdb snapshot persisted checkpoint_id=%d owner=%s incremental=%s key_groups=%d "
            "bytes=%d new_shared_files=%d duration_ms=%.1f",
            self._checkpoint_id,
            self._backend.owner,
            self._incremental,
            len(handles),
            sum(h.size for h in handles),
            uploaded,
            (time.perf_counter() - started) * 1e3,
        )
        return handles

    def _upload_incremental(self, cap: _Captured) -> tuple[KeyGroupStateHandle, int]:
        assert cap.checkpoint_dir is not None
        owner, cid, storage = self._backend.owner, self._checkpoint_id, self._storage
        layout: dict[str, str] = {}
        private: list[StreamStateHandle] = []
        shared: list[StreamStateHandle] = []
        ssts: dict[str, StreamStateHandle] = {}
        uploaded = 0
        written = 0
        for name in sorted(os.listdir(cap.checkpoint_dir)):
            full = os.path.join(cap.checkpoint_dir, name)
            if name.endswith(".sst"):
                sst = cap.base.get(name)
                if sst is None:
                    with open(full, "rb") as f:
                        data = f.read()
                    digest = hashlib.sha256(data).hexdigest()
                    sst = StreamStateHandle(f"shared/{digest}.sst", len(data), digest)
                    if not storage.exists(sst.path):
                        storage.write_atomic(sst.path, data)
                        uploaded += 1
                        written += len(data)
                ssts[name] = sst
                shared.append(sst)
                layout[name] = sst.path
            else:
                with open(full, "rb") as f:
                    data = f.read()
                target = f"chk-{cid}/{owner}/kg-{cap.key_group}/{name}"
                file_handle = storage.write_file(target, data)
                written += len(data)
                private.append(file_handle)
                layout[name] = file_handle.path
        self._backend._record_uploads(cid, cap.key_group, ssts)
        handle = KeyGroupStateHandle(
            key_group=cap.key_group,
            backend=self._backend.name,
            format_version=INCREMENTAL_FORMAT_VERSION,
            private=tuple(private),
            shared=tuple(shared),
            metadata={
                "kind": "incremental",
                "layout": json.dumps(layout, sort_keys=True),
                "serializers": json.dumps(cap.serializers, sort_keys=True),
                "written_bytes": str(written),
            },
        )
        return handle, uploaded

    def _write_full(self, cap: _Captured) -> KeyGroupStateHandle:
        sections: list[snapshot_format.StateSection] = []
        if cap.checkpoint_dir is not None:
            db = rocksdict.Rdict(
                cap.checkpoint_dir,
                rocksdict.Options(raw_mode=True),
                column_families={n: rocksdict.Options(raw_mode=True) for n in cap.serializers},
                access_type=rocksdict.AccessType.read_only(),
            )
            try:
                for name, (type_id, version) in sorted(cap.serializers.items()):
                    items: Any = db.get_column_family(name).items()
                    entries: list[tuple[bytes, bytes]] = list(items)
                    if entries:
                        sections.append(
                            snapshot_format.StateSection(name, type_id, version, entries)
                        )
            finally:
                db.close()
        blob = snapshot_format.encode(
            cap.key_group, self._checkpoint_id, self._backend.name, sections
        )
        path = snapshot_path(self._checkpoint_id, self._backend.owner, cap.key_group)
        return full_snapshot_handle(
            cap.key_group, self._backend.name, self._storage.write_file(path, blob), sections
        )


def _compacting(inst: _Instance) -> bool:
    """Whether a compaction runs, or is due, in the instance."""
    if inst.db.property_int_value("rocksdb.num-running-compactions"):
        return True
    return any(cf.property_int_value("rocksdb.compaction-pending") for cf in inst.cfs.values())
