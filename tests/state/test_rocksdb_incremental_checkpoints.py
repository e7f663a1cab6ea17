"""RocksDB only: incremental checkpoints share SST files, reference-counted across checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metricsflow.checkpointing.shared_registry import SharedStateRegistry
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.state import INT64, RocksDBKeyedStateBackend, StateDescriptor


@pytest.fixture
def rocksdb_backend_factory(tmp_path: Path) -> Iterator[Callable[[], RocksDBKeyedStateBackend]]:
    built: list[RocksDBKeyedStateBackend] = []

    def make() -> RocksDBKeyedStateBackend:
        backend = RocksDBKeyedStateBackend(str(tmp_path / f"local-{len(built)}"), "op")
        backend.register(StateDescriptor("counts", INT64))
        built.append(backend)
        return backend

    yield make
    for backend in built:
        backend.close()


def fill(backend: RocksDBKeyedStateBackend, key_group: int, start: int, stop: int) -> None:
    for i in range(start, stop):
        backend.put(key_group, "counts", i.to_bytes(4, "big"), i)


def test_incremental_checkpoint_uploads_only_files_that_are_new(
    rocksdb_backend_factory: Callable[[], RocksDBKeyedStateBackend],
    tmp_path: Path,
) -> None:
    backend = rocksdb_backend_factory()
    storage = FsCheckpointStorage(str(tmp_path / "chk"))
    fill(backend, 0, 0, 1000)
    first = backend.snapshot(1, [0], storage).run()[0]
    backend.notify_checkpoint_complete(1)
    uploaded_after_first = set(storage.list_dir("shared"))
    fill(backend, 0, 1000, 2000)

    second = backend.snapshot(2, [0], storage).run()[0]

    first_paths = {h.path for h in first.shared}
    second_paths = {h.path for h in second.shared}
    assert first_paths
    assert first_paths < second_paths
    new_uploads = set(storage.list_dir("shared")) - uploaded_after_first
    assert {f"shared/{name}" for name in new_uploads} == second_paths - first_paths
    assert len(new_uploads) == 1
    assert all(h.path.startswith("chk-2/op/kg-0/") for h in second.private)
    assert second.metadata["kind"] == "incremental"


def test_incremental_checkpoint_without_confirmation_reuses_files_already_in_storage(
    rocksdb_backend_factory: Callable[[], RocksDBKeyedStateBackend],
    tmp_path: Path,
) -> None:
    backend = rocksdb_backend_factory()
    storage = FsCheckpointStorage(str(tmp_path / "chk"))
    fill(backend, 0, 0, 100)
    first = backend.snapshot(1, [0], storage).run()[0]

    second = backend.snapshot(2, [0], storage).run()[0]

    assert {h.path for h in first.shared} == {h.path for h in second.shared}
    assert len(storage.list_dir("shared")) == len(first.shared)


def test_shared_files_are_deleted_when_no_retained_checkpoint_needs_them(
    rocksdb_backend_factory: Callable[[], RocksDBKeyedStateBackend],
    tmp_path: Path,
) -> None:
    backend = rocksdb_backend_factory()
    storage = FsCheckpointStorage(str(tmp_path / "chk"))
    registry = SharedStateRegistry()
    fill(backend, 0, 0, 500)
    first = backend.snapshot(1, [0], storage).run()
    backend.notify_checkpoint_complete(1)
    registry.register(1, first)
    fill(backend, 0, 500, 1000)
    backend.compact()  # the SSTs of checkpoint 1 are compacted away
    second = backend.snapshot(2, [0], storage).run()
    backend.notify_checkpoint_complete(2)
    registry.register(2, second)

    unused = registry.release(1)
    for handle in unused:
        storage.delete(handle.path)

    assert {h.path for h in unused} == {h.path for h in first[0].shared}
    assert {h.path for h in unused}.isdisjoint(h.path for h in second[0].shared)
    restored = rocksdb_backend_factory()
    restored.restore(second, storage)
    assert [v for _, v in restored.scan(0, "counts")] == list(range(1000))


def test_restore_from_an_incremental_chain_recovers_every_checkpointed_write(
    rocksdb_backend_factory: Callable[[], RocksDBKeyedStateBackend],
    tmp_path: Path,
) -> None:
    backend = rocksdb_backend_factory()
    storage = FsCheckpointStorage(str(tmp_path / "chk"))
    for checkpoint_id in range(1, 4):
        fill(backend, 0, (checkpoint_id - 1) * 100, checkpoint_id * 100)
        backend.delete(0, "counts", (checkpoint_id * 10).to_bytes(4, "big"))
        handles = backend.snapshot(checkpoint_id, [0], storage).run()
        backend.notify_checkpoint_complete(checkpoint_id)
    fill(backend, 0, 300, 400)  # after the last checkpoint: lost on restore, as it should be

    restored = rocksdb_backend_factory()
    restored.restore(handles, storage)

    expected = [i for i in range(300) if i not in (10, 20, 30)]
    assert [v for _, v in restored.scan(0, "counts")] == expected
    assert len(handles[0].shared) >= 3
    restored.put(0, "counts", b"\xff\xff\xff\xff", 1)  # the restored instance is writable
    next_handles = restored.snapshot(4, [0], storage).run()
    again = rocksdb_backend_factory()
    again.restore(next_handles, storage)
    assert again.get(0, "counts", b"\xff\xff\xff\xff") == 1


def test_full_snapshot_is_self_contained_without_shared_files(
    rocksdb_backend_factory: Callable[[], RocksDBKeyedStateBackend],
    tmp_path: Path,
) -> None:
    backend = rocksdb_backend_factory()
    storage = FsCheckpointStorage(str(tmp_path / "savepoint"))
    fill(backend, 0, 0, 100)

    handles = backend.snapshot(7, [0], storage, incremental=False).run()

    assert handles[0].shared == ()
    assert handles[0].metadata["kind"] == "full"
    assert storage.list_dir("shared") == []
    assert [h.path for h in handles[0].private] == ["chk-7/op/kg-0.mfks"]


def test_a_checkpoint_waits_for_the_compaction_its_own_flush_started(tmp_path: Path) -> None:
    """Every snapshot flushes one level-0 file; the fourth starts a compaction (RocksDB's
    trigger is 4 files). The checkpoint waits for it, so it references the compacted file,
    not the four it replaces (which would make checkpoint sizes depend on a race)."""
    backend = RocksDBKeyedStateBackend(str(tmp_path / "local"), "op", compaction_wait_s=30)
    backend.register(StateDescriptor("counts", INT64))
    storage = FsCheckpointStorage(str(tmp_path / "chk"))
    try:
        sst_counts = []
        for checkpoint_id in range(1, 5):
            fill(backend, 0, 0, 2000)  # the same keys again: a compaction keeps one version
            handles = backend.snapshot(checkpoint_id, [0], storage).run()
            backend.notify_checkpoint_complete(checkpoint_id)
            sst_counts.append(sum(1 for h in handles[0].shared if h.path.endswith(".sst")))
        assert sst_counts[:3] == [1, 2, 3]
        assert sst_counts[3] == 1, sst_counts
    finally:
        backend.close()
