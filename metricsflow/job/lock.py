"""One live worker per worker id: an exclusive ``flock`` on ``<checkpoint root>/.worker.lock``.

A worker's id names its checkpoint root (``<checkpoint_dir>/<worker_id>``); two live workers
with the same id would write the same ``chk-<n>`` directories. The lock is taken when the
runner is built and held for the life of the process; the kernel releases it when the process
dies, however it dies (SIGKILL included), so a restarted worker never finds a stale lock. The
file records the holder (pid, host) for the error message. ``flock`` needs a local file
system (or an NFS mount with working locks).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from pathlib import Path

from metricsflow.errors import MetricsflowError

logger = logging.getLogger(__name__)

LOCK_FILE = ".worker.lock"


class WorkerIdInUseError(MetricsflowError):
    """Another live worker already runs with this worker id."""


class WorkerIdLock:
    """Held from construction until :meth:`release` (or the end of the process)."""

    def __init__(self, root: Path, worker_id: str) -> None:
        self.path = root / LOCK_FILE
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise WorkerIdInUseError(
                f"worker id {worker_id!r} is in use: a live worker ({holder}) holds {self.path}; "
                "every running worker needs its own --worker-id (METRICSFLOW_WORKER_ID)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd: int | None = fd
        logger.info("worker id locked worker_id=%s lock=%s", worker_id, self.path)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
