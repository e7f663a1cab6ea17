"""Heap only: incremental checkpoints write the segments that changed and reference the rest,
reference-counted across checkpoints like RocksDB's SST files (state/heap_segments.py)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metricsflow.checkpointing.shared_registry import (
    SharedStateRegistry,
    delete_shared_files,
    remove_unreferenced_shared_files,
)
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.errors import CheckpointError, StateError
from metricsflow.state import (
    INT64,
    STR,
    HeapKeyedStateBackend,
    RocksDBKeyedStateBackend,
    StateDescriptor,
)
from metricsflow.state.handles import KeyGroupStateHandle
from metricsflow.state.heap_segments import KIND


def heap(segment_bytes: int = 1024) -> HeapKeyedStateBackend:
    backend = HeapKeyedStateBackend("op", segment_bytes=segment_bytes)
    backend.register(StateDescriptor("names", STR))
    backend.register(StateDescriptor("counts", INT64))
    return backend


def key(i: int) -> bytes:
    return i.to_bytes(4, "big")


def contents(backend: HeapKeyedStateBackend, key_group: int = 0) -> dict[str, dict[bytes, object]]:
    return {
        state: dict(backend.scan(key_group, state))
        for state in ("names", "counts")
        if any(True for _ in backend.scan(key_group, state))
    }


def restored(handle: KeyGroupStateHandle, storage: FsCheckpointStorage) -> HeapKeyedStateBackend:
    fresh = heap()
    fresh.restore([handle], storage)
    return fresh


def written(handle: KeyGroupStateHandle) -> int:
    return int(handle.metadata["written_bytes"])


def test_a_checkpoint_rewrites_only_the_segments_that_changed(tmp_path: Path) -> None:
    backend = heap(segment_bytes=4096)
    storage = FsCheckpointStorage(str(tmp_path))
    for i in range(20_000):
        backend.put(0, "names", key(i), f"series-{i:06d}")
    first = backend.snapshot(1, [0], storage).run()[0]
    backend.notify_checkpoint_complete(1)
    backend.put(0, "names", key(10_000), "changed")
    backend.delete(0, "names", key(3))

    second = backend.snapshot(2, [0], storage).run()[0]

    assert first.metadata["kind"] == second.metadata["kind"] == KIND
    assert written(first) == first.size > 400_000
    assert 0 < written(second) < 3 * 2 * 4096  # two segments of at most twice the target
    assert {h.path for h in first.shared} < {h.path for h in second.shared} | {
        h.path for h in first.shared
    }
    assert len({h.path for h in second.shared} - {h.path for h in first.shared}) == 1
    assert contents(restored(second, storage)) == contents(backend)


def test_nothing_changed_means_nothing_written(tmp_path: Path) -> None:
    backend = heap()
    storage = FsCheckpointStorage(str(tmp_path))
    for i in range(100):
        backend.put(0, "counts", key(i), i)
    first = backend.snapshot(1, [0], storage).run()[0]
    backend.notify_checkpoint_complete(1)

    second = backend.snapshot(2, [0], storage).run()[0]

    assert written(second) == 0
    assert second.shared == first.shared
    assert storage.list_dir("shared") == ["chk-1"]


def test_changes_since_the_last_completed_checkpoint_count_when_one_in_between_failed(
    tmp_path: Path,
) -> None:
    backend = heap(segment_bytes=64)
    storage = FsCheckpointStorage(str(tmp_path))
    for i in range(200):
        backend.put(0, "counts", key(i), i)
    backend.snapshot(1, [0], storage).run()
    backend.notify_checkpoint_complete(1)
    backend.put(0, "counts", key(5), -5)
    backend.snapshot(2, [0], storage).run()  # aborted: never completed, its files deleted
    storage.delete("shared/chk-2")
    backend.put(0, "counts", key(150), -150)

    third = backend.snapshot(3, [0], storage).run()[0]

    assert not any(h.path.startswith("shared/chk-2/") for h in third.shared)
    state = contents(restored(third, storage))["counts"]
    assert state[key(5)] == -5
    assert state[key(150)] == -150


Op = tuple[str, int, int]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 300), st.integers(-(2**40), 2**40)),
        st.tuples(st.just("delete"), st.integers(0, 300), st.just(0)),
        st.tuples(st.just("delete_range"), st.integers(0, 300), st.integers(0, 60)),
        st.tuples(st.just("checkpoint"), st.integers(0, 2), st.just(0)),
    ),
    max_size=200,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS, segment_bytes=st.integers(1, 300))
def test_every_checkpoint_of_a_chain_restores_exactly_the_state_it_captured(
    tmp_path_factory: pytest.TempPathFactory, ops: list[Op], segment_bytes: int
) -> None:
    """Random writes, deletes, range deletes and checkpoints (completed, aborted, or left
    pending), retention of one checkpoint with the registry deleting what nobody references:
    each checkpoint restores to the model at its snapshot, and so does the retained one at
    the end (its files were never deleted under it)."""
    storage = FsCheckpointStorage(str(tmp_path_factory.mktemp("chk")))
    backend = heap(segment_bytes)
    registry = SharedStateRegistry()
    model: dict[bytes, int] = {}
    retained: tuple[int, KeyGroupStateHandle, dict[bytes, int]] | None = None
    checkpoint_id = 0
    for op, a, b in ops:
        if op == "put":
            backend.put(0, "counts", key(a), b)
            model[key(a)] = b
        elif op == "delete":
            backend.delete(0, "counts", key(a))
            model.pop(key(a), None)
        elif op == "delete_range":
            backend.delete_range(0, "counts", key(a), key(a + b))
            for k in [k for k in model if key(a) <= k < key(a + b)]:
                del model[k]
        else:
            checkpoint_id += 1
            handle = backend.snapshot(checkpoint_id, [0], storage).run()[0]
            assert dict(restored(handle, storage).scan(0, "counts")) == model
            if a == 0:  # completed: registered before the previous one is released
                registry.register(checkpoint_id, [handle])
                if retained is not None:
                    delete_shared_files(storage, registry.release(retained[0]))
                backend.notify_checkpoint_complete(checkpoint_id)
                retained = (checkpoint_id, handle, dict(model))
            elif a == 1:  # aborted: the coordinator deletes what it wrote
                storage.delete(f"shared/chk-{checkpoint_id}")
    if retained is not None:
        assert dict(restored(retained[1], storage).scan(0, "counts")) == retained[2]
        remove_unreferenced_shared_files(storage, registry.referenced_paths())
        assert dict(restored(retained[1], storage).scan(0, "counts")) == retained[2]


def test_what_a_checkpoint_references_stays_within_one_and_a_half_times_the_live_state(
    tmp_path: Path,
) -> None:
    """A sliding window of time-ordered keys (appends at the end, a range delete at the front,
    as window firing does, and rewrites in the middle, as late data does): dead sections pile
    up in old files until their live segments are moved out (each earlier file a checkpoint
    references is at least two thirds live)."""
    backend = heap(segment_bytes=2048)
    storage = FsCheckpointStorage(str(tmp_path))
    registry = SharedStateRegistry()
    for round_ in range(1, 80):
        for i in range(round_ * 100, round_ * 100 + 100):
            backend.put(0, "names", key(i), f"window-{i:08d}")
        backend.put(0, "names", key(max(0, round_ * 100 - 1500)), f"late-{round_:08d}")
        backend.delete_range(0, "names", None, key(max(0, round_ * 100 - 3000)))
        handle = backend.snapshot(round_, [0], storage).run()[0]
        registry.register(round_, [handle])
        delete_shared_files(storage, registry.release(round_ - 1))
        backend.notify_checkpoint_complete(round_)
        live = sum(len(k) + len(v.encode()) + 8 for k, v in backend.scan(0, "names"))
        assert handle.size <= 1.5 * live + written(handle) + 1024, round_
        stored = sum(
            (tmp_path / "shared" / d / f).stat().st_size
            for d in storage.list_dir("shared")
            for f in storage.list_dir(f"shared/{d}")
        )
        assert stored == handle.size  # nothing left behind that nobody references
    assert dict(restored(handle, storage).scan(0, "names")) == dict(backend.scan(0, "names"))


def test_a_savepoint_is_self_contained_whatever_the_incremental_chain(tmp_path: Path) -> None:
    backend = heap()
    storage = FsCheckpointStorage(str(tmp_path / "chk"))
    for i in range(500):
        backend.put(0, "names", key(i), str(i))
    backend.snapshot(1, [0], storage).run()
    backend.notify_checkpoint_complete(1)
    backend.put(0, "names", key(1), "one")
    savepoints = FsCheckpointStorage(str(tmp_path / "sp"))

    savepoint = backend.snapshot(2, [0], savepoints, incremental=False).run()[0]

    assert savepoint.metadata["kind"] == "full"
    assert not savepoint.shared
    assert contents(restored(savepoint, savepoints)) == contents(backend)
    third = backend.snapshot(3, [0], storage).run()[0]  # the savepoint did not reset tracking
    assert contents(restored(third, storage))["names"][key(1)] == "one"


def test_a_partition_restored_from_another_root_is_checkpointed_whole_into_its_own(
    tmp_path: Path,
) -> None:
    """The new owner restores a chain living in the old owner's root, then its first
    checkpoint references only files of its own root: the old root can go."""
    old_root = FsCheckpointStorage(str(tmp_path / "worker-a"))
    old = heap(segment_bytes=256)
    for n in range(1, 4):
        for i in range(n * 100):
            old.put(0, "counts", key(i), i * n)
        handle = old.snapshot(n, [0], old_root).run()[0]
        old.notify_checkpoint_complete(n)
    new_root = FsCheckpointStorage(str(tmp_path / "worker-b"))
    new = heap(segment_bytes=256)
    new.restore([handle], old_root)
    new.put(0, "counts", key(7), -7)

    mine = new.snapshot(9, [0], new_root).run()[0]

    assert written(mine) == mine.size
    assert all(new_root.exists(h.path) for h in mine.shared)
    old_root.delete("shared")
    state = contents(restored(mine, new_root))["counts"]
    assert state[key(7)] == -7
    assert state[key(250)] == 750
    assert len(state) == 300


def test_rocksdb_restores_an_incremental_heap_checkpoint(tmp_path: Path) -> None:
    backend = heap(segment_bytes=128)
    storage = FsCheckpointStorage(str(tmp_path / "chk"))
    for i in range(300):
        backend.put(0, "counts", key(i), i)
    backend.snapshot(1, [0], storage).run()
    backend.notify_checkpoint_complete(1)
    backend.put(0, "counts", key(3), 33)
    handle = backend.snapshot(2, [0], storage).run()[0]
    target = RocksDBKeyedStateBackend(str(tmp_path / "rocks"), "op")
    target.register(StateDescriptor("counts", INT64))
    try:
        target.restore([handle], storage)
        assert dict(target.scan(0, "counts")) == dict(backend.scan(0, "counts"))
    finally:
        target.close()


def test_a_damaged_segment_file_fails_the_restore_naming_it(tmp_path: Path) -> None:
    backend = heap()
    storage = FsCheckpointStorage(str(tmp_path))
    backend.put(0, "names", key(1), "x")
    handle = backend.snapshot(1, [0], storage).run()[0]
    victim = tmp_path / handle.shared[0].path
    victim.write_bytes(b"y" + victim.read_bytes()[1:])
    with pytest.raises(CheckpointError, match="SHA-256"):
        heap().restore([handle], storage)


def test_persisting_a_snapshot_logs_nothing_at_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = heap()
    storage = FsCheckpointStorage(str(tmp_path))
    backend.put(0, "names", key(1), "x")
    with caplog.at_level(logging.INFO, logger="metricsflow.state"):
        backend.snapshot(1, [0, 1, 2], storage).run()
        backend.snapshot(2, [0, 1, 2], storage, incremental=False).run()
    assert [r.getMessage() for r in caplog.records] == []


def test_a_segments_handle_of_an_unknown_format_version_is_refused_naming_it(
    tmp_path: Path,
) -> None:
    backend = heap()
    storage = FsCheckpointStorage(str(tmp_path))
    backend.put(0, "names", key(1), "x")
    handle = backend.snapshot(1, [0], storage).run()[0]
    future = dataclasses.replace(handle, format_version=2)
    with pytest.raises(StateError, match="heap segment format 2 is not supported"):
        heap().restore([future], storage)


def test_a_checkpoint_in_the_full_format_restores_and_the_next_one_is_incremental(
    tmp_path: Path,
) -> None:
    """Checkpoints written before incremental heap checkpoints (full files) still restore."""
    old = heap()
    storage = FsCheckpointStorage(str(tmp_path))
    for i in range(100):
        old.put(0, "counts", key(i), i)
    full = old.snapshot(1, [0], storage, incremental=False).run()[0]
    backend = heap()
    backend.restore([full], storage)
    backend.put(0, "counts", key(1), -1)

    handle = backend.snapshot(2, [0], storage).run()[0]

    assert full.metadata["kind"] == "full"
    assert handle.metadata["kind"] == KIND
    assert dict(restored(handle, storage).scan(0, "counts")) == {
        **{key(i): i for i in range(100)},
        key(1): -1,
    }
