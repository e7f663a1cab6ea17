"""Retention that follows partitions, not worker roots.

``num_retained`` counts one coordinator's own checkpoints. When a key group (a Kafka
partition) moves to another worker, the newest checkpoint holding it may be in this
coordinator's storage only; discarding it by count would leave the partition with no state
if its new owner dies before completing a checkpoint of it. So a checkpoint past
``num_retained`` that is the newest one here holding a key group no newer checkpoint here
holds is **pinned**; it is discarded once every such key group has a newer checkpoint here
(it came back) or, as the :class:`RetentionGuard` reports, in another worker's storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Protocol

from metricsflow.checkpointing.metadata import CheckpointMetadata

if TYPE_CHECKING:
    from metricsflow.checkpointing.coordinator import CompletedCheckpoint

logger = logging.getLogger(__name__)


class RetentionGuard(Protocol):
    """Knows the checkpoints outside this coordinator's storage (other workers' roots)."""

    def superseded(self, key_group: int, metadata: CheckpointMetadata) -> bool:
        """True once a checkpoint of ``key_group`` at least as new as ``metadata``'s exists
        elsewhere, so that ``metadata``'s copy of it may be deleted."""


class PartitionRetention:
    """The pinned checkpoints of one coordinator (module docstring)."""

    def __init__(self, guard: RetentionGuard | None) -> None:
        self.guard = guard
        self.pinned: dict[int, tuple[CompletedCheckpoint, frozenset[int]]] = {}
        self.releasing = False

    def newer_key_groups(
        self, checkpoint_id: int, retained: Sequence[CompletedCheckpoint]
    ) -> frozenset[int]:
        held: set[int] = set()
        for c in retained:
            if c.checkpoint_id > checkpoint_id:
                held |= c.metadata.key_groups
        for pinned_id, (_c, kgs) in self.pinned.items():
            if pinned_id > checkpoint_id:
                held |= kgs
        return frozenset(held)

    def pin_if_sole_holder(
        self, old: CompletedCheckpoint, retained: Sequence[CompletedCheckpoint]
    ) -> bool:
        """Pin ``old`` (leaving retention) if it is the newest holder of some key group;
        ``False``: discard it."""
        if self.guard is None:
            return False
        orphaned = old.metadata.key_groups - self.newer_key_groups(old.checkpoint_id, retained)
        if not orphaned:
            return False
        self.pinned[old.checkpoint_id] = (old, frozenset(orphaned))
        logger.info(
            "checkpoint kept past retention as the newest holder of key groups "
            "checkpoint_id=%d key_groups=%s",
            old.checkpoint_id,
            sorted(orphaned),
        )
        return True

    def release(
        self,
        retained: Sequence[CompletedCheckpoint],
        discard: Callable[[CompletedCheckpoint], Awaitable[None]],
    ) -> Coroutine[object, object, None] | None:
        """A coroutine discarding the pinned checkpoints whose key groups all have a newer
        checkpoint; ``None`` if nothing is pinned or a release is running already."""
        if not self.pinned or self.releasing:
            return None
        self.releasing = True
        return self._release(retained, discard)

    async def _release(
        self,
        retained: Sequence[CompletedCheckpoint],
        discard: Callable[[CompletedCheckpoint], Awaitable[None]],
    ) -> None:
        try:
            for checkpoint_id in sorted(self.pinned):
                completed, kgs = self.pinned[checkpoint_id]
                waiting = set(kgs - self.newer_key_groups(checkpoint_id, retained))
                if waiting and self.guard is not None:
                    elsewhere = await asyncio.to_thread(
                        _superseded, self.guard, frozenset(waiting), completed.metadata
                    )
                    waiting -= elsewhere
                if waiting:
                    self.pinned[checkpoint_id] = (completed, frozenset(waiting))
                    continue
                del self.pinned[checkpoint_id]
                logger.info(
                    "pinned checkpoint released: its key groups have newer checkpoints "
                    "checkpoint_id=%d",
                    checkpoint_id,
                )
                await discard(completed)
        except Exception:
            logger.exception("releasing pinned checkpoints failed")
        finally:
            self.releasing = False


def _superseded(
    guard: RetentionGuard, key_groups: frozenset[int], metadata: CheckpointMetadata
) -> set[int]:
    return {kg for kg in key_groups if guard.superseded(kg, metadata)}
