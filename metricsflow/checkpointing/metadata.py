"""The ``_metadata`` file of a checkpoint or savepoint: a versioned, checksummed format.

A completed checkpoint is one directory ``chk-<id>/`` whose ``_metadata`` is written last and
atomically; it names every file the checkpoint needs, each with its size and SHA-256, and the
operator (non-keyed) state inline. The format is JSON (readable with ``jq``), versioned with an
explicit ``version`` field, and sealed by a SHA-256 over its canonical body, so that a torn or
edited file is detected rather than half-read::

    {"format": "metricsflow-checkpoint-metadata", "version": 1,
     "body_sha256": "<hex>",
     "body": {"checkpoint_id": 7, "checkpoint_type": "checkpoint", "mode": "exactly_once",
              "trigger_timestamp_ns": ..., "completion_timestamp_ns": ...,
              "key_groups": [0, 1], "properties": {...},
              "keyed": [{"uid": "tier-1m", "key_group": 0, "backend": "heap",
                         "format_version": 1, "private": [{"path", "size", "sha256"}],
                         "shared": [...], "metadata": {...}}],
              "operator": [{"uid": "source", "key_group": 0, "data_b64": "..."}]}}

Paths are relative to the storage root (a savepoint's root is its own directory, which is
what makes it relocatable). Readers accept every version up to :data:`METADATA_VERSION`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from metricsflow.checkpointing.protocol import CheckpointingMode, CheckpointType
from metricsflow.errors import CheckpointError
from metricsflow.state.handles import (
    CheckpointStorage,
    KeyGroupStateHandle,
    OperatorStateHandle,
    StreamStateHandle,
)

METADATA_FORMAT = "metricsflow-checkpoint-metadata"
METADATA_VERSION = 1
METADATA_FILE = "_metadata"


def checkpoint_dir(checkpoint_id: int) -> str:
    return f"chk-{checkpoint_id}"


def shared_checkpoint_dir(checkpoint_id: int) -> str:
    """Where checkpoint *n* writes new shared files that later checkpoints may reference
    (heap segments); RocksDB's content-addressed SSTs are directly under ``shared/``."""
    return f"shared/{checkpoint_dir(checkpoint_id)}"


def metadata_path(checkpoint_id: int) -> str:
    return f"{checkpoint_dir(checkpoint_id)}/{METADATA_FILE}"


@dataclass(frozen=True, slots=True)
class KeyedStateEntry:
    """The keyed state of operator ``uid`` for one key group."""

    uid: str
    handle: KeyGroupStateHandle


@dataclass(frozen=True, slots=True)
class CheckpointMetadata:
    """Everything needed to restore from one completed checkpoint or savepoint."""

    checkpoint_id: int
    checkpoint_type: CheckpointType
    mode: CheckpointingMode
    trigger_timestamp_ns: int
    completion_timestamp_ns: int
    key_groups: frozenset[int]
    keyed: tuple[KeyedStateEntry, ...] = ()
    operator: tuple[OperatorStateHandle, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_savepoint(self) -> bool:
        return self.checkpoint_type is CheckpointType.SAVEPOINT

    def uids(self) -> frozenset[str]:
        return frozenset(e.uid for e in self.keyed) | frozenset(h.uid for h in self.operator)

    def keyed_for(self, uid: str, key_group: int) -> list[KeyGroupStateHandle]:
        return [e.handle for e in self.keyed if e.uid == uid and e.handle.key_group == key_group]

    def operator_for(self, uid: str, key_group: int) -> list[OperatorStateHandle]:
        return [h for h in self.operator if h.uid == uid and h.key_group == key_group]

    def files(self, key_groups: Iterable[int] | None = None) -> Iterator[StreamStateHandle]:
        """Every file the checkpoint references (of some key groups only, if given)."""
        wanted = None if key_groups is None else frozenset(key_groups)
        for entry in self.keyed:
            if wanted is None or entry.handle.key_group in wanted:
                yield from entry.handle.private
                yield from entry.handle.shared

    def shared_handles(self) -> list[KeyGroupStateHandle]:
        return [e.handle for e in self.keyed if e.handle.shared]

    @property
    def state_size(self) -> int:
        return sum(e.handle.size for e in self.keyed) + sum(len(h.data) for h in self.operator)

    @property
    def written_bytes(self) -> int:
        """Bytes this checkpoint wrote (its state size less the shared files it reused from
        earlier checkpoints, as its backends report them)."""
        return sum(
            int(e.handle.metadata.get("written_bytes", e.handle.size)) for e in self.keyed
        ) + sum(len(h.data) for h in self.operator)


def _file_to_json(h: StreamStateHandle) -> dict[str, Any]:
    return {"path": h.path, "size": h.size, "sha256": h.sha256}


def _file_from_json(d: Mapping[str, Any]) -> StreamStateHandle:
    return StreamStateHandle(path=str(d["path"]), size=int(d["size"]), sha256=str(d["sha256"]))


def _body(meta: CheckpointMetadata) -> dict[str, Any]:
    return {
        "checkpoint_id": meta.checkpoint_id,
        "checkpoint_type": meta.checkpoint_type.value,
        "mode": meta.mode.value,
        "trigger_timestamp_ns": meta.trigger_timestamp_ns,
        "completion_timestamp_ns": meta.completion_timestamp_ns,
        "key_groups": sorted(meta.key_groups),
        "properties": dict(meta.properties),
        "keyed": [
            {
                "uid": e.uid,
                "key_group": e.handle.key_group,
                "backend": e.handle.backend,
                "format_version": e.handle.format_version,
                "private": [_file_to_json(h) for h in e.handle.private],
                "shared": [_file_to_json(h) for h in e.handle.shared],
                "metadata": dict(e.handle.metadata),
            }
            for e in meta.keyed
        ],
        "operator": [
            {
                "uid": h.uid,
                "key_group": h.key_group,
                "data_b64": base64.b64encode(h.data).decode("ascii"),
            }
            for h in meta.operator
        ],
    }


def _canonical(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def encode_metadata(meta: CheckpointMetadata) -> bytes:
    body = _body(meta)
    digest = hashlib.sha256(_canonical(body)).hexdigest()
    document = {
        "format": METADATA_FORMAT,
        "version": METADATA_VERSION,
        "body_sha256": digest,
        "body": body,
    }
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)


def decode_metadata(data: bytes, *, source: str = "_metadata") -> CheckpointMetadata:
    """Parse and validate a ``_metadata`` file; ``CheckpointError`` says what is wrong."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CheckpointError(f"{source}: not valid JSON (torn or corrupt): {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != METADATA_FORMAT:
        raise CheckpointError(f"{source}: not a metricsflow checkpoint metadata file")
    version = document.get("version")
    if not isinstance(version, int) or not 1 <= version <= METADATA_VERSION:
        raise CheckpointError(
            f"{source}: unsupported metadata version {version!r} "
            f"(this code reads versions 1..{METADATA_VERSION})"
        )
    body = document.get("body")
    if not isinstance(body, dict):
        raise CheckpointError(f"{source}: metadata has no body")
    digest = hashlib.sha256(_canonical(body)).hexdigest()
    if digest != document.get("body_sha256"):
        raise CheckpointError(f"{source}: metadata checksum mismatch (file was altered)")
    try:
        return CheckpointMetadata(
            checkpoint_id=int(body["checkpoint_id"]),
            checkpoint_type=CheckpointType(body["checkpoint_type"]),
            mode=CheckpointingMode(body["mode"]),
            trigger_timestamp_ns=int(body["trigger_timestamp_ns"]),
            completion_timestamp_ns=int(body["completion_timestamp_ns"]),
            key_groups=frozenset(int(k) for k in body["key_groups"]),
            properties={str(k): str(v) for k, v in body["properties"].items()},
            keyed=tuple(
                KeyedStateEntry(
                    uid=str(e["uid"]),
                    handle=KeyGroupStateHandle(
                        key_group=int(e["key_group"]),
                        backend=str(e["backend"]),
                        format_version=int(e["format_version"]),
                        private=tuple(_file_from_json(h) for h in e["private"]),
                        shared=tuple(_file_from_json(h) for h in e["shared"]),
                        metadata={str(k): str(v) for k, v in e["metadata"].items()},
                    ),
                )
                for e in body["keyed"]
            ),
            operator=tuple(
                OperatorStateHandle(
                    uid=str(h["uid"]),
                    key_group=int(h["key_group"]),
                    data=base64.b64decode(h["data_b64"], validate=True),
                )
                for h in body["operator"]
            ),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{source}: metadata does not match schema: {exc!r}") from exc


def read_metadata(storage: CheckpointStorage, path: str) -> CheckpointMetadata:
    """Read and decode ``path`` (e.g. ``chk-7/_metadata``); ``CheckpointError`` if invalid."""
    if not storage.exists(path):
        raise CheckpointError(f"{path}: missing (checkpoint was never completed)")
    try:
        data = storage.read_bytes(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc}") from exc
    return decode_metadata(data, source=path)


def verify_files(
    storage: CheckpointStorage,
    meta: CheckpointMetadata,
    *,
    key_groups: Sequence[int] | None = None,
    verify_checksums: bool = True,
) -> None:
    """Check that every referenced file exists (and, optionally, matches its checksum)."""
    for handle in meta.files(key_groups):
        if not storage.exists(handle.path):
            raise CheckpointError(f"referenced file {handle.path} is missing")
        if verify_checksums:
            try:
                storage.read_file(handle)
            except CheckpointError as exc:
                raise CheckpointError(f"referenced file {handle.path}: {exc}") from exc
            except OSError as exc:
                raise CheckpointError(f"referenced file {handle.path}: unreadable: {exc}") from exc
