"""Where a newly assigned key group restores from, across every worker's checkpoints.

Each worker checkpoints into its own root, ``<checkpoint dir>/<worker id>/chk-<n>`` (ids are
per worker, so roots cannot collide). When Kafka assigns partition *p* to a worker, the state
of *p* may be in any worker's root (its previous owner's) or in the savepoint the worker was
started from. Checkpoint ids of different workers are not comparable, but the **source
offset** recorded for *p* is: a partition's state is a deterministic function of the records
before that offset, so the candidate with the highest offset is the newest state of *p*
(ties: the later trigger time). Each root is searched with
:class:`~metricsflow.checkpointing.recovery.CheckpointRecovery`, which skips torn or
incomplete checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from metricsflow.checkpointing.recovery import CheckpointRecovery, KeyGroupRestore, RestorePlan
from metricsflow.checkpointing.savepoints import savepoint_restore_plan
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.errors import SerializationError
from metricsflow.sources.base import decode_offset

logger = logging.getLogger(__name__)


def _offset(restore: KeyGroupRestore, source_uid: str) -> int:
    handles = restore.metadata.operator_for(source_uid, restore.key_group)
    if not handles:
        return -1
    try:
        return decode_offset(handles[0].data)
    except SerializationError:
        return -1


class ClusterRecovery:
    """Plans restores from all worker roots under ``checkpoint_dir`` plus a savepoint."""

    def __init__(
        self,
        checkpoint_dir: Path,
        source_uid: str,
        *,
        savepoint: str | None = None,
        allow_non_restored_state: bool = False,
    ) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.source_uid = source_uid
        self.savepoint = savepoint
        self.allow_non_restored_state = allow_non_restored_state

    def roots(self) -> list[Path]:
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoint_dir.iterdir() if p.is_dir())

    def plan(self, key_groups: Iterable[int]) -> RestorePlan:
        wanted = sorted(set(key_groups))
        candidates: dict[int, list[KeyGroupRestore]] = {kg: [] for kg in wanted}
        for root in self.roots():
            recovery = CheckpointRecovery(FsCheckpointStorage(str(root)))
            for kg in wanted:
                found = recovery.latest_for_key_group(kg)
                if found is not None:
                    candidates[kg].append(found)
        if self.savepoint:
            plan = savepoint_restore_plan(
                self.savepoint, wanted, allow_non_restored_state=self.allow_non_restored_state
            )
            for kg, restore in plan.key_groups.items():
                candidates[kg].append(restore)
        chosen: dict[int, KeyGroupRestore] = {}
        for kg, options in candidates.items():
            if not options:
                continue
            best = max(
                options,
                key=lambda r: (_offset(r, self.source_uid), r.metadata.trigger_timestamp_ns),
            )
            chosen[kg] = best
            logger.info(
                "key group restore chosen key_group=%d checkpoint_id=%d savepoint=%s offset=%d "
                "candidates=%d",
                kg,
                best.metadata.checkpoint_id,
                best.metadata.is_savepoint,
                _offset(best, self.source_uid),
                len(options),
            )
        return RestorePlan(chosen, allow_non_restored_state=self.allow_non_restored_state)
