"""Savepoints: checkpoints triggered by hand, owned by the user, never deleted by the system.

A savepoint is one self-contained directory ``<root>/savepoint-<id>-<random>/``: full (never
incremental) snapshots under ``chk-<id>/``, no reference to a ``shared/`` directory, and
``_metadata`` at its top. Every path inside is relative to that directory, so it can be moved
or copied anywhere (``cp -r``, ``gsutil cp``) and restored from there.

On restore, state is matched to operators by ``uid``. State whose uid no operator of the new
job has (e.g. a tier was removed) would be silently dropped, so the restore is **refused**
with a :class:`~metricsflow.errors.CheckpointError` naming those uids, unless the job is
started with ``allow_non_restored_state=True``. Operators without state in the savepoint (a
tier added) start empty. The same rule applies to restores from retained checkpoints.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable

from metricsflow.checkpointing.metadata import (
    METADATA_FILE,
    CheckpointMetadata,
    read_metadata,
    verify_files,
)
from metricsflow.checkpointing.recovery import KeyGroupRestore, RestorePlan
from metricsflow.errors import CheckpointError
from metricsflow.state.handles import CheckpointStorage

logger = logging.getLogger(__name__)

StorageFactory = Callable[[str], CheckpointStorage]


def default_storage_factory(location: str) -> CheckpointStorage:
    from metricsflow.checkpointing.storage import FsCheckpointStorage

    return FsCheckpointStorage(location)


def new_savepoint_location(root: str, checkpoint_id: int) -> str:
    """``<root>/savepoint-<id>-<8 hex>``: unique even if ids repeat across jobs."""
    return f"{root.rstrip('/')}/savepoint-{checkpoint_id}-{uuid.uuid4().hex[:8]}"


def check_state_claimed(
    metadata: CheckpointMetadata,
    job_uids: Iterable[str],
    *,
    allow_non_restored_state: bool,
    location: str = "",
) -> frozenset[str]:
    """The uids in ``metadata`` that no operator of the job claims; refuses unless allowed."""
    unclaimed = metadata.uids() - frozenset(job_uids)
    if unclaimed and not allow_non_restored_state:
        where = f" {location}" if location else ""
        raise CheckpointError(
            f"cannot restore {'savepoint' if metadata.is_savepoint else 'checkpoint'}"
            f"{where} (id {metadata.checkpoint_id}): it holds state for operator uids "
            f"{sorted(unclaimed)} that no operator of this job has; the state would be "
            "dropped. Give those operators their old uids, or start with "
            "allow_non_restored_state=True to drop it deliberately."
        )
    if unclaimed:
        logger.warning(
            "restoring without state of uids=%s checkpoint_id=%d (allow_non_restored_state)",
            sorted(unclaimed),
            metadata.checkpoint_id,
        )
    return unclaimed


def load_savepoint(
    location: str | CheckpointStorage,
    *,
    storage_factory: StorageFactory = default_storage_factory,
    verify_checksums: bool = True,
) -> tuple[CheckpointMetadata, CheckpointStorage]:
    """Read and fully validate the savepoint at ``location`` (a directory or URL)."""
    storage = storage_factory(location) if isinstance(location, str) else location
    metadata = read_metadata(storage, METADATA_FILE)
    if metadata.shared_handles():
        raise CheckpointError(f"savepoint {location}: references shared files; not self-contained")
    verify_files(storage, metadata, verify_checksums=verify_checksums)
    return metadata, storage


def savepoint_restore_plan(
    location: str | CheckpointStorage,
    key_groups: Iterable[int] | None = None,
    *,
    allow_non_restored_state: bool = False,
    storage_factory: StorageFactory = default_storage_factory,
) -> RestorePlan:
    """Restore every key group of the savepoint (or just ``key_groups``) from it."""
    metadata, storage = load_savepoint(location, storage_factory=storage_factory)
    wanted = metadata.key_groups if key_groups is None else frozenset(key_groups)
    return RestorePlan(
        {kg: KeyGroupRestore(kg, metadata, storage) for kg in sorted(wanted & metadata.key_groups)},
        allow_non_restored_state=allow_non_restored_state,
    )
