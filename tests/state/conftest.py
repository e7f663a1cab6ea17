"""Fixtures for the keyed state backend suite.

- ``state_backend_factory`` (parametrized: heap, rocksdb): ``make(owner="op")`` builds a
  backend through ``StateBackendConfig`` with the standard test states registered; every
  backend built is closed at the end of the test. ``.kind`` names the backend.
- ``storage_factory``: ``make()`` returns a fresh ``FsCheckpointStorage`` on a new local dir.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.state import (
    INT64,
    MSGPACK,
    NUMPY_COLUMNS,
    STR,
    KeyedStateBackend,
    StateBackendConfig,
    StateDescriptor,
)

STANDARD_STATES = (
    StateDescriptor("windows", MSGPACK),
    StateDescriptor("counts", INT64),
    StateDescriptor("names", STR),
    StateDescriptor("chunks", NUMPY_COLUMNS),
)


@dataclass
class BackendFactory:
    kind: str
    root: Path
    built: list[KeyedStateBackend] = field(default_factory=list)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def __call__(self, owner: str = "op", *, register: bool = True) -> KeyedStateBackend:
        local_dir = self.root / f"local-{next(self.counter)}"
        backend = StateBackendConfig(
            backend="heap" if self.kind == "heap" else "rocksdb",
            local_dir=str(local_dir),
            rocksdb_block_cache_bytes=4 << 20,
            rocksdb_write_buffer_bytes=1 << 20,
            rocksdb_write_buffer_budget_bytes=8 << 20,
        ).build(owner)
        if register:
            for descriptor in STANDARD_STATES:
                backend.register(descriptor)
        self.built.append(backend)
        return backend


@pytest.fixture(params=["heap", "rocksdb"])
def state_backend_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[BackendFactory]:
    factory = BackendFactory(kind=request.param, root=tmp_path / "backends")
    yield factory
    for backend in factory.built:
        backend.close()


@pytest.fixture
def storage_factory(tmp_path: Path) -> Callable[[], FsCheckpointStorage]:
    counter = itertools.count()

    def make() -> FsCheckpointStorage:
        return FsCheckpointStorage(str(tmp_path / f"checkpoints-{next(counter)}"))

    return make
