"""FsCheckpointStorage on a local path, a file:// URL and memory://."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.errors import CheckpointError


@pytest.fixture(params=["path", "file-url", "memory"])
def storage_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[], FsCheckpointStorage]:
    def make() -> FsCheckpointStorage:
        if request.param == "path":
            return FsCheckpointStorage(str(tmp_path / "root"))
        if request.param == "file-url":
            return FsCheckpointStorage(f"file://{tmp_path}/root")
        return FsCheckpointStorage(f"memory://mf-test-{uuid.uuid4().hex}")

    return make


def test_written_file_reads_back_with_its_checksum_verified(
    storage_factory: Callable[[], FsCheckpointStorage],
) -> None:
    storage = storage_factory()

    handle = storage.write_file("chk-1/op/kg-0.mfks", b"state bytes")

    assert handle.path == "chk-1/op/kg-0.mfks"
    assert handle.size == 11
    assert storage.read_file(handle) == b"state bytes"
    assert storage.exists("chk-1/op/kg-0.mfks")


def test_wrong_size_or_checksum_is_refused(
    storage_factory: Callable[[], FsCheckpointStorage],
) -> None:
    storage = storage_factory()
    handle = storage.write_file("a/b", b"12345")
    storage.write_atomic("a/b", b"12346")

    with pytest.raises(CheckpointError, match="fails its SHA-256"):
        storage.read_file(handle)
    with pytest.raises(CheckpointError, match="truncated or replaced"):
        storage.read_file(replace(handle, size=4))


def test_missing_file_is_a_checkpoint_error(
    storage_factory: Callable[[], FsCheckpointStorage],
) -> None:
    storage = storage_factory()

    with pytest.raises(CheckpointError, match="'nope/x' is missing"):
        storage.read_bytes("nope/x")


def test_list_dir_names_direct_children_and_is_empty_for_missing(
    storage_factory: Callable[[], FsCheckpointStorage],
) -> None:
    storage = storage_factory()
    storage.write_atomic("chk-2/_metadata", b"m")
    storage.write_atomic("chk-10/op/kg-0", b"s")
    storage.write_atomic("shared/abc.sst", b"s")

    assert storage.list_dir("") == ["chk-10", "chk-2", "shared"]
    assert storage.list_dir("chk-10") == ["op"]
    assert storage.list_dir("missing") == []


def test_delete_removes_files_and_trees_and_ignores_missing_paths(
    storage_factory: Callable[[], FsCheckpointStorage],
) -> None:
    storage = storage_factory()
    storage.write_atomic("chk-1/a", b"1")
    storage.write_atomic("chk-1/sub/b", b"2")
    storage.write_atomic("chk-2/a", b"3")

    storage.delete("chk-1")
    storage.delete("chk-2/a")
    storage.delete("never/was")

    assert not storage.exists("chk-1")
    assert not storage.exists("chk-2/a")


@pytest.mark.parametrize("bad", ["/abs", "../escape", "a/../b", "a//b", "./a"])
def test_paths_that_escape_the_root_are_refused(
    storage_factory: Callable[[], FsCheckpointStorage], bad: str
) -> None:
    with pytest.raises(CheckpointError, match="must be relative"):
        storage_factory().write_atomic(bad, b"x")


def test_local_atomic_write_leaves_no_temp_file_and_replaces_whole(tmp_path: Path) -> None:
    storage = FsCheckpointStorage(str(tmp_path))
    storage.write_atomic("chk-1/_metadata", b"old")

    storage.write_atomic("chk-1/_metadata", b"new content")

    assert os.listdir(tmp_path / "chk-1") == ["_metadata"]
    assert (tmp_path / "chk-1" / "_metadata").read_bytes() == b"new content"


def test_storage_root_is_relocatable_because_handles_are_relative(tmp_path: Path) -> None:
    handle = FsCheckpointStorage(str(tmp_path / "a")).write_file("chk-1/x", b"payload")
    os.rename(tmp_path / "a", tmp_path / "b")

    assert FsCheckpointStorage(str(tmp_path / "b")).read_file(handle) == b"payload"
