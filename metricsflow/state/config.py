"""``StateBackendConfig``: which keyed state backend a worker uses, and how it is tuned.

Config objects build runtime logic: ``StateBackendConfig(...).build(owner)`` returns the
backend. Whether snapshots are incremental is a checkpoint setting
(``CheckpointConfig.incremental``), not a backend one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from metricsflow.errors import ConfigurationError
from metricsflow.state.base import KeyedStateBackend

BackendName = Literal["heap", "rocksdb"]


@dataclass(frozen=True, slots=True)
class StateBackendConfig:
    """Settings of the keyed state backend.

    - ``backend``: ``"heap"`` (default; state as Python objects, fastest) or ``"rocksdb"``
      (embedded RocksDB on local disk: state larger than memory).
    - ``local_dir``: RocksDB working directory (disposable: wiped at start, since checkpoints
      are the durable copy); ``None`` = a fresh temporary directory.
    - ``rocksdb_block_cache_bytes``: one LRU block cache shared by every RocksDB backend and
      instance of the process (read cache; bounds read memory).
    - ``rocksdb_write_buffer_bytes``: memtable size per column family (one per state).
    - ``rocksdb_write_buffer_budget_bytes``: all memtables of the process together (a shared
      write-buffer manager, charged to the block cache).
    - ``rocksdb_max_open_files``: open SST files per instance.
    - ``rocksdb_tune_malloc``: glibc's malloc with one arena for all threads (set at the first
      RocksDB backend of the process), and the memory it keeps free given back to the OS once
      per completed checkpoint (process-wide; see ``metricsflow.state.allocator``).
    - ``rocksdb_compaction_wait_s``: a checkpoint flushes the memtables, then waits at most
      this long (in all, per snapshot) for the compactions the flushes started, so it never
      references level-0 files about to be replaced (0: do not wait).
    """

    backend: BackendName = "heap"
    local_dir: str | None = None
    rocksdb_block_cache_bytes: int = 64 << 20
    rocksdb_write_buffer_bytes: int = 8 << 20
    rocksdb_write_buffer_budget_bytes: int = 64 << 20
    rocksdb_max_open_files: int = 256
    rocksdb_tune_malloc: bool = True
    rocksdb_compaction_wait_s: float = 0.25

    def __post_init__(self) -> None:
        if self.backend not in ("heap", "rocksdb"):
            raise ConfigurationError(
                f"state backend must be 'heap' or 'rocksdb', got backend={self.backend!r}"
            )
        for name in (
            "rocksdb_block_cache_bytes",
            "rocksdb_write_buffer_bytes",
            "rocksdb_write_buffer_budget_bytes",
        ):
            value = getattr(self, name)
            if value < (1 << 20):
                raise ConfigurationError(f"{name} must be at least 1 MiB, got {value!r}")
        if not 0 <= self.rocksdb_compaction_wait_s <= 60:
            raise ConfigurationError(
                "rocksdb_compaction_wait_s must be between 0 and 60 s, "
                f"got {self.rocksdb_compaction_wait_s!r}"
            )
        if self.rocksdb_max_open_files < 16 and self.rocksdb_max_open_files != -1:
            raise ConfigurationError(
                "rocksdb_max_open_files must be -1 (unlimited) or at least 16, "
                f"got {self.rocksdb_max_open_files!r}"
            )

    def build(self, owner: str = "keyed") -> KeyedStateBackend:
        """The backend; ``owner`` (an operator uid or task name) namespaces its files."""
        if self.backend == "heap":
            from metricsflow.state.heap import HeapKeyedStateBackend

            return HeapKeyedStateBackend(owner=owner)
        from metricsflow.state.rocksdb import RocksDBKeyedStateBackend

        return RocksDBKeyedStateBackend(
            self.local_dir,
            owner,
            block_cache_bytes=self.rocksdb_block_cache_bytes,
            write_buffer_bytes=self.rocksdb_write_buffer_bytes,
            write_buffer_budget_bytes=self.rocksdb_write_buffer_budget_bytes,
            max_open_files=self.rocksdb_max_open_files,
            tune_malloc=self.rocksdb_tune_malloc,
            compaction_wait_s=self.rocksdb_compaction_wait_s,
        )
