"""Full snapshots are in one canonical format: either backend restores the other's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.errors import StateError
from metricsflow.state import (
    MSGPACK,
    NUMPY_COLUMNS,
    ColumnarChunk,
    KeyedStateBackend,
    StateBackendConfig,
    StateDescriptor,
)
from metricsflow.state.config import BackendName


def build(kind: BackendName, tmp_path: Path) -> KeyedStateBackend:
    backend = StateBackendConfig(backend=kind, local_dir=str(tmp_path / f"local-{kind}")).build()
    backend.register(StateDescriptor("windows", MSGPACK))
    backend.register(StateDescriptor("chunks", NUMPY_COLUMNS))
    return backend


@pytest.mark.parametrize(("source_kind", "target_kind"), [("heap", "rocksdb"), ("rocksdb", "heap")])
def test_full_snapshot_restores_into_the_other_backend(
    tmp_path: Path, source_kind: BackendName, target_kind: BackendName
) -> None:
    source, target = build(source_kind, tmp_path), build(target_kind, tmp_path)
    chunk = ColumnarChunk({"ts_ns": np.arange(4, dtype=np.int64)}, keys=("k",))
    for i in range(50):
        source.put(i % 2, "windows", i.to_bytes(2, "big"), {"n": i})
    source.put(0, "chunks", b"c", chunk)
    storage = FsCheckpointStorage(str(tmp_path / "savepoint"))

    handles = source.snapshot(1, [0, 1], storage, incremental=False).run()
    target.restore(handles, storage)

    for kg in (0, 1):
        assert list(target.scan(kg, "windows")) == list(source.scan(kg, "windows"))
    assert target.get(0, "chunks", b"c") == chunk
    source.close()
    target.close()


def test_heap_refuses_an_incremental_rocksdb_snapshot_with_a_clear_message(tmp_path: Path) -> None:
    source, target = build("rocksdb", tmp_path), build("heap", tmp_path)
    source.put(0, "windows", b"k", {"n": 1})
    storage = FsCheckpointStorage(str(tmp_path / "chk"))
    handles = source.snapshot(1, [0], storage, incremental=True).run()

    with pytest.raises(StateError, match=r"not a full snapshot.*take a savepoint"):
        target.restore(handles, storage)
    source.close()
