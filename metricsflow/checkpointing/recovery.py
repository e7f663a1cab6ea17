"""Finding what to restore: the newest *valid* completed checkpoint holding a key group.

A checkpoint is only as good as its files. Before a key group is restored from checkpoint *n*,
recovery checks that ``chk-<n>/_metadata`` exists and decodes (version, schema, its own
checksum), that *n* holds the key group, and that every file the key group needs exists and
matches its size and SHA-256. A checkpoint that fails any check (a crash while it was written,
a torn or edited file, a lost file) is **skipped** with a warning naming the checkpoint and the
reason, and the previous one is tried: the result is always a complete, consistent snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from metricsflow.checkpointing.metadata import (
    CheckpointMetadata,
    metadata_path,
    read_metadata,
    verify_files,
)
from metricsflow.errors import CheckpointError
from metricsflow.state.handles import CheckpointStorage

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyGroupRestore:
    """Restore ``key_group`` from ``metadata`` (whose files live in ``storage``)."""

    key_group: int
    metadata: CheckpointMetadata
    storage: CheckpointStorage


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """What each key group restores from; key groups not listed start empty."""

    key_groups: Mapping[int, KeyGroupRestore] = field(default_factory=dict)
    allow_non_restored_state: bool = False

    def get(self, key_group: int) -> KeyGroupRestore | None:
        return self.key_groups.get(key_group)

    def sources(self) -> list[tuple[CheckpointMetadata, CheckpointStorage]]:
        """Distinct checkpoints the plan restores from (newest first)."""
        seen: dict[tuple[int, int], tuple[CheckpointMetadata, CheckpointStorage]] = {}
        for r in self.key_groups.values():
            seen.setdefault((r.metadata.checkpoint_id, id(r.storage)), (r.metadata, r.storage))
        return sorted(seen.values(), key=lambda m: -m[0].checkpoint_id)

    @property
    def max_checkpoint_id(self) -> int:
        return max((r.metadata.checkpoint_id for r in self.key_groups.values()), default=0)


class CheckpointRecovery:
    """Reads the checkpoints of one storage root (``chk-<n>/_metadata``)."""

    def __init__(self, storage: CheckpointStorage, *, verify_checksums: bool = True) -> None:
        self.storage = storage
        self.verify_checksums = verify_checksums
        self._metadata: dict[int, CheckpointMetadata | CheckpointError] = {}
        self._verified: dict[tuple[int, int], CheckpointError | None] = {}

    def checkpoint_ids(self) -> list[int]:
        """Ids of every ``chk-<n>`` directory, newest first (complete or not)."""
        ids = [
            int(name[4:])
            for name in self.storage.list_dir("")
            if name.startswith("chk-") and name[4:].isdigit()
        ]
        return sorted(ids, reverse=True)

    def load(self, checkpoint_id: int) -> CheckpointMetadata:
        """The decoded metadata of checkpoint ``checkpoint_id`` (``CheckpointError`` if bad)."""
        cached = self._metadata.get(checkpoint_id)
        if cached is None:
            try:
                cached = read_metadata(self.storage, metadata_path(checkpoint_id))
                if cached.checkpoint_id != checkpoint_id:
                    raise CheckpointError(
                        f"{metadata_path(checkpoint_id)}: names checkpoint "
                        f"{cached.checkpoint_id}, expected {checkpoint_id}"
                    )
            except CheckpointError as exc:
                cached = exc
            self._metadata[checkpoint_id] = cached
        if isinstance(cached, CheckpointError):
            raise cached
        return cached

    def _check_key_group(self, meta: CheckpointMetadata, key_group: int) -> None:
        key = (meta.checkpoint_id, key_group)
        if key not in self._verified:
            try:
                verify_files(
                    self.storage,
                    meta,
                    key_groups=[key_group],
                    verify_checksums=self.verify_checksums,
                )
                self._verified[key] = None
            except CheckpointError as exc:
                self._verified[key] = exc
        error = self._verified[key]
        if error is not None:
            raise error

    def latest_for_key_group(self, key_group: int) -> KeyGroupRestore | None:
        """The newest valid completed checkpoint holding ``key_group`` (or ``None``)."""
        for checkpoint_id in self.checkpoint_ids():
            try:
                meta = self.load(checkpoint_id)
            except CheckpointError as exc:
                self._skip(checkpoint_id, key_group, exc)
                continue
            if key_group not in meta.key_groups:
                continue
            try:
                self._check_key_group(meta, key_group)
            except CheckpointError as exc:
                self._skip(checkpoint_id, key_group, exc)
                continue
            logger.info(
                "key group restores from checkpoint key_group=%d checkpoint_id=%d",
                key_group,
                checkpoint_id,
            )
            return KeyGroupRestore(key_group, meta, self.storage)
        return None

    def _skip(self, checkpoint_id: int, key_group: int, exc: CheckpointError) -> None:
        logger.warning(
            "skipping corrupt or incomplete checkpoint checkpoint_id=%d key_group=%d reason=%s",
            checkpoint_id,
            key_group,
            exc,
        )

    def plan(
        self, key_groups: Iterable[int], *, allow_non_restored_state: bool = False
    ) -> RestorePlan:
        """Per key group, the newest valid checkpoint holding it (missing ones start empty)."""
        found: dict[int, KeyGroupRestore] = {}
        for kg in sorted(set(key_groups)):
            restore = self.latest_for_key_group(kg)
            if restore is not None:
                found[kg] = restore
        return RestorePlan(found, allow_non_restored_state=allow_non_restored_state)

    def valid_checkpoints(self) -> list[CheckpointMetadata]:
        """Every checkpoint whose metadata decodes, oldest first (files not verified)."""
        result = []
        for checkpoint_id in sorted(self.checkpoint_ids()):
            try:
                result.append(self.load(checkpoint_id))
            except CheckpointError:
                continue
        return result
