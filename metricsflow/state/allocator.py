"""glibc ``malloc`` and the RocksDB backend: one arena, and freed memory back after checkpoints.

A checkpoint flushes every memtable: RocksDB frees their arena blocks (1 MiB each with the
default 8 MiB write buffer, plus one block per large value) and the block-cache entries the
flush evicted. glibc keeps freed memory in its heaps, where it stays resident whenever live
allocations sit around it, and gives RocksDB's flush and compaction threads heaps (arenas) of
their own that never shrink back: with series churn the process RSS swung between 150 and
200 MiB from one checkpoint to the next with no growth of the state (docs/benchmarks.md,
"Series churn"). Two process-wide measures, both glibc-only:

- ``limit_arenas(1)`` (``mallopt(M_ARENA_MAX)``, at the first RocksDB backend of the
  process): every thread allocates from the main arena, so what the background threads free
  is reusable by all and trimmable. Threads that already own an arena keep it; glibc fixes
  the limit for good once 8 arenas exist, so ``MALLOC_ARENA_MAX=1`` in the environment is
  the sure way (and an environment value always wins).
- ``release_after_checkpoint(id)``: ``malloc_trim(0)`` once per completed checkpoint, the
  moment the most memory has just been freed; returns every free page of every arena to the
  OS (``madvise(MADV_DONTNEED)``): about 2 ms in the churn benchmark.

Measured and rejected (docs/benchmarks.md): a *fixed* mmap threshold at the arena block size
(``mallopt(M_MMAP_THRESHOLD)``) keeps memtables out of the heap, but then every value or SST
read of a megabyte or more is a fresh mapping: 4.5x the page faults, processing 25 % slower.
The trim alone leaves round 2 of the churn benchmark 15-20 % below the steady state (the
background threads' arenas keep growing after it); the arena limit alone leaves the swing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc <malloc.h>

_lock = threading.Lock()
_libc: Any = None
_last_checkpoint: int | None = None


def _glibc() -> Any:
    global _libc
    if _libc is None:
        if platform.libc_ver()[0] != "glibc":
            _libc = False
        else:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return _libc or None


def limit_arenas(arenas: int) -> bool:
    """``mallopt(M_ARENA_MAX, arenas)`` unless ``MALLOC_ARENA_MAX`` is in the environment;
    ``True`` if set (glibc only)."""
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    if libc.mallopt(M_ARENA_MAX, ctypes.c_int(arenas)) != 1:
        log.warning("mallopt failed name=M_ARENA_MAX value=%d", arenas)
        return False
    return True


def release_free_memory() -> bool:
    """``malloc_trim(0)``: free pages of every malloc arena back to the OS. ``False`` when
    the C library is not glibc (nothing done) or nothing could be released."""
    libc = _glibc()
    if libc is None:
        return False
    started = time.perf_counter()
    released = bool(libc.malloc_trim(0))
    log.debug(
        "malloc trimmed released=%s duration_ms=%.1f",
        released,
        (time.perf_counter() - started) * 1e3,
    )
    return released


def release_after_checkpoint(checkpoint_id: int) -> bool:
    """``release_free_memory()`` once per checkpoint id, however many backends of the
    process are told the checkpoint completed; ``True`` for the call that did it."""
    global _last_checkpoint
    with _lock:
        if checkpoint_id == _last_checkpoint:
            return False
        _last_checkpoint = checkpoint_id
        release_free_memory()
        return True
