"""``FsCheckpointStorage``: checkpoint storage on a local directory or any fsspec URL.

- Local paths (``/var/lib/mf/checkpoints``, ``file:///...``) use the OS directly: every write
  is a temp file in the same directory, ``fsync``, ``rename``, then ``fsync`` of the directory,
  so a reader (or a restart after a crash) sees the whole file or none of it.
- Other URLs (``memory://``, ``s3://``, ``gs://`` ...) go through fsspec; object stores put an
  object atomically, so ``write_atomic`` is a plain put there.

Paths given to the storage are relative to its root, use ``/``, and may not escape it.
Every read verifies the size and SHA-256 recorded in the handle.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import shutil
import uuid
from collections.abc import Sequence
from typing import Any

import fsspec

from metricsflow.errors import CheckpointError
from metricsflow.state.handles import CheckpointStorage, StreamStateHandle

log = logging.getLogger(__name__)


def _clean_relative(relative_path: str) -> str:
    path = relative_path.strip("/") if relative_path not in ("", "/") else ""
    parts = path.split("/") if path else []
    if relative_path.startswith("/") or any(p in ("..", ".") or p == "" for p in parts):
        raise CheckpointError(
            f"checkpoint storage path must be relative, without '.' or '..': {relative_path!r}"
        )
    return path


class FsCheckpointStorage(CheckpointStorage):
    """Checkpoint storage rooted at ``root_url``: a local directory path or an fsspec URL."""

    def __init__(self, root_url: str, **storage_options: Any) -> None:
        self.root_url = root_url
        self._local = "://" not in root_url or root_url.startswith("file://")
        if self._local:
            root = root_url[len("file://") :] if root_url.startswith("file://") else root_url
            self._root = os.path.abspath(root)
            os.makedirs(self._root, exist_ok=True)
            self._fs: Any = None
        else:
            fs, root = fsspec.core.url_to_fs(root_url, **storage_options)
            self._fs = fs
            self._root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"FsCheckpointStorage({self.root_url!r})"

    def _full(self, relative_path: str) -> str:
        rel = _clean_relative(relative_path)
        if self._local:
            return os.path.join(self._root, *rel.split("/")) if rel else self._root
        return f"{self._root}/{rel}" if rel else self._root

    # -- writing ---------------------------------------------------------------------------
    def write_file(self, relative_path: str, data: bytes) -> StreamStateHandle:
        self.write_atomic(relative_path, data)
        return StreamStateHandle(
            path=_clean_relative(relative_path),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def write_atomic(self, relative_path: str, data: bytes) -> None:
        full = self._full(relative_path)
        try:
            if self._local:
                self._write_local_atomic(full, data)
            else:
                parent = posixpath.dirname(full)
                if parent:
                    self._fs.makedirs(parent, exist_ok=True)
                self._fs.pipe_file(full, bytes(data))
        except OSError as exc:
            raise CheckpointError(
                f"cannot write checkpoint file {relative_path!r} under {self.root_url!r}: {exc}",
                retriable=True,
            ) from exc
        log.debug("checkpoint file written path=%s size=%d", relative_path, len(data))

    @staticmethod
    def _write_local_atomic(full: str, data: bytes) -> None:
        directory = os.path.dirname(full)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(full)}.{uuid.uuid4().hex}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, full)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- reading ---------------------------------------------------------------------------
    def read_bytes(self, relative_path: str) -> bytes:
        """Read a file without a handle to verify against (e.g. ``chk-<n>/_metadata``)."""
        full = self._full(relative_path)
        try:
            if self._local:
                with open(full, "rb") as f:
                    return f.read()
            return bytes(self._fs.cat_file(full))
        except FileNotFoundError as exc:
            raise CheckpointError(
                f"checkpoint file {relative_path!r} is missing under {self.root_url!r}"
            ) from exc
        except OSError as exc:
            raise CheckpointError(
                f"cannot read checkpoint file {relative_path!r} under {self.root_url!r}: {exc}",
                retriable=True,
            ) from exc

    def read_file(self, handle: StreamStateHandle) -> bytes:
        data = self.read_bytes(handle.path)
        if len(data) != handle.size:
            raise CheckpointError(
                f"checkpoint file {handle.path!r} is {len(data)} bytes, its handle says "
                f"{handle.size!r}: truncated or replaced"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != handle.sha256:
            raise CheckpointError(
                f"checkpoint file {handle.path!r} fails its SHA-256 check: "
                f"got {digest!r}, handle says {handle.sha256!r}"
            )
        return data

    # -- namespace -------------------------------------------------------------------------
    def exists(self, relative_path: str) -> bool:
        full = self._full(relative_path)
        return os.path.exists(full) if self._local else bool(self._fs.exists(full))

    def delete(self, relative_path: str) -> None:
        full = self._full(relative_path)
        if full == self._root:
            raise CheckpointError(f"refusing to delete the storage root {self.root_url!r}")
        try:
            if self._local:
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full)
                elif os.path.lexists(full):
                    os.unlink(full)
            elif self._fs.exists(full):
                self._fs.rm(full, recursive=True)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CheckpointError(
                f"cannot delete checkpoint path {relative_path!r} under {self.root_url!r}: {exc}",
                retriable=True,
            ) from exc
        log.debug("checkpoint path deleted path=%s", relative_path)

    def list_dir(self, relative_path: str) -> Sequence[str]:
        full = self._full(relative_path)
        try:
            if self._local:
                names = os.listdir(full)
                return sorted(n for n in names if not n.endswith(".tmp"))
            if not self._fs.isdir(full):
                return []
            entries = self._fs.ls(full, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)
