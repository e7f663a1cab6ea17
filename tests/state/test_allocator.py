"""The RocksDB backend keeps glibc's malloc to one arena and trims it once per checkpoint.

Each case that looks at malloc runs in its own interpreter: the settings are process-wide.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from metricsflow.state import allocator

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the tuning is glibc's mallopt/malloc_trim"
)

# Threads started after the first backend is built allocate from the main arena (one heap in
# malloc_info) or from arenas of their own; each thread holds a 1 MiB block while the others
# start, so that each needs an arena of its own if it may. A heap of 8 MiB freed in the main
# arena (below the top chunk, behind a live allocation) is resident until trimmed.
PROBE = """
import ctypes, ctypes.util, json, re, sys, threading
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.state import INT64, StateBackendConfig, StateDescriptor

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: the blocks below come from the heaps

def heaps():
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    return len(re.findall(r'<heap nr=', buf.value.decode()))

def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

backend = StateBackendConfig(
    backend="rocksdb", local_dir=sys.argv[1], rocksdb_tune_malloc=sys.argv[2] == "on"
).build("op")
backend.register(StateDescriptor("counts", INT64))
started, release = threading.Barrier(5), threading.Event()
def hold():
    pointer = libc.malloc(1 << 20)
    started.wait()
    release.wait()
    libc.free(pointer)
threads = [threading.Thread(target=hold) for _ in range(4)]
for thread in threads:
    thread.start()
started.wait()
release.set()
for thread in threads:
    thread.join()

blocks = [libc.malloc(64 << 10) for _ in range(129)]
garbage, keep = blocks[:-1], blocks[-1]
for pointer in blocks:
    ctypes.memset(pointer, 1, 64 << 10)  # resident
for pointer in garbage:
    libc.free(pointer)
before = anon_kib()
backend.put(0, "counts", b"k", 1)
snapshot = backend.snapshot(1, [0], FsCheckpointStorage(sys.argv[1] + "-chk"))
snapshot.run()
backend.notify_checkpoint_complete(1)
after = anon_kib()
backend.close()
print(json.dumps({"heaps": heaps(), "released_kib": before - after}))
"""


def probe(tmp_path: Path, setting: str) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "local"), setting],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    result: dict[str, int] = json.loads(out.stdout)
    return result


@glibc_only
def test_with_the_tuning_threads_share_one_arena_and_a_checkpoint_returns_freed_memory(
    tmp_path: Path,
) -> None:
    seen = probe(tmp_path, "on")
    assert seen["heaps"] == 1
    assert seen["released_kib"] >= 7 << 10  # of the 8 MiB freed


@glibc_only
def test_without_it_threads_get_arenas_and_freed_memory_stays(tmp_path: Path) -> None:
    seen = probe(tmp_path, "off")
    assert seen["heaps"] > 1
    assert seen["released_kib"] < 1 << 10


@glibc_only
def test_the_trim_runs_once_per_checkpoint_however_many_backends_are_told() -> None:
    first = allocator.release_after_checkpoint(10_001)
    again = allocator.release_after_checkpoint(10_001)
    assert (first, again) == (True, False)
    assert allocator.release_after_checkpoint(10_002)


def test_an_arena_limit_in_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not allocator.limit_arenas(1)
